"""Batch event signatures: one Ed25519 signature over the Merkle root of a batch, each
event verifiable alone with its inclusion path; and the verifier that checks a batch with
one signature verification."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from grace.eventbus.v1 import event_pb2
from services.common import dsse, event_verification
from services.common.errors import PermissionDenied
from services.common.event_signing import (
    EVENT_BATCH_PAYLOAD_TYPE,
    batch_signing_bytes,
    event_signing_bytes,
    sign_event,
    sign_event_batch,
    verify_event,
)
from services.common.event_verification import EventVerifier, SignatureStatus
from services.common.merkle_hashing import leaf_hash, tree_paths
from services.common.signing import SigningKey
from services.kernels.immutable_log.merkle import MerkleTree

KEY = SigningKey.generate()
PUBLIC = KEY.private_key.public_key()


def events(count: int, source: str = "ai_domain") -> list[event_pb2.Event]:
    batch = []
    for n in range(count):
        e = event_pb2.Event(id=f"e-{n}", event_type="ml.prediction", source_domain=source)
        e.time.FromSeconds(1_800_000_000 + n)
        e.data.update({"n": n, "label": "cat"})
        batch.append(e)
    return batch


def copy(event: event_pb2.Event) -> event_pb2.Event:
    return event_pb2.Event.FromString(event.SerializeToString())


def flip(data: bytes, bit: int) -> bytes:
    buffer = bytearray(data)
    buffer[bit // 8 % len(buffer)] ^= 1 << (bit % 8)
    return bytes(buffer)


@given(st.integers(min_value=1, max_value=70))
@settings(max_examples=40, deadline=None)
def test_the_batch_tree_is_the_rfc_6962_tree_with_its_audit_paths(size: int) -> None:
    leaves = [leaf_hash(bytes([n % 256, n // 256])) for n in range(size)]
    root, paths = tree_paths(leaves)
    tree = MerkleTree(leaves)
    assert root == tree.root()
    assert paths == [tree.inclusion_proof(index) for index in range(size)]


@given(st.integers(min_value=1, max_value=40), st.data())
@settings(max_examples=40, deadline=None)
def test_every_event_of_a_signed_batch_verifies_alone_offline(
    size: int, data: st.DataObject
) -> None:
    batch = sign_event_batch(events(size), KEY)
    assert len({e.signature for e in batch}) == 1
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    stored = copy(batch[index])  # one event as a consumer stores it, nothing else
    assert stored.signature_batch_size == size
    assert stored.signature_leaf_index == index
    assert verify_event(stored, PUBLIC)
    assert not verify_event(stored, SigningKey.generate().private_key.public_key())


@given(st.integers(min_value=1, max_value=24), st.data())
@settings(max_examples=150, deadline=None)
def test_any_flipped_bit_in_a_batch_signed_event_fails(size: int, data: st.DataObject) -> None:
    batch = sign_event_batch(events(size), KEY)
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    event = copy(batch[index])
    part = data.draw(st.sampled_from(["event", "path", "index", "size", "signature"]))
    if part == "path" and not event.signature_inclusion_path:
        part = "index"  # a one-event batch has no path
    bit = data.draw(st.integers(min_value=0, max_value=(1 << 16) - 1))
    if part == "event":
        # A bit of what the event says: its id, its time or its payload.
        before = event_signing_bytes(event)
        where = bit % 3
        if where == 0:
            chars = bytearray(event.id.encode())
            chars[bit % len(chars)] ^= 1 << (bit % 7)  # stays ASCII
            event.id = chars.decode()
        elif where == 1:
            event.time.seconds ^= 1 << (bit % 31)
        else:
            event.data["n"] = index + 1 + bit  # was index
        assert event_signing_bytes(event) != before
    elif part == "path":
        element = data.draw(st.integers(0, len(event.signature_inclusion_path) - 1))
        event.signature_inclusion_path[element] = flip(event.signature_inclusion_path[element], bit)
    elif part == "index":
        event.signature_leaf_index ^= 1 << (bit % 32)
    elif part == "size":
        event.signature_batch_size ^= 1 << (bit % 32)
    else:
        event.signature = flip(event.signature, bit)
    assert not verify_event(event, PUBLIC), part


def test_the_batch_signature_covers_the_dsse_encoding_of_root_and_size() -> None:
    batch = sign_event_batch(events(3), KEY)
    assert batch_signing_bytes(b"r" * 32, 3).startswith(
        b"DSSEv1 36 %s 40 " % EVENT_BATCH_PAYLOAD_TYPE.encode()
    )
    assert batch_signing_bytes(b"r" * 32, 3).endswith(b"r" * 32 + (3).to_bytes(8, "big"))
    # The batch fields are signature metadata: the signed event bytes are unchanged, so a
    # per-event signature made before still holds for the same event.
    plain = events(3)[1]
    assert event_signing_bytes(batch[1]) == event_signing_bytes(plain)
    assert verify_event(sign_event(copy(batch[1]), KEY), PUBLIC)


def test_a_per_event_signature_does_not_pass_as_a_batch_one_or_back() -> None:
    single = sign_event(events(1)[0], KEY)
    as_batch = copy(single)
    as_batch.signature_batch_size = 1
    assert not verify_event(as_batch, PUBLIC)
    batched = sign_event_batch(events(1), KEY)[0]
    assert verify_event(batched, PUBLIC)
    as_single = copy(batched)
    as_single.signature_batch_size = 0
    assert not verify_event(as_single, PUBLIC)
    stray = copy(single)
    stray.signature_inclusion_path.append(b"x" * 32)
    assert not verify_event(stray, PUBLIC)


def test_a_batch_needs_events_with_ids_and_times() -> None:
    with pytest.raises(ValueError, match="at least one"):
        sign_event_batch([], KEY)
    with pytest.raises(ValueError, match="id and time"):
        sign_event_batch([*events(2), event_pb2.Event(event_type="x", source_domain="y")], KEY)


@dataclass
class Keys:
    keys: dict[str, dict[str, bytes]]

    async def active_keys(self, domain_id: str) -> dict[str, bytes] | None:
        return self.keys.get(domain_id)


@dataclass
class Counter:
    calls: int = 0


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts the Ed25519 verifications the bus-side verifier makes for batches."""
    counter = Counter()
    real = dsse.verify_with

    def counting(key: Ed25519PublicKey, message: bytes, signature: bytes) -> bool:
        counter.calls += 1
        return real(key, message, signature)

    monkeypatch.setattr(event_verification, "verify_with", counting)
    return counter


