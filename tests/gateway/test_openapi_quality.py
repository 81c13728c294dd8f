"""The OpenAPI document as client generators read it."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from openapi_spec_validator import validate

from gateway import comments
from gateway.config import GatewayConfig
from gateway.server import build_app
from services.common.codegen import PROTO_ROOT
from services.common.pagination import MAX_PAGE_SIZE
from services.common.validation import MAX_ID_LENGTH


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    import json

    app = build_app(GatewayConfig(env={"GRACE_GATEWAY_GOVERNANCE": "off"}))
    parsed: dict[str, Any] = json.loads(app.openapi_json())
    validate(parsed)
    return parsed


def _schema(document: dict[str, Any], name: str) -> dict[str, Any]:
    schema: dict[str, Any] = document["components"]["schemas"][name]
    return schema


def test_operation_ids_are_short_unique_and_qualified_only_on_a_clash(
    document: dict[str, Any],
) -> None:
    ids = [op["operationId"] for ops in document["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))
    assert document["paths"]["/domains/register"]["post"]["operationId"] == "registerDomain"
    assert document["paths"]["/domains/events/stats"]["get"]["operationId"] == "eventBusGetStats"
    assert document["paths"]["/healthz"]["get"]["operationId"] == "healthz"


def test_there_is_a_server_entry(document: dict[str, Any]) -> None:
    assert document["servers"] == [{"url": "/", "description": "This gateway."}]


def test_struct_fields_are_objects_with_free_properties(document: dict[str, Any]) -> None:
    data = _schema(document, "grace.eventbus.v1.PublishRequest")["properties"]["data"]
    assert data["type"] == "object"
    assert data["additionalProperties"] is True


def test_replies_require_every_field_the_gateway_always_writes(document: dict[str, Any]) -> None:
    domain = _schema(document, "grace.registry.v1.Domain")
    assert {"domain_id", "capabilities", "status", "metadata", "revision"} <= set(
        domain["required"]
    )
    # Message fields have presence: absent when unset, so not required.
    assert "metrics" not in domain["required"]
    assert "registered_at" not in domain["required"]
    # Requests require nothing: proto3 reads a missing field as its default.
    assert "required" not in _schema(document, "grace.registry.v1.RegisterDomainRequest")


def test_a_message_used_both_ways_has_an_input_form_without_required(
    document: dict[str, Any],
) -> None:
    step_in = _schema(document, "grace.orchestrator.v1.StepInput")
    step_out = _schema(document, "grace.orchestrator.v1.Step")
    assert "required" not in step_in
    assert "id" in step_out["required"]
    create = _schema(document, "grace.orchestrator.v1.CreateWorkflowRequest")
    assert create["properties"]["steps"]["items"] == {
        "$ref": "#/components/schemas/grace.orchestrator.v1.StepInput"
    }


def test_limits_and_enum_names_are_documented(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in document["paths"]["/domains/list"]["get"]["parameters"]}
    assert parameters["page_size"]["schema"]["maximum"] == MAX_PAGE_SIZE
    assert parameters["page_size"]["schema"]["minimum"] == 0
    assert "DOMAIN_STATUS_HEALTHY" in parameters["status"]["schema"]["enum"]
    register = _schema(document, "grace.registry.v1.RegisterDomainRequest")["properties"]
    assert register["domain_id"]["maxLength"] == MAX_ID_LENGTH
    assert register["domain_id"]["pattern"].startswith("^(")


async def test_the_document_is_built_at_the_first_request_for_it_and_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Building it is a third of the gateway's start-up CPU: start-up must not pay it.
    import gateway.server

    reads: list[object] = []
    real = gateway.server.load_comments

    def counting(roots: Any) -> Any:
        reads.append(roots)
        return real(roots)

    monkeypatch.setattr(gateway.server, "load_comments", counting)
    app = build_app(GatewayConfig(env={"GRACE_GATEWAY_GOVERNANCE": "off"}))
    assert reads == []
    first = await app._builtins["/openapi.json"]()
    second = await app._builtins["/openapi.json"]()
    assert first[0] == 200
    assert first == second
    assert len(reads) == 1
    assert b'"openapi"' in first[1]


def test_grace_contracts_are_documented_from_the_generated_descriptor_set_as_compiled() -> None:
    # The descriptor set `make generate` keeps serves the comments of Grace's own
    # contracts, so the gateway never loads the proto compiler for them; what it gives is
    # what compiling the same files gives.
    compiled = comments._compiled([PROTO_ROOT])
    assert compiled is not None
    expected: dict[str, str] = {}
    for file in compiled.file:
        expected.update(comments._file_comments(file))
    generated = comments._generated([PROTO_ROOT])
    assert generated is not None
    assert comments.load_comments([PROTO_ROOT]) == expected
    assert "grace.registry.v1.RegistryService" in expected


def test_the_gateway_does_not_load_the_proto_compiler_to_serve() -> None:
    code = "import sys, gateway.server; print('grpc_tools._protoc_compiler' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == "False", loaded.stderr
