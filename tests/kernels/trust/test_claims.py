"""Only an identity itself registers its key, with the key its certificate binds; Grace's
component ids cannot be claimed by a stranger, and events forged under them are refused by
the bus."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import grpc
import pytest

from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common.channels import ClientSecurity, channel
from services.common.components import COMPONENT_IDS, component_key_path
from services.common.errors import PermissionDenied
from services.common.event_signing import sign_event
from services.common.pki import Identity, LeafFiles
from services.common.signing import SigningKey, load_or_create_key
from services.eventbus.config import EventBusConfig
from services.eventbus.server import EventBusServer
from services.kernels.trust import statements
from services.kernels.trust.claims import ClaimRules
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from tests.eventbus.conftest import FAST
from tests.support import server_config, serving, session_pki

STOLEN = ("orchestrator", "guardian", "registry", "governance")


@dataclass
class Stack:
    trust: trust_pb2_grpc.TrustServiceStub
    bus: eventbus_pb2_grpc.EventBusServiceStub
    data_dir: Path


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # The trust kernel as production configures it: from the environment.
    config = TrustConfig.from_env(
        {"GRACE_DATA_DIR": str(tmp_path), "GRACE_TRUST_REGISTER": "false"}
    )
    trust = TrustServer(
        TrustConfig(
            server=server_config("trust", tmp_path),
            settings=config.settings,
            registry_address="127.0.0.1:1",
            registry_timeout_s=1.0,
            registration=None,
        )
    )
    async with serving(trust.config.server, trust) as (trust_server, trust_chan):
        bus = EventBusServer(
            EventBusConfig(
                server=server_config("eventbus", tmp_path),
                settings=FAST,
                registry_address="127.0.0.1:1",
                verify_signatures="reject",
                trust_address=trust_server.address,
            )
        )
        async with serving(bus.config.server, bus) as (_, bus_chan):
            yield Stack(
                trust_pb2_grpc.TrustServiceStub(trust_chan),
                eventbus_pb2_grpc.EventBusServiceStub(bus_chan),
                tmp_path,
            )


async def claim(
    trust: trust_pb2_grpc.TrustServiceStub, name: str, key: SigningKey
) -> trust_pb2.RegisterIdentityResponse:
    challenge = (
        await trust.CreateChallenge(trust_pb2.CreateChallengeRequest(domain_id=name))
    ).challenge
    body = statements.registration(name, key.public_key, challenge)
    response: trust_pb2.RegisterIdentityResponse = await trust.RegisterIdentity(
        trust_pb2.RegisterIdentityRequest(
            domain_id=name,
            public_key=key.public_key,
            challenge=challenge,
            signature=statements.sign(key, statements.REGISTRATION, body),
        )
    )
    return response


def forged(source: str, key: SigningKey, event_id: str) -> event_pb2.Event:
    event = event_pb2.Event(id=event_id, event_type="workflow.completed", source_domain=source)
    event.time.FromSeconds(1_800_000_000)
    return sign_event(event, key)


@pytest.mark.parametrize("name", STOLEN)
async def test_a_stranger_cannot_claim_a_component_id(stack: Stack, name: str) -> None:
    mallory = SigningKey.generate()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await claim(stack.trust, name, mallory)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{name!r} is reserved" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await stack.trust.GetIdentity(trust_pb2.GetIdentityRequest(domain_id=name))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_stranger_cannot_claim_a_component_id_that_has_started_either(
    stack: Stack,
) -> None:
    load_or_create_key(component_key_path(stack.data_dir, "guardian"))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await claim(stack.trust, "guardian", SigningKey.generate())
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_component_registers_its_id_with_the_key_grace_provisioned(
    stack: Stack,
) -> None:
    own = load_or_create_key(component_key_path(stack.data_dir, "orchestrator"))
    registered = await claim(stack.trust, "orchestrator", own)
    assert registered.created
    assert registered.identity.current_key.key_id == own.key_id


async def test_ids_that_are_not_reserved_are_still_claimed_by_proof_of_possession(
    stack: Stack,
) -> None:
    registered = await claim(stack.trust, "weather_domain", SigningKey.generate())
    assert registered.created


@pytest.mark.parametrize("name", STOLEN)
async def test_events_forged_under_a_component_id_are_refused_by_the_bus(
    stack: Stack, name: str
) -> None:
    mallory = SigningKey.generate()
    with pytest.raises(grpc.aio.AioRpcError):
        await claim(stack.trust, name, mallory)
    own = load_or_create_key(component_key_path(stack.data_dir, name))
    # Before the component registered, and after: the stranger's signature is refused.
    for attempt in ("before", "after"):
        batch = await stack.bus.PublishBatch(
            eventbus_pb2.PublishBatchRequest(events=[forged(name, mallory, f"{name}-{attempt}")])
        )
        [result] = batch.results
        assert result.status == eventbus_pb2.PUBLISH_STATUS_REJECTED, attempt
        if attempt == "before":
            await claim(stack.trust, name, own)
    # The component's own events are stored once the bus has looked its new key up (it
    # looks a source up again at most once a second; an outbox simply retries).
    statuses: list[int] = []
    for _ in range(50):
        genuine = await stack.bus.PublishBatch(
            eventbus_pb2.PublishBatchRequest(events=[forged(name, own, f"{name}-genuine")])
        )
        statuses = [r.status for r in genuine.results]
        if statuses != [eventbus_pb2.PUBLISH_STATUS_REJECTED]:
            break
        await asyncio.sleep(0.1)
    assert statuses == [eventbus_pb2.PUBLISH_STATUS_STORED]


def test_without_authentication_a_reserved_id_needs_its_provisioned_key(tmp_path: Path) -> None:
    rules = ClaimRules(frozenset({"registry"}), tmp_path)
    own = load_or_create_key(component_key_path(tmp_path, "registry"))
    stranger = SigningKey.generate()
    rules.check("registry", own.public_key, claimant=None)
    with pytest.raises(PermissionDenied, match="'registry' is reserved"):
        rules.check("registry", stranger.public_key, claimant=None)
    with pytest.raises(PermissionDenied):
        ClaimRules(frozenset({"registry"})).check("registry", own.public_key, claimant=None)
    rules.check("weather_domain", stranger.public_key, claimant=None)


def test_every_component_of_the_default_topology_is_reserved() -> None:
    text = resources.files("services.guardian").joinpath("default.toml").read_text("utf-8")
    names = set(tomllib.loads(text)["components"])
    assert names <= COMPONENT_IDS
    assert {"scheduler", "tasks", "librarian", "learning"} <= COMPONENT_IDS


def test_extra_reserved_ids_are_read_from_the_environment(tmp_path: Path) -> None:
    config = TrustConfig.from_env(
        {"GRACE_DATA_DIR": str(tmp_path), "GRACE_TRUST_RESERVED_IDS": "billing, payroll"}
    )
    assert {"billing", "payroll", "orchestrator"} <= config.settings.claims.reserved
    assert config.settings.claims.keys_dir == tmp_path


async def test_no_private_key_or_challenge_reaches_the_logs(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    path = component_key_path(stack.data_dir, "orchestrator")
    own = load_or_create_key(path)
    await claim(stack.trust, "orchestrator", own)
    with pytest.raises(grpc.aio.AioRpcError):
        await claim(stack.trust, "guardian", SigningKey.generate())
    text = caplog.text
    assert "created signing key" in text  # the logs were captured
    assert "refused a claim on id guardian" in text
    pem = path.read_text()
    secret_lines = [line for line in pem.splitlines() if "-----" not in line]
    private = own.private_key.private_bytes_raw()
    for secret in (*secret_lines, private.hex(), base64.b64encode(private).decode()):
        assert secret not in text


def as_workload(
    address: str, identity: Identity, key: SigningKey | None, directory: Path
) -> grpc.aio.Channel:
    """A channel presenting a certificate the Grace CA issued to `identity`, binding `key`
    (None: no key), and no token: the caller is that workload."""
    pki = session_pki()
    files = LeafFiles(
        directory / f"{identity.name}.crt", directory / f"{identity.name}.key", pki.ca_file
    )
    pki.ca.issue_files(identity, files, signing_key=key.public_key if key else None)
    return channel(address, security=ClientSecurity(pki.ca_file, files.cert, files.key, None))


@pytest.fixture
async def trust_address(tmp_path: Path) -> AsyncIterator[str]:
    config = TrustConfig.from_env({"GRACE_DATA_DIR": str(tmp_path)})
    trust = TrustServer(
        TrustConfig(
            server=server_config("trust", tmp_path),
            settings=config.settings,
            registry_address="127.0.0.1:1",
            registry_timeout_s=1.0,
            registration=None,
        )
    )
    async with serving(trust.config.server, trust) as (server, _):
        yield server.address


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """The code and message a call is refused with (OK, "" when it is accepted)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_another_domain_with_its_own_certificate_cannot_register_a_key_for_ai_domain(
    trust_address: str, tmp_path: Path
) -> None:
    evil_key = SigningKey.generate()
    async with as_workload(
        trust_address, Identity("domain", "evil_domain"), evil_key, tmp_path
    ) as evil:
        stub = trust_pb2_grpc.TrustServiceStub(evil)
        # Refused by the access table already (a domain acts only as itself); the claim
        # rule refuses it again in the trust kernel (see the component's test below).
        code, message = await refusal(claim(stub, "ai_domain", evil_key))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "domain:evil_domain denied" in message
        assert "ai_domain" in message
        # Nor under an ordinary id nobody holds yet, nor a component's.
        code, _ = await refusal(claim(stub, "weather_domain", evil_key))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _ = await refusal(claim(stub, "orchestrator", evil_key))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # Its own id, with the key its certificate binds, is its to register.
        assert (await claim(stub, "evil_domain", evil_key)).created
    ai_key = SigningKey.generate()
    async with as_workload(trust_address, Identity("domain", "ai_domain"), ai_key, tmp_path) as ai:
        registered = await claim(trust_pb2_grpc.TrustServiceStub(ai), "ai_domain", ai_key)
    assert registered.identity.current_key.key_id == ai_key.key_id


