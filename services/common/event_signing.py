"""The canonical signing bytes of a bus event, and signing/verifying them.

What is signed: the DSSE pre-authentication encoding

    PAE(EVENT_PAYLOAD_TYPE, body)
    = b"DSSEv1 " + len(type) + b" " + type + b" " + len(body) + b" " + body

where `body` is the protobuf *deterministic* serialization of the `grace.eventbus.v1.Event`
with the fields that are not the producer's statement cleared: `signature`,
`signature_key_id` (they hold the signature itself), `sequence` (assigned by the bus after
signing) and `traceparent`/`tracestate` (transport metadata that relays and the bus may
set; a forged trace context cannot change what the event says).

Why this form:
- DSSE binds the payload type into the signed bytes, so a domain's signature over an event
  can never be replayed as a signature over a trust statement or a raw message (those use
  other types) and vice versa. It is the encoding in-toto and Sigstore use.
- Deterministic serialization writes fields in field-number order and map entries (the
  `Struct` payload is a map) sorted by key; doubles are fixed 8-byte values. So every
  holder of the same Event message computes the same bytes, with no float-to-text or
  key-order ambiguity that a JSON canonical form would bring. Protobuf does not promise
  this across library versions in general, which is why the verifier recomputes the bytes
  from the very message it received and the SDK signs the message it sends, not a
  re-encoding made elsewhere.
- `id` and `time` are covered, so a signed event must set both before signing (the bus only
  fills them in when empty); `verify_event` refuses a signed event without them.

Two signature forms, both verifiable from one event and the source's public key:

- Per-event (`signature_batch_size` = 0): Ed25519 over the signing bytes above.
- Batch (`signature_batch_size` = n >= 1), for a publisher that sends n events at once and
  signs once, the way transparency logs sign a tree head: each event's leaf is
  `SHA-256(signing bytes)`; the batch's RFC 6962 Merkle root is taken over those leaves
  (leaf hash `SHA-256(0x00 || leaf)`, `services.common.merkle_hashing`); the signature is
  Ed25519 over `PAE(EVENT_BATCH_PAYLOAD_TYPE, root || n as 8 bytes big-endian)`. Every
  event carries that signature, its `signature_leaf_index` and its
  `signature_inclusion_path`. A verifier recomputes the leaf, walks the path to a root and
  checks the signature over that root: an event changed in any bit, or given another
  index or path, reaches another root. The batch fields are signature metadata, so they
  are cleared from the signing bytes like `signature` itself; the distinct payload type
  keeps a batch signature from passing for a per-event one and vice versa.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from grace.eventbus.v1 import event_pb2
from services.common import dsse, signing
from services.common.merkle_hashing import leaf_hash, root_from_path, tree_paths

EVENT_PAYLOAD_TYPE = "application/vnd.grace.event.v1+protobuf"
EVENT_BATCH_PAYLOAD_TYPE = "application/vnd.grace.event-batch.v1"


def event_signing_bytes(event: event_pb2.Event) -> bytes:
    """The exact bytes an event's signature covers (see the module docstring)."""
    unsigned = event_pb2.Event()
    unsigned.CopyFrom(event)
    # The signature and its batch metadata are never part of what is signed.
    unsigned.ClearField("signature")
    unsigned.ClearField("signature_key_id")
    unsigned.ClearField("signature_leaf_index")
    unsigned.ClearField("signature_batch_size")
    unsigned.ClearField("signature_inclusion_path")
    unsigned.ClearField("sequence")
    unsigned.ClearField("traceparent")
    unsigned.ClearField("tracestate")
    return dsse.pae(EVENT_PAYLOAD_TYPE, unsigned.SerializeToString(deterministic=True))


def event_leaf(event: event_pb2.Event) -> bytes:
    """The event's leaf in a batch signature: SHA-256 of its signing bytes."""
    return hashlib.sha256(event_signing_bytes(event)).digest()


def batch_signing_bytes(root: bytes, size: int) -> bytes:
    """The exact bytes a batch signature covers: PAE(batch type, root || size, 8 bytes BE)."""
    return dsse.pae(EVENT_BATCH_PAYLOAD_TYPE, root + size.to_bytes(8, "big"))


def _require_id_and_time(event: event_pb2.Event) -> None:
    if not event.id or not event.HasField("time"):
        raise ValueError("a signed event must set id and time before signing")


def sign_event(event: event_pb2.Event, key: signing.SigningKey) -> event_pb2.Event:
    """Signs `event` in place with `key` (per-event form): sets `signature` and
    `signature_key_id`, and clears any batch fields.

    Raises:
        ValueError: the event has no id or no time (both are part of what is signed).
    """
    _require_id_and_time(event)
    event.signature = key.sign(event_signing_bytes(event))
    event.signature_key_id = key.key_id
    event.ClearField("signature_leaf_index")
    event.ClearField("signature_batch_size")
    event.ClearField("signature_inclusion_path")
    return event


def sign_event_batch(
    events: Sequence[event_pb2.Event], key: signing.SigningKey
) -> Sequence[event_pb2.Event]:
    """Signs `events` in place with ONE signature over their Merkle root (batch form).

    Each event gets the root signature, `signature_key_id`, its leaf index, the batch size
    and its inclusion path, so each verifies alone (`verify_event`).

    Raises:
        ValueError: no events, or an event without id or time.
    """
    if not events:
        raise ValueError("a signed batch needs at least one event")
    for event in events:
        _require_id_and_time(event)
    root, paths = tree_paths([leaf_hash(event_leaf(event)) for event in events])
    signature = key.sign(batch_signing_bytes(root, len(events)))
    for index, (event, path) in enumerate(zip(events, paths, strict=True)):
        event.signature = signature
        event.signature_key_id = key.key_id
        event.signature_leaf_index = index
        event.signature_batch_size = len(events)
        del event.signature_inclusion_path[:]
        event.signature_inclusion_path.extend(path)
    return events


def batch_root(event: event_pb2.Event) -> bytes | None:
    """The batch root a batch-form event's leaf and path lead to; None when they cannot."""
    return root_from_path(
        leaf_hash(event_leaf(event)),
        event.signature_leaf_index,
        event.signature_batch_size,
        event.signature_inclusion_path,
    )


def verify_event(event: event_pb2.Event, public_key: Ed25519PublicKey) -> bool:
    """True when the event carries a valid signature by `public_key`, in either form.

    Needs only the event as stored or received and the source's public key: a batch-form
    event is checked leaf -> inclusion path -> root -> signature over (root, size).
    """
    if not event.signature or not event.id or not event.HasField("time"):
        return False
    if event.signature_batch_size:
        root = batch_root(event)
        if root is None:
            return False
        message = batch_signing_bytes(root, event.signature_batch_size)
        return dsse.verify_with(public_key, message, event.signature)
    if event.signature_leaf_index or event.signature_inclusion_path:
        return False  # batch fields without a batch size: not a valid per-event form
    return dsse.verify_with(public_key, event_signing_bytes(event), event.signature)
