"""Canonical signing bytes of events, and the bus-side verifier with its key cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from grace.eventbus.v1 import event_pb2
from services.common import dsse
from services.common.errors import PermissionDenied
from services.common.event_signing import (
    EVENT_PAYLOAD_TYPE,
    event_signing_bytes,
    sign_event,
    verify_event,
)
from services.common.event_verification import EventVerifier, KeyLookupFailed, SignatureStatus
from services.common.signing import SigningKey


def event(source: str = "ai_domain", n: float = 1.0) -> event_pb2.Event:
    e = event_pb2.Event(id="e-1", event_type="ml.prediction", source_domain=source)
    e.time.FromSeconds(1_800_000_000)
    e.data.update({"n": n, "label": "cat", "nested": {"b": 1, "a": [1, 2]}})
    return e


def test_signing_bytes_are_the_dsse_encoding_without_bus_and_signature_fields() -> None:
    plain = event()
    decorated = event()
    decorated.sequence = 42
    decorated.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    decorated.signature = b"x" * 64
    decorated.signature_key_id = "abc"
    assert event_signing_bytes(plain) == event_signing_bytes(decorated)
    body = plain.SerializeToString(deterministic=True)
    assert event_signing_bytes(plain) == dsse.pae(EVENT_PAYLOAD_TYPE, body)
    assert event_signing_bytes(plain).startswith(
        b"DSSEv1 39 application/vnd.grace.event.v1+protobuf "
    )


def test_a_signed_event_verifies_and_any_change_breaks_it() -> None:
    key = SigningKey.generate()
    signed = sign_event(event(), key)
    public = key.private_key.public_key()
    assert signed.signature_key_id == key.key_id
    assert verify_event(signed, public)
    for change in ("data", "type", "source", "time"):
        copy = event_pb2.Event()
        copy.CopyFrom(signed)
        if change == "data":
            copy.data["n"] = 2.0
        elif change == "type":
            copy.event_type = "ml.other"
        elif change == "source":
            copy.source_domain = "mallory"
        else:
            copy.time.FromSeconds(1_800_000_001)
        assert not verify_event(copy, public), change
    # The bytes survive a round trip through the wire format.
    assert verify_event(event_pb2.Event.FromString(signed.SerializeToString()), public)


def test_signing_needs_an_id_and_a_time() -> None:
    with pytest.raises(ValueError, match="id and time"):
        sign_event(event_pb2.Event(event_type="x", source_domain="y"), SigningKey.generate())


@dataclass
class Keys:
    """A key source the test controls, counting lookups."""

    keys: dict[str, dict[str, bytes]] = field(default_factory=dict)
    down: bool = False
    lookups: int = 0

    async def active_keys(self, domain_id: str) -> dict[str, bytes] | None:
        self.lookups += 1
        if self.down:
            raise KeyLookupFailed("trust kernel: UNAVAILABLE")
        return self.keys.get(domain_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_the_verifier_rejects_forged_and_unsigned_events_from_sources_with_keys() -> None:
    key, mallory = SigningKey.generate(), SigningKey.generate()
    source = Keys({"ai_domain": {key.key_id: key.public_key}})
    verifier = EventVerifier(source, "reject")
    assert await verifier.enforce(sign_event(event(), key)) is SignatureStatus.VALID
    forged = sign_event(event(), mallory)
    with pytest.raises(PermissionDenied):
        await verifier.enforce(forged)
    forged.signature_key_id = key.key_id  # claiming the right key id does not help
    with pytest.raises(PermissionDenied):
        await verifier.enforce(forged)
    with pytest.raises(PermissionDenied):
        await verifier.enforce(event())
    assert await verifier.enforce(event("newcomer")) is SignatureStatus.UNSIGNED_OPEN
    assert source.lookups <= 4


async def test_flag_mode_accepts_violations_and_counts_them() -> None:
    key = SigningKey.generate()
    verifier = EventVerifier(Keys({"ai_domain": {key.key_id: key.public_key}}), "flag")
    assert await verifier.enforce(event()) is SignatureStatus.UNSIGNED
    assert verifier.counts["unsigned"] == 1


async def test_keys_are_cached_and_a_rotation_is_picked_up_at_once() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    source = Keys({"ai_domain": {old.key_id: old.public_key}})
    clock = Clock()
    verifier = EventVerifier(source, "reject", clock=clock)
    for _ in range(50):
        await verifier.enforce(sign_event(event(), old))
    assert source.lookups == 1
    source.keys["ai_domain"] = {new.key_id: new.public_key}
    clock.now += 2
    assert await verifier.enforce(sign_event(event(), new)) is SignatureStatus.VALID
    with pytest.raises(PermissionDenied):
        await verifier.enforce(sign_event(event(), old))


async def test_a_trust_kernel_that_is_down_leaves_events_unverified_but_accepted() -> None:
    verifier = EventVerifier(Keys(down=True), "reject")
    assert await verifier.enforce(event()) is SignatureStatus.UNVERIFIED


async def test_an_expired_entry_answers_at_once_while_one_lookup_replaces_it() -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    source = Keys({"ai_domain": {old.key_id: old.public_key}})
    clock = Clock()
    verifier = EventVerifier(source, "reject", clock=clock, ttl_s=30.0)
    await verifier.enforce(sign_event(event(), old))
    source.keys["ai_domain"] = {new.key_id: new.public_key}
    release = asyncio.Event()
    fetch = source.active_keys

    async def slow_lookup(domain_id: str) -> dict[str, bytes] | None:
        await release.wait()
        return await fetch(domain_id)

    source.active_keys = slow_lookup  # type: ignore[method-assign]  # a trust kernel that lags
    clock.now += 31
    # The trust kernel has not answered: the expired entry still judges, nobody waits.
    statuses = await asyncio.wait_for(
        asyncio.gather(*(verifier.enforce(sign_event(event(), old)) for _ in range(20))), 5
    )
    assert set(statuses) == {SignatureStatus.VALID}
    release.set()
    for _ in range(10):
        await asyncio.sleep(0)
    assert source.lookups == 2  # one lookup in the background, shared by all 20
    with pytest.raises(PermissionDenied):
        await verifier.enforce(sign_event(event(), old))  # the rotation has landed
