"""Signed proofs: fetched over gRPC, verified online and offline, tampering detected."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from google.protobuf import json_format

from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common import signing
from services.orchestrator import proof
from tests.orchestrator.conftest import World
from tests.orchestrator.test_workflows import run

Stub = orchestrator_pb2_grpc.OrchestratorServiceStub


async def _proof(world: World, stub: Stub) -> pb.ExecutionProof:
    await world.add_domain("d")
    body = {
        "name": "proved",
        "steps": [
            {"domain_id": "d", "action": "a", "data": {"x": 1}},
            {"domain_id": "d", "action": "b", "depends_on": ["step_1"]},
        ],
    }
    ex = await run(stub, body)
    return (
        await stub.GetExecutionProof(pb.GetExecutionProofRequest(execution_id=ex.execution_id))
    ).proof


async def test_a_proof_verifies_online_and_offline_with_the_public_key_alone(
    world: World, orchestrator: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = await _proof(world, orchestrator)
    assert signed.final_state == "SUCCEEDED"
    assert [(r.step_id, r.kind, r.outcome) for r in signed.records] == [
        ("step_1", "execute", "succeeded"),
        ("step_2", "execute", "succeeded"),
    ]
    assert signed.records[0].input_sha256 == proof.digest({"x": 1})
    verdict = await orchestrator.VerifyProof(pb.VerifyProofRequest(proof=signed))
    assert verdict.valid
    assert verdict.first_invalid_record == -1
    path = tmp_path / "proof.json"
    response = pb.GetExecutionProofResponse(proof=signed)
    path.write_text(json_format.MessageToJson(response, preserving_proto_field_name=True))
    assert proof.main([str(path), "--public-key", signed.public_key.hex()], env={}) == 0
    assert "valid" in capsys.readouterr().out


async def test_a_tampered_record_is_reported_as_the_first_invalid_one(
    world: World, orchestrator: Stub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    signed = await _proof(world, orchestrator)
    tampered = pb.ExecutionProof()
    tampered.CopyFrom(signed)
    tampered.records[1].output_sha256 = "0" * 64
    verdict = await orchestrator.VerifyProof(pb.VerifyProofRequest(proof=tampered))
    assert not verdict.valid
    assert verdict.first_invalid_record == 1
    path = tmp_path / "tampered.json"
    path.write_text(json_format.MessageToJson(tampered))
    assert proof.main([str(path), "--public-key", signed.public_key.hex()], env={}) == 1
    assert "record 1" in capsys.readouterr().out


def _signed_proof(key: signing.SigningKey, outcome: str = "succeeded") -> pb.ExecutionProof:
    records: list[dict[str, object]] = []
    proof.append_record(
        records,
        "ex_1",
        step_id="a",
        domain_id="d",
        action="act",
        kind="execute",
        attempt=1,
        outcome=outcome,
        input_sha256=proof.digest({}),
        output_sha256=proof.digest({"ok": True}),
        error="",
        started_at_us=1,
        finished_at_us=2,
    )
    head = proof.head_hash("ex_1", records)
    return pb.ExecutionProof(
        execution_id="ex_1",
        workflow_id="wf_1",
        final_state="SUCCEEDED",
        records=[pb.ProofRecord(**r) for r in records],  # type: ignore[arg-type]
        head_hash=head,
        signature=key.sign(proof.signing_message("ex_1", "wf_1", "SUCCEEDED", 1, head)),
        public_key=key.public_key,
        key_id=key.key_id,
    )


def _write(path: Path, message: pb.ExecutionProof) -> Path:
    path.write_text(json_format.MessageToJson(pb.GetExecutionProofResponse(proof=message)))
    return path


def test_a_re_signed_forged_proof_is_refused_against_the_orchestrator_key_in_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grace = tmp_path / "grace"
    orchestrator = signing.load_or_create_key(grace / "orchestrator.key")
    genuine = _write(tmp_path / "genuine.json", _signed_proof(orchestrator))
    # A forger re-hashes an altered chain and signs it with a key of their own.
    forger = signing.SigningKey.generate()
    forged = _write(tmp_path / "forged.json", _signed_proof(forger, outcome="failed"))
    assert proof.verify_proof(proof.load_proof(forged.read_text())).valid  # consistent

    assert proof.main([str(forged), "--data-dir", str(grace)], env={}) == 1
    out = capsys.readouterr().out
    assert f"checked against key {orchestrator.key_id} of the orchestrator in" in out
    assert f"signed by key {forger.key_id}" in out
    assert "INVALID" in out

    assert proof.main([str(genuine)], env={"GRACE_DATA_DIR": str(grace)}) == 0
    out = capsys.readouterr().out
    assert f"checked against key {orchestrator.key_id} of the orchestrator" in out
    assert "valid: execution ex_1" in out


def test_an_unpinned_proof_is_refused_when_no_key_is_trusted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    forger = signing.SigningKey.generate()
    forged = _write(tmp_path / "forged.json", _signed_proof(forger))
    assert proof.main([str(forged), "--data-dir", str(tmp_path / "nowhere")], env={}) == 1
    out = capsys.readouterr().out
    assert "no trusted key" in out
    assert "--public-key" in out
    pinned = [str(forged), "--public-key", forger.public_key.hex(), "--data-dir", str(tmp_path)]
    assert proof.main(pinned, env={}) == 0
    assert f"key {forger.key_id} given with --public-key" in capsys.readouterr().out


async def test_online_verification_without_a_key_requires_the_orchestrator_own_key(
    world: World, orchestrator: Stub
) -> None:
    signed = await _proof(world, orchestrator)
    forger = signing.SigningKey.generate()
    forged = _signed_proof(forger, outcome="failed")
    assert proof.verify_proof(forged).valid  # consistent in itself
    verdict = await orchestrator.VerifyProof(pb.VerifyProofRequest(proof=forged))
    assert not verdict.valid
    assert f"signed by key {forger.key_id}" in verdict.reason
    pinned = await orchestrator.VerifyProof(
        pb.VerifyProofRequest(proof=forged, public_key=forger.public_key)
    )
    assert pinned.valid
    assert (await orchestrator.VerifyProof(pb.VerifyProofRequest(proof=signed))).valid


def test_rehashing_a_tampered_record_still_breaks_the_signature() -> None:
    key = signing.SigningKey.generate()
    records: list[dict[str, object]] = []
    for step in ("a", "b"):
        proof.append_record(
            records,
            "ex_1",
            step_id=step,
            domain_id="d",
            action="act",
            kind="execute",
            attempt=1,
            outcome="succeeded",
            input_sha256=proof.digest({}),
            output_sha256=proof.digest({"ok": True}),
            error="",
            started_at_us=1,
            finished_at_us=2,
        )
    head = proof.head_hash("ex_1", records)
    message = pb.ExecutionProof(
        execution_id="ex_1",
        workflow_id="wf_1",
        final_state="SUCCEEDED",
        records=[pb.ProofRecord(**r) for r in records],  # type: ignore[arg-type]
        head_hash=head,
        signature=key.sign(proof.signing_message("ex_1", "wf_1", "SUCCEEDED", 2, head)),
        public_key=key.public_key,
    )
    assert proof.verify_proof(message).valid
    forged = pb.ExecutionProof()
    forged.CopyFrom(message)
    forged.records[1].outcome = "failed"
    forged.records[1].hash = proof.record_hash(
        {name: getattr(forged.records[1], name) for name in proof.RECORD_FIELDS}
    )
    forged.head_hash = forged.records[1].hash
    verdict = proof.verify_proof(forged)
    assert not verdict.valid
    assert "signature" in verdict.reason
    other = signing.SigningKey.generate()
    assert not proof.verify_proof(message, other.public_key).valid


def test_the_key_file_is_created_private_and_reloaded(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "orchestrator.key"
    first = signing.load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signing.load_or_create_key(path).public_key == first.public_key
    os.chmod(path, 0o644)
    with pytest.raises(signing.SigningKeyError, match="chmod 600"):
        signing.load_key(path)


def _generic_hash(record: dict[str, object]) -> str:
    # The hash by the general canonical form alone, without record_hash's shortcut.
    body = {name: record[name] for name in proof.RECORD_FIELDS}
    return hashlib.sha256(proof.canonical_json(body)).hexdigest()


def test_record_hashes_and_digests_match_the_general_canonical_form() -> None:
    records: list[dict[str, object]] = []
    proof.append_record(
        records,
        "ex_1",
        step_id="step_1",
        domain_id="d",
        action="é→a",  # non-ASCII stays unescaped
        kind="execute",
        attempt=1,
        outcome="succeeded",
        input_sha256=proof.digest({}),
        output_sha256=proof.digest({"n": 3.0, "nested": [{"b": 1, "a": "ü"}]}),
        error="",
        started_at_us=1_700_000_000_000_000,
        finished_at_us=1_700_000_000_000_100,
    )
    assert records[0]["hash"] == _generic_hash(records[0])
    # As read back from a proof's JSON: integral numbers may arrive as floats.
    as_read = {**records[0], "attempt": 1.0, "started_at_us": 1.7e15}
    assert proof.record_hash(as_read) == _generic_hash(as_read)
    assert (
        proof.record_hash({**as_read, "attempt": 1, "started_at_us": 1_700_000_000_000_000})
        == (records[0]["hash"])
    )
    assert proof.digest({}) == hashlib.sha256(proof.canonical_json({})).hexdigest()
    assert proof.digest({"n": 3.0}) == hashlib.sha256(b'{"n":3}').hexdigest()
