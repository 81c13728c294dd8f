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
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from grace.eventbus.v1 import event_pb2
from services.common import dsse, signing

EVENT_PAYLOAD_TYPE = "application/vnd.grace.event.v1+protobuf"


def event_signing_bytes(event: event_pb2.Event) -> bytes:
    """The exact bytes an event's signature covers (see the module docstring)."""
    unsigned = event_pb2.Event()
    unsigned.CopyFrom(event)
    unsigned.ClearField("signature")
    unsigned.ClearField("signature_key_id")
    unsigned.ClearField("sequence")
    unsigned.ClearField("traceparent")
    unsigned.ClearField("tracestate")
    return dsse.pae(EVENT_PAYLOAD_TYPE, unsigned.SerializeToString(deterministic=True))


def sign_event(event: event_pb2.Event, key: signing.SigningKey) -> event_pb2.Event:
    """Signs `event` in place with `key`: sets `signature` and `signature_key_id`.

    Raises:
        ValueError: the event has no id or no time (both are part of what is signed).
    """
    if not event.id or not event.HasField("time"):
        raise ValueError("a signed event must set id and time before signing")
    event.signature = key.sign(event_signing_bytes(event))
    event.signature_key_id = key.key_id
    return event


def verify_event(event: event_pb2.Event, public_key: Ed25519PublicKey) -> bool:
    """True when the event carries a valid signature by `public_key` over its signing bytes."""
    if not event.signature or not event.id or not event.HasField("time"):
        return False
    return dsse.verify_with(public_key, event_signing_bytes(event), event.signature)
