"""Ed25519 keys kept in the data dir, and signing helpers shared by every service that signs.

A service's key lives in one PEM (PKCS#8) file created on first start with permissions
0600; a key file that group or others can read is refused, like ssh does. Signatures are
over exact bytes: callers build a documented signing message and sign that, never a
re-serialization of a protobuf.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

log = logging.getLogger(__name__)

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


class SigningKeyError(RuntimeError):
    """A key file is unreadable, malformed or too widely readable."""


def key_id(public_key: bytes) -> str:
    """Short id of a raw public key: hex of the first 8 bytes of its SHA-256."""
    return hashlib.sha256(public_key).digest()[:8].hex()


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 private key with its raw public key and id.

    Attributes:
        private_key: The key.
        public_key: Raw 32-byte public key.
        key_id: `key_id(public_key)`.
    """

    private_key: Ed25519PrivateKey
    public_key: bytes
    key_id: str

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> SigningKey:
        """Wraps a private key."""
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key, public, key_id(public))

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh random key (tests, ephemeral use)."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `message`."""
        return self.private_key.sign(message)


def public_key_path(key_path: Path) -> Path:
    """Where the public half of the key at `key_path` is published (`<name>.pub`)."""
    return key_path.with_suffix(".pub")


def read_public_key(path: Path) -> bytes | None:
    """The raw public key in a `.pub` PEM file; None when it is missing or unreadable."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _publish_public_key(key_path: Path, key: SigningKey) -> None:
    """Writes `<name>.pub` beside the key (atomically) unless it already holds this key:
    what the trust kernel and `grace verify-proof` read, so neither opens a private key."""
    target = public_key_path(key_path)
    if read_public_key(target) == key.public_key:
        return
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, target)


def load_or_create_key(path: Path) -> SigningKey:
    """Loads the key at `path`, creating it (mode 0600, parent dirs 0700) when missing, and
    publishes its public half as `<name>.pub` beside it.

    Creation is atomic (O_EXCL), so two processes starting at once end up with one key.

    Raises:
        SigningKeyError: The file is readable by group or others, or is not an Ed25519
            PKCS#8 PEM key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _published(path, load_key(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        log.info("created signing key %s (id %s)", path, SigningKey.from_private_key(key).key_id)
        return _published(path, SigningKey.from_private_key(key))
    return _published(path, load_key(path))


def _published(path: Path, key: SigningKey) -> SigningKey:
    _publish_public_key(path, key)
    return key


def load_key(path: Path) -> SigningKey:
    """Loads an existing key file; see `load_or_create_key` for the checks."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"signing key {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):o}); run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise SigningKeyError(f"signing key {path} is not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path} is not an Ed25519 key")
    return SigningKey.from_private_key(key)


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `message` by `public_key`.

    Malformed keys or signatures are reported as False, never raised.
    """
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