def verifier(mode: str = "reject") -> EventVerifier:
    return EventVerifier(Keys({"ai_domain": {KEY.key_id: KEY.public_key}}), mode)


async def test_the_verifier_checks_a_signed_batch_with_one_signature_verification(
    verifications: Counter,
) -> None:
    checker = verifier()
    batch = sign_event_batch(events(100), KEY)
    assert await checker.enforce_batch(batch) == [None] * 100
    assert verifications.calls == 1
    assert checker.counts["valid"] == 100
    # A redelivery of the same batch, or one event of it alone, is free for a while.
    assert await checker.enforce_batch(batch) == [None] * 100
    assert await checker.enforce(copy(batch[42])) is SignatureStatus.VALID
    assert verifications.calls == 1


async def test_a_forged_event_in_a_signed_batch_is_refused_alone() -> None:
    checker = verifier()
    batch = sign_event_batch(events(10), KEY)
    batch[3].data["label"] = "dog"  # changed after signing
    denials = await checker.enforce_batch(batch)
    assert [i for i, d in enumerate(denials) if d is not None] == [3]
    assert denials[3] is not None
    assert denials[3].reason == "SIGNATURE_FORGED"
    # Swapping two events' positions does not help either.
    again = sign_event_batch(events(4), KEY)
    again[0].signature_leaf_index, again[1].signature_leaf_index = 1, 0
    denials = await checker.enforce_batch(again)
    assert [d is None for d in denials] == [False, False, True, True]


async def test_a_batch_signed_by_another_key_is_refused_entirely() -> None:
    checker = verifier()
    mallory = SigningKey.generate()
    batch = sign_event_batch(events(5), mallory)
    assert all(d is not None for d in await checker.enforce_batch(batch))
    for event in batch:
        event.signature_key_id = KEY.key_id  # claiming the right key id does not help
    assert all(d is not None for d in await checker.enforce_batch(batch))
    assert checker.counts["forged"] == 10


async def test_flag_mode_accepts_a_forged_batch_entry_and_counts_it() -> None:
    checker = verifier("flag")
    batch = sign_event_batch(events(3), KEY)
    batch[0].subject = "tampered"
    assert await checker.enforce_batch(batch) == [None] * 3
    assert checker.counts == {"forged": 1, "valid": 2}


@pytest.mark.parametrize("mode", ["reject", "flag"])
async def test_a_batch_is_judged_and_counted_as_its_events_would_be_one_at_a_time(
    mode: str,
) -> None:
    open_source = events(3, source="open_domain")  # no identity: unsigned is fine
    unsigned = events(3)  # the source has a key: unsigned is a violation...
    vouched = events(2, source="vouched_domain")  # ...unless the caller is the source
    signed = [sign_event(event, KEY) for event in events(2)]
    forged = sign_event(events(1)[0], KEY)
    forged.subject = "changed after signing"
    batched = sign_event_batch(events(3), KEY)
    # Interleaved, so that sources and statuses change from one event to the next.
    batch = [
        *open_source[:2],
        unsigned[0],
        signed[0],
        *vouched,
        forged,
        *batched,
        unsigned[1],
        open_source[2],
        signed[1],
        unsigned[2],
    ]
    keys = {
        "ai_domain": {KEY.key_id: KEY.public_key},
        "vouched_domain": {KEY.key_id: KEY.public_key},
    }

    def checker() -> EventVerifier:
        return EventVerifier(
            Keys(keys), mode, vouched=lambda event: event.source_domain == "vouched_domain"
        )

    alone = checker()
    expected: list[str | None] = []
    for event in batch:
        try:
            await alone.enforce(copy(event))
            expected.append(None)
        except PermissionDenied as denial:
            expected.append(denial.message)
    together = checker()
    denials = await together.enforce_batch([copy(event) for event in batch])
    assert [None if d is None else d.message for d in denials] == expected
    assert together.counts == alone.counts
    assert together.counts["unsigned_open"] == 3
    assert together.counts["unsigned_authenticated"] == 2
