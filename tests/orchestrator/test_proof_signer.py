"""A forged proof, re-hashed and re-signed, passes its own consistency check but not the
check against the Grace CA."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from google.protobuf import json_format

from grace.orchestrator.v1 import orchestrator_pb2 as pb
from grace.orchestrator.v1 import orchestrator_pb2_grpc
from services.common import signing
from services.common.config import SecurityConfig
from services.common.pki import CertificateAuthority, Identity, attest, leaf_files
from services.orchestrator import proof
from services.orchestrator.server import OrchestratorServer
from tests.orchestrator.conftest import ListPublisher, World, orchestrator_config
from tests.orchestrator.test_workflows import run
from tests.support import serving, session_pki


async def genuine_proof(world: World, tmp_path: Path, bind: bool = False) -> pb.ExecutionProof:
    """A proof served by an orchestrator holding its own Grace certificate (binding its
    signing key, as Guardian issues it, when `bind`)."""
    pki = session_pki()
    files = leaf_files(tmp_path / "pki", Identity("component", "orchestrator"))
    config = orchestrator_config(tmp_path / "orch", world.registry_address)
    bound = signing.load_or_create_key(config.key_file).public_key if bind else None
    pki.ca.issue_files(Identity("component", "orchestrator"), files, signing_key=bound)
    security = SecurityConfig(pki.ca_file, files.cert, files.key, pki.tokens_file)
    config = replace(config, server=replace(config.server, security=security))
    service = OrchestratorServer(config, publisher=ListPublisher(world.events))
    await world.add_domain("d")
    async with serving(config.server, service) as (_, chan):
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(chan)
        ex = await run(stub, {"name": "p", "steps": [{"domain_id": "d", "action": "a"}]})
        got = await stub.GetExecutionProof(
            pb.GetExecutionProofRequest(execution_id=ex.execution_id)
        )
    return got.proof


def forge(original: pb.ExecutionProof, key: signing.SigningKey) -> pb.ExecutionProof:
    """Rewrites the outcome, re-hashes the chain and re-signs it with `key`."""
    forged = pb.ExecutionProof()
    forged.CopyFrom(original)
    records: list[dict[str, object]] = []
    for record in original.records:
        fields = {name: getattr(record, name) for name in proof.RECORD_FIELDS}
        fields.pop("index")
        fields.pop("prev_hash")
        fields["output_sha256"] = proof.digest({"forged": True})
        fields.pop("execution_id")
        proof.append_record(records, original.execution_id, **fields)
    del forged.records[:]
    forged.records.extend(pb.ProofRecord(**r) for r in records)  # type: ignore[arg-type]
    forged.head_hash = proof.head_hash(original.execution_id, records)
    forged.public_key = key.public_key
    forged.key_id = signing.key_id(key.public_key)
    forged.signature = key.sign(
        proof.signing_message(
            forged.execution_id,
            forged.workflow_id,
            forged.final_state,
            len(records),
            forged.head_hash,
        )
    )
    return forged


def check(tmp_path: Path, item: pb.ExecutionProof, *extra: str) -> int:
    path = tmp_path / "proof.json"
    path.write_text(json_format.MessageToJson(pb.GetExecutionProofResponse(proof=item)))
    return proof.main([str(path), *extra])


async def test_a_re_signed_forged_proof_fails_against_the_grace_ca(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(session_pki().ca_file)
    genuine = await genuine_proof(world, tmp_path)
    assert genuine.signer_certificate_pem.startswith("-----BEGIN CERTIFICATE-----")
    assert check(tmp_path, genuine, "--ca", ca) == 0
    assert "certified by the Grace CA" in capsys.readouterr().out

    forged = forge(genuine, signing.SigningKey.generate())
    # Consistent in itself, which fooled the old check; with no trusted key or CA it is
    # refused now.
    assert check(tmp_path, forged) == 1
    capsys.readouterr()
    assert check(tmp_path, forged, "--ca", ca) == 1
    assert "did not sign this proof" in capsys.readouterr().out

    # Re-attested with a certificate from another CA, or from a Grace domain: refused.
    stranger = CertificateAuthority.load_or_create(tmp_path / "stranger")
    for issuer, identity in (
        (stranger, Identity("component", "orchestrator")),
        (session_pki().ca, Identity("domain", "evil")),
    ):
        files = leaf_files(tmp_path / "forger", identity)
        issuer.issue_files(identity, files)
        forged.signer_certificate_pem = files.cert.read_text()
        forged.certificate_signature = attest(
            files.cert.read_bytes(), files.key.read_bytes(), proof.attestation_message(forged)
        )
        assert check(tmp_path, forged, "--ca", ca) == 1
        out = capsys.readouterr().out
        assert (
            "not issued by the Grace CA" in out or "names spiffe://grace.local/domain/evil" in out
        )


async def test_a_proof_signed_by_another_key_than_the_certificate_binds_is_refused(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(session_pki().ca_file)
    genuine = await genuine_proof(world, tmp_path, bind=True)
    assert check(tmp_path, genuine, "--ca", ca) == 0
    capsys.readouterr()
    # Re-signed with another Ed25519 key and re-attested with the orchestrator's own TLS
    # key (a stolen certificate key): the certificate binds the genuine signing key.
    forged = forge(genuine, signing.SigningKey.generate())
    tls = leaf_files(tmp_path / "pki", Identity("component", "orchestrator"))
    forged.certificate_signature = attest(
        tls.cert.read_bytes(), tls.key.read_bytes(), proof.attestation_message(forged)
    )
    assert check(tmp_path, forged, "--ca", ca) == 1
    assert f"binds signing key {genuine.key_id}" in capsys.readouterr().out