async def test_a_domain_cannot_register_a_key_other_than_the_one_its_certificate_binds(
    trust_address: str, tmp_path: Path
) -> None:
    certified, other = SigningKey.generate(), SigningKey.generate()
    async with as_workload(
        trust_address, Identity("domain", "ai_domain"), certified, tmp_path
    ) as ai:
        stub = trust_pb2_grpc.TrustServiceStub(ai)
        code, message = await refusal(claim(stub, "ai_domain", other))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert f"not the signing key {certified.key_id}" in message
        assert (await claim(stub, "ai_domain", certified)).created
        # Rotating to a key the certificate does not bind is refused the same way.
        issued_at = int(time.time())
        body = statements.rotation("ai_domain", certified.key_id, other.public_key, issued_at)
        code, message = await refusal(
            stub.RotateKey(
                trust_pb2.RotateKeyRequest(
                    domain_id="ai_domain",
                    new_public_key=other.public_key,
                    issued_at=issued_at,
                    old_key_signature=statements.sign(certified, statements.ROTATION, body),
                    new_key_signature=statements.sign(other, statements.ROTATION, body),
                )
            )
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "rejoin with the new key" in message


async def test_a_component_registers_its_own_id_with_its_certified_key_and_no_other(
    trust_address: str, tmp_path: Path
) -> None:
    own = SigningKey.generate()
    identity = Identity("component", "governance")
    async with as_workload(trust_address, identity, own, tmp_path) as governance:
        stub = trust_pb2_grpc.TrustServiceStub(governance)
        code, _ = await refusal(claim(stub, "governance", SigningKey.generate()))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        # The access table lets components act for domains; the claim rule does not.
        code, message = await refusal(claim(stub, "weather_domain", own))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "only 'weather_domain' itself" in message
        assert "authenticated as 'component:governance'" in message
        assert (await claim(stub, "governance", own)).created
