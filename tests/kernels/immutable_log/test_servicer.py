"""The immutable log over gRPC: appends, proofs checked offline by the CLI with the public
key only, the DomainService face, event intake, and registration in a real registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from sqlalchemy import update

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.kernels.immutable_log import cli, store
from services.kernels.immutable_log.config import LogConfig
from services.kernels.immutable_log.log import LogSettings
from services.kernels.immutable_log.server import ImmutableLogServer
from services.kernels.registration import DomainRegistration
from services.registry.config import RegistryConfig
from services.registry.registry import RegistrySettings
from services.registry.server import RegistryServer
from tests.support import server_config, serving


def log_config(tmp_path: Path, registration: DomainRegistration | None = None) -> LogConfig:
    return LogConfig(
        server=server_config("immutable_log", tmp_path),
        settings=LogSettings(origin="test.example/log"),
        key_file=tmp_path / "keys" / "immutable_log.key",
        registration=registration,
    )


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[ImmutableLogServer, grpc.aio.Channel]]:
    service = ImmutableLogServer(log_config(tmp_path))
    async with serving(service.config.server, service) as (_, chan):
        yield service, chan


def new_entry(n: int) -> pb.NewEntry:
    entry = pb.NewEntry(kind="healing.decision", actor="guardian")
    entry.data.update({"n": n})
    return entry


def swap_first_hashes(path: str) -> None:
    tampered = json.loads(Path(path).read_text())
    tampered["hashes"][0] = tampered["hashes"][1]
    Path(path).write_text(json.dumps(tampered))


def dump(path: Path, message: object) -> str:
    path.write_text(json_format.MessageToJson(message))  # type: ignore[arg-type]
    return str(path)


async def test_proofs_from_the_server_verify_offline_with_the_cli(
    served: tuple[ImmutableLogServer, grpc.aio.Channel], tmp_path: Path
) -> None:
    service, chan = served
    stub = pb_grpc.ImmutableLogServiceStub(chan)
    first = await stub.AppendBatch(pb.AppendBatchRequest(entries=[new_entry(n) for n in range(5)]))
    assert (first.first_index, first.tree_size, len(first.leaf_hashes)) == (0, 5, 5)
    old = await stub.GetCheckpoint(pb.GetCheckpointRequest())
    await stub.AppendBatch(pb.AppendBatchRequest(entries=[new_entry(n) for n in range(5, 13)]))
    single = await stub.Append(pb.AppendRequest(entry=new_entry(13)))
    assert single.index == 13
    key_file = tmp_path / "vkey"
    key_file.write_text(old.verifier_key)
    proof = await stub.GetInclusionProof(pb.GetInclusionProofRequest(index=3))
    assert proof.tree_size == 14
    proof_file = dump(tmp_path / "proof.json", proof)
    assert cli.main(["verify-inclusion", "--key", str(key_file), "--proof", proof_file]) == 0
    pem = str(service.config.key_file.with_suffix(".pub"))
    assert cli.main(["verify-inclusion", "--key", pem, "--proof", proof_file]) == 0
    consistency = await stub.GetConsistencyProof(
        pb.GetConsistencyProofRequest(first_size=old.tree_size)
    )
    consistency_file = dump(tmp_path / "consistency.json", consistency)
    old_file = tmp_path / "old.checkpoint"
    old_file.write_text(old.checkpoint)
    args = ["verify-consistency", "--key", str(key_file), "--proof", consistency_file]
    assert cli.main([*args, "--old", str(old_file)]) == 0
    swap_first_hashes(proof_file)
    assert cli.main(["verify-inclusion", "--key", str(key_file), "--proof", proof_file]) == 1


async def test_a_tampered_row_fails_verify_integrity_and_the_cli(
    served: tuple[ImmutableLogServer, grpc.aio.Channel], tmp_path: Path
) -> None:
    service, chan = served
    stub = pb_grpc.ImmutableLogServiceStub(chan)
    await stub.AppendBatch(pb.AppendBatchRequest(entries=[new_entry(n) for n in range(8)]))
    assert (await stub.VerifyIntegrity(pb.VerifyIntegrityRequest())).valid
    forged = pb.EntryData(kind="healing.decision", actor="guardian")
    async with service.log.store.db.transaction() as conn:
        await conn.execute(
            update(store.entries)
            .where(store.entries.c.idx == 4)
            .values(leaf_data=forged.SerializeToString())
        )
    report = await stub.VerifyIntegrity(pb.VerifyIntegrityRequest())
    assert not report.valid
    assert report.first_bad_index == 4
    checkpoint = await stub.GetCheckpoint(pb.GetCheckpointRequest())
    key = tmp_path / "vkey"
    key.write_text(checkpoint.verifier_key)
    proof = await stub.GetInclusionProof(pb.GetInclusionProofRequest(index=4))
    proof.entry.ClearField("leaf_hash")  # an auditor hashes the bytes it was given
    path = dump(tmp_path / "p.json", proof)
    assert cli.main(["verify-inclusion", "--key", str(key), "--proof", path]) == 1


async def test_bad_requests_get_invalid_argument(
    served: tuple[ImmutableLogServer, grpc.aio.Channel],
) -> None:
    stub = pb_grpc.ImmutableLogServiceStub(served[1])
    for call in (
        stub.Append(pb.AppendRequest(entry=pb.NewEntry(kind="", actor="x"))),
        stub.GetInclusionProof(pb.GetInclusionProofRequest(index=0)),
        stub.GetConsistencyProof(pb.GetConsistencyProofRequest(first_size=3)),
        stub.GetCheckpoint(pb.GetCheckpointRequest(tree_size=10)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_workflow_steps_append_once_and_compensate_by_appending(
    served: tuple[ImmutableLogServer, grpc.aio.Channel],
) -> None:
    service, chan = served
    domain = domain_pb2_grpc.DomainServiceStub(chan)
    request = domain_pb2.ExecuteRequest(
        domain_id="immutable_log", action="append", idempotency_key="exec-1/step_1"
    )
    request.input.update({"kind": "execution.proof", "actor": "orchestrator", "data": {"a": 1}})
    first = json_format.MessageToDict((await domain.Execute(request)).output)
    again = json_format.MessageToDict((await domain.Execute(request)).output)
    assert first["index"] == again["index"] == 0
    assert again["replayed"] is True
    undo = domain_pb2.CompensateRequest(
        domain_id="immutable_log", action="append", idempotency_key="exec-1/step_1/compensate"
    )
    undo.input.CopyFrom(request.input)
    undo.output.update(first)
    report = json_format.MessageToDict((await domain.Compensate(undo)).output)
    assert report["index"] == 1
    assert service.log.size == 2
    verify = await domain.Execute(domain_pb2.ExecuteRequest(action="verify"))
    assert verify.output["valid"] is True


async def test_pushed_events_are_recorded_once(
    served: tuple[ImmutableLogServer, grpc.aio.Channel],
) -> None:
    service, chan = served
    domain = domain_pb2_grpc.DomainServiceStub(chan)
    event = event_pb2.Event(id="h-1", event_type="healing.restart", source_domain="guardian")
    event.data.update({"component": "registry"})
    for _ in range(2):
        answer = await domain.DeliverEvent(domain_pb2.DeliverEventRequest(event=event, attempt=1))
        assert answer.outcome == domain_pb2.DELIVERY_OUTCOME_ACK
    views, _ = await service.log.entries(0, 0, 10, "")
    assert len(views) == 1
    assert views[0].data is not None
    assert views[0].data.kind == "healing.restart"
    assert views[0].data.actor == "guardian"


async def test_the_kernel_registers_itself_as_a_domain(tmp_path: Path) -> None:
    registry = RegistryServer(
        RegistryConfig(
            server=server_config("registry", tmp_path),
            settings=RegistrySettings(default_lease_ttl_s=30, deregister_after_s=60, history=100),
        )
    )
    async with serving(registry.config.server, registry) as (reg_server, reg_chan):
        registration = DomainRegistration(
            registry_address=reg_server.address,
            domain_id="immutable_log",
            host="127.0.0.1",
            capabilities=["immutable_log"],
        )
        service = ImmutableLogServer(log_config(tmp_path, registration))
        async with serving(service.config.server, service) as (server, _):
            stub = registry_pb2_grpc.RegistryServiceStub(reg_chan)
            for _ in range(200):
                try:
                    found = await stub.GetDomain(
                        registry_pb2.GetDomainRequest(domain_id="immutable_log")
                    )
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            else:
                pytest.fail("the kernel never registered")
            assert found.domain.port == server.port
            assert found.domain.public_key == service.log.public_key
