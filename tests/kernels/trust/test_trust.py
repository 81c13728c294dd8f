"""The trust kernel core on SQLite and PostgreSQL: proof of possession, rotation,
revocation, certifications, message verification and trust paths, scores."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from services.common.storage import Database
from services.kernels.trust import statements
from services.kernels.trust.model import KeyState, Level
from services.kernels.trust.scoring import Behaviour
from services.kernels.trust.store import TrustStore
from services.kernels.trust.trust import TrustKernel
from tests.conftest import DatabaseTarget
from tests.kernels.trust.conftest import Domain, RecordedBehaviour
from tests.support import ManualClock, give_up_at, give_up_midway, pause_after

NOW = 1_800_000_000


async def test_registration_needs_a_signature_over_the_challenge_by_the_key(
    kernel: TrustKernel,
) -> None:
    ai, thief = Domain("ai_domain"), Domain("thief")
    challenge, _ = kernel.create_challenge("ai_domain")
    body = statements.registration("ai_domain", ai.public, challenge)
    forged = statements.sign(thief.key, statements.REGISTRATION, body)
    with pytest.raises(Unauthenticated):
        await kernel.register("ai_domain", ai.public, challenge, forged)
    good = statements.sign(ai.key, statements.REGISTRATION, body)
    identity, created = await kernel.register("ai_domain", ai.public, challenge, good)
    assert created
    assert identity.current is not None
    assert identity.current.key_id == ai.key_id
    with pytest.raises(Unauthenticated):  # a challenge is good once
        await kernel.register("ai_domain", ai.public, challenge, good)


async def test_an_expired_or_foreign_challenge_is_refused(
    kernel: TrustKernel, clock: ManualClock
) -> None:
    ai = Domain("ai_domain")
    challenge, _ = kernel.create_challenge("other")
    body = statements.registration("ai_domain", ai.public, challenge)
    with pytest.raises(Unauthenticated):
        await kernel.register(
            "ai_domain",
            ai.public,
            challenge,
            statements.sign(ai.key, statements.REGISTRATION, body),
        )
    challenge, _ = kernel.create_challenge("ai_domain")
    clock.advance(301)
    body = statements.registration("ai_domain", ai.public, challenge)
    with pytest.raises(Unauthenticated):
        await kernel.register(
            "ai_domain",
            ai.public,
            challenge,
            statements.sign(ai.key, statements.REGISTRATION, body),
        )


async def test_a_second_key_for_a_domain_must_come_by_rotation(kernel: TrustKernel) -> None:
    ai = Domain("ai_domain")
    await ai.register(kernel)
    await ai.register(kernel)  # the same key again is a no-op
    with pytest.raises(AlreadyExists):
        await Domain("ai_domain").register(kernel)


async def test_rotation_is_signed_by_the_old_and_the_new_key(
    kernel: TrustKernel, clock: ManualClock
) -> None:
    ai = Domain("ai_domain")
    await ai.register(kernel)
    new = Domain("ai_domain")
    at = int(clock())
    body = statements.rotation("ai_domain", ai.key_id, new.public, at)
    by_old = statements.sign(ai.key, statements.ROTATION, body)
    by_new = statements.sign(new.key, statements.ROTATION, body)
    with pytest.raises(Unauthenticated):
        await kernel.rotate("ai_domain", new.public, at, by_new, by_new)
    with pytest.raises(Unauthenticated):
        await kernel.rotate("ai_domain", new.public, at, by_old, by_old)
    identity = await kernel.rotate("ai_domain", new.public, at, by_old, by_new)
    assert identity.current is not None
    assert identity.current.key_id == new.key_id
    assert identity.keys[0].state is KeyState.ROTATED
    message = b"hello"
    assert not kernel.verify_message("ai_domain", message, ai.key.sign(message)).verified
    assert kernel.verify_message("ai_domain", message, new.key.sign(message)).verified
    with pytest.raises(Unauthenticated):  # a replay is not signed by the current key
        await kernel.rotate("ai_domain", Domain("x").public, at, by_old, by_new)


async def test_revocation_stops_verification_and_voids_certifications(
    kernel: TrustKernel, clock: ManualClock
) -> None:
    core, ai = Domain("core"), Domain("ai_domain")
    await core.register(kernel)
    await ai.register(kernel)
    await core.certify(kernel, ai, Level.FULL, NOW)
    message = b"prediction"
    assert kernel.verify_message("ai_domain", message, ai.key.sign(message)).trusted
    at = int(clock())
    body = statements.revocation("core", core.key_id, "compromised", at)
    await kernel.revoke(
        "core",
        core.key_id,
        "compromised",
        at,
        statements.sign(core.key, statements.REVOCATION, body),
    )
    verdict = kernel.verify_message("ai_domain", message, ai.key.sign(message))
    assert verdict.verified
    assert not verdict.trusted
    revoked = kernel.verify_message("core", message, core.key.sign(message))
    assert not revoked.verified
    assert "no active key" in revoked.reason
    assert kernel.identity("core").current is None
    with pytest.raises(FailedPrecondition):
        await core.register(kernel)


async def test_revocation_must_be_signed_by_the_key_or_the_current_key(
    kernel: TrustKernel, clock: ManualClock
) -> None:
    ai, mallory = Domain("ai_domain"), Domain("mallory")
    await ai.register(kernel)
    at = int(clock())
    body = statements.revocation("ai_domain", ai.key_id, "x", at)
    with pytest.raises(Unauthenticated):
        await kernel.revoke(
            "ai_domain",
            ai.key_id,
            "x",
            at,
            statements.sign(mallory.key, statements.REVOCATION, body),
        )
    with pytest.raises(InvalidArgument):
        await kernel.revoke(
            "ai_domain",
            ai.key_id,
            "x",
            at - 1000,
            statements.sign(ai.key, statements.REVOCATION, body),
        )


async def test_a_forged_message_signature_is_neither_verified_nor_trusted(
    kernel: TrustKernel,
) -> None:
    core, ai, mallory = Domain("core"), Domain("ai_domain"), Domain("mallory")
    await core.register(kernel)
    await ai.register(kernel)
    await core.certify(kernel, ai, Level.FULL, NOW)
    forged = kernel.verify_message("ai_domain", b"buy", mallory.key.sign(b"buy"))
    assert (forged.verified, forged.trusted) == (False, False)
    unknown = kernel.verify_message("random_domain", b"hi", mallory.key.sign(b"hi"))
    assert (unknown.verified, unknown.trusted) == (False, False)
    assert "unknown domain" in unknown.reason


async def test_the_seed_web_of_trust_answers_as_the_seed_says(kernel: TrustKernel) -> None:
    core, memory, ai, gov, monitoring = (
        Domain(n) for n in ("core", "memory_domain", "ai_domain", "governance", "monitoring")
    )
    for d in (core, memory, ai, gov, monitoring):
        await d.register(kernel)
    for d in (memory, ai, gov):
        await core.certify(kernel, d, Level.FULL, NOW)
    assert await ai.certify(kernel, core, Level.FULL, NOW)  # mutual now
    await ai.certify(kernel, memory, Level.FULL, NOW)
    await ai.certify(kernel, monitoring, Level.PARTIAL, NOW)
    message = b"This message is from ai_domain"
    verdict = kernel.verify_message("ai_domain", message, ai.key.sign(message), "core")
    assert (verdict.verified, verdict.trusted, verdict.path) == (True, True, ("core", "ai_domain"))
    partial = kernel.verify_message("monitoring", b"m", monitoring.key.sign(b"m"), "core")
    assert partial.trusted
    assert partial.path == ("core", "ai_domain", "monitoring")
    assert partial.path_level is Level.PARTIAL
    assert kernel.mutual("core", "ai_domain")
    assert not kernel.mutual("core", "memory_domain")


async def test_trust_paths_respect_the_depth_limit_and_partial_hops(kernel: TrustKernel) -> None:
    chain = [Domain(f"d{i}") for i in range(5)]
    for d in chain:
        await d.register(kernel)
    for a, b in itertools.pairwise(chain):
        await a.certify(kernel, b, Level.FULL, NOW)
    msg = b"m"
    sig = chain[4].key.sign(msg)
    assert not kernel.verify_message("d4", msg, sig, "d0", max_depth=3).trusted
    assert kernel.verify_message("d4", msg, sig, "d0", max_depth=4).trusted
    await chain[1].certify(kernel, chain[2], Level.PARTIAL, NOW + 1)  # no longer passes trust
    assert not kernel.verify_message("d4", msg, sig, "d0", max_depth=8).trusted
    assert kernel.verify_message("d2", msg, chain[2].key.sign(msg), "d0").trusted
    with pytest.raises(InvalidArgument):
        kernel.verify_message("d4", msg, sig, "d0", max_depth=99)


async def test_certifications_must_be_signed_by_the_issuer_and_newer(kernel: TrustKernel) -> None:
    core, ai, mallory = Domain("core"), Domain("ai_domain"), Domain("mallory")
    await core.register(kernel)
    await ai.register(kernel)
    body = statements.certification("core", "ai_domain", "full", NOW)
    with pytest.raises(Unauthenticated):
        await kernel.establish(
            "core",
            "ai_domain",
            Level.FULL,
            NOW,
            statements.sign(mallory.key, statements.CERTIFICATION, body),
        )
    await core.certify(kernel, ai, Level.FULL, NOW)
    await core.certify(kernel, ai, Level.FULL, NOW)  # the same statement again is a no-op
    with pytest.raises(FailedPrecondition):
        await core.certify(kernel, ai, Level.NONE, NOW - 10)
    with pytest.raises(NotFound):
        await core.certify(kernel, Domain("ghost"), Level.FULL, NOW)


async def test_scores_show_components_and_survive_the_registry_being_down(
    kernel: TrustKernel, behaviour: RecordedBehaviour
) -> None:
    core, ai = Domain("core"), Domain("ai_domain")
    await core.register(kernel)
    await ai.register(kernel)
    await core.certify(kernel, ai, Level.FULL, NOW)
    behaviour.known["ai_domain"] = Behaviour("HEALTHY", 0.9)
    score = await kernel.score("ai_domain")
    parts = {c.name: c for c in score.components}
    assert parts["certifications"].value == pytest.approx(2 / 3)
    assert parts["lease_reliability"].value == 1.0
    assert parts["step_success"].value == 0.9
    assert score.score == pytest.approx(0.4 * 2 / 3 + 0.3 * 1.0 + 0.3 * 0.9)
    behaviour.down = True
    degraded = await kernel.score("ai_domain")
    down = {c.name: c for c in degraded.components}
    assert not down["lease_reliability"].available
    assert "unreachable" in down["lease_reliability"].detail
    assert degraded.score == pytest.approx(2 / 3)
    assert (await kernel.score("nobody")).score == 0.0


async def test_state_survives_a_restart(database: DatabaseTarget, clock: ManualClock) -> None:
    def make() -> TrustKernel:
        return TrustKernel(
            TrustStore(Database(database.url, schema=database.schema)),
            clock=clock,
            behaviour=RecordedBehaviour(),
        )

    first = make()
    await first.open()
    core, ai = Domain("core"), Domain("ai_domain")
    await core.register(first)
    await ai.register(first)
    await core.certify(first, ai, Level.FULL, NOW)
    await first.store.close()
    second = make()
    await second.open()
    try:
        verdict = second.verify_message("ai_domain", b"x", ai.key.sign(b"x"), "core")
        assert verdict.verified
        assert verdict.trusted
        certs, _ = second.list_certifications("core", "", 10, "")
        assert [(c.issuer, c.subject) for c in certs] == [("core", "ai_domain")]
    finally:
        await second.store.close()


async def test_a_registration_whose_caller_gives_up_midway_is_registered_whole(
    kernel: TrustKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    ai = Domain("ai_domain")
    written = pause_after(monkeypatch, kernel.store, "save_keys")
    await give_up_at(ai.register(kernel), written)
    retry = asyncio.create_task(ai.register(kernel))
    written.release.set()
    await retry  # the key is known: the retry is a no-op, not a second insert
    identity = kernel.identity("ai_domain")
    assert identity.current is not None
    assert identity.current.key_id == ai.key_id


async def test_a_rotation_whose_caller_gives_up_midway_is_rotated_whole(
    kernel: TrustKernel, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ai, new = Domain("ai_domain"), Domain("ai_domain")
    await ai.register(kernel)
    at = int(clock())
    body = statements.rotation("ai_domain", ai.key_id, new.public, at)
    by_old = statements.sign(ai.key, statements.ROTATION, body)
    by_new = statements.sign(new.key, statements.ROTATION, body)
    written = pause_after(monkeypatch, kernel.store, "save_keys")
    await give_up_at(kernel.rotate("ai_domain", new.public, at, by_old, by_new), written)
    retry = asyncio.create_task(kernel.rotate("ai_domain", new.public, at, by_old, by_new))
    written.release.set()
    with pytest.raises(AlreadyExists):  # done already, rather than the new key inserted twice
        await retry
    expected = [(ai.key_id, KeyState.ROTATED), (new.key_id, KeyState.ACTIVE)]
    assert [(k.key_id, k.state) for k in kernel.identity("ai_domain").keys] == expected
    stored = sorted((k.key_id, k.state) for k in (await kernel.store.load()).keys)
    assert stored == sorted(expected)


async def test_a_revocation_whose_caller_gives_up_midway_still_stops_verification(
    kernel: TrustKernel, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ai = Domain("ai_domain")
    await ai.register(kernel)
    at = int(clock())
    body = statements.revocation("ai_domain", ai.key_id, "compromised", at)
    signature = statements.sign(ai.key, statements.REVOCATION, body)
    written = pause_after(monkeypatch, kernel.store, "save_keys")
    await give_up_midway(
        kernel.revoke("ai_domain", ai.key_id, "compromised", at, signature), written
    )
    assert not kernel.verify_message("ai_domain", b"x", ai.key.sign(b"x")).verified
    [stored] = (await kernel.store.load()).keys
    assert stored.state is KeyState.REVOKED


async def test_a_certification_whose_issuer_gives_up_midway_still_makes_the_trust_path(
    kernel: TrustKernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    core, ai = Domain("core"), Domain("ai_domain")
    await core.register(kernel)
    await ai.register(kernel)
    written = pause_after(monkeypatch, kernel.store, "save_certification")
    await give_up_midway(core.certify(kernel, ai, Level.FULL, NOW), written)
    assert kernel.verify_message("ai_domain", b"x", ai.key.sign(b"x")).trusted
