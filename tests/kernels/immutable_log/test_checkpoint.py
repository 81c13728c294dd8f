"""C2SP signed-note checkpoints: format, key id, verification with the public key only."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.common.signing import SigningKey
from services.kernels.immutable_log.checkpoint import (
    CheckpointError,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)

ROOT = hashlib.sha256(b"root").digest()


def test_a_checkpoint_has_the_c2sp_shape_and_key_id() -> None:
    key = SigningKey.generate()
    note = sign_checkpoint("log.example/a", 7, ROOT, key.private_key)
    body, signature_line = note.split("\n\n")
    assert body == f"log.example/a\n7\n{base64.b64encode(ROOT).decode()}"
    dash, name, blob = signature_line.rstrip("\n").split(" ")
    assert (dash, name) == ("\u2014", "log.example/a")
    raw = base64.b64decode(blob)
    expected_id = hashlib.sha256(b"log.example/a\n\x01" + key.public_key).digest()[:4]
    assert raw[:4] == expected_id
    assert len(raw) == 68
    head = verify_checkpoint(note, "log.example/a", key.public_key)
    assert (head.origin, head.size, head.root_hash) == ("log.example/a", 7, ROOT)


def test_a_changed_note_or_another_key_does_not_verify() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    note = sign_checkpoint("log.example/a", 7, ROOT, key.private_key)
    with pytest.raises(CheckpointError):
        verify_checkpoint(note.replace("\n7\n", "\n8\n"), "log.example/a", key.public_key)
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, "log.example/a", other.public_key)
    with pytest.raises(CheckpointError):
        verify_checkpoint("garbage", "log.example/a", key.public_key)


def test_verifier_keys_round_trip_even_when_their_base64_holds_a_plus() -> None:
    for _ in range(64):  # about half of random keys encode with a '+'
        key = SigningKey.generate()
        text = verifier_key("log.example/a", key.public_key)
        assert parse_verifier_key(text) == ("log.example/a", key.public_key)
    with pytest.raises(CheckpointError):
        parse_verifier_key(text.replace("log.example/a", "log.example/b"))
