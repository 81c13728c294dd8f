"""Fuzzing the REST surface from its own OpenAPI document (schemathesis).

Schemathesis runs as a subprocess (its CLI), so its blocking HTTP client does not stall the
event loop that serves the gateway and the registry in this process. Operations whose
upstream does not run here (every service but the registry) would rightly answer 503, so
the run is limited to the registry's operations and the gateway's own; the endless watch
stream is left out. Afterwards the registry must still be SERVING.

Every operation of the document, whatever its upstream, is also sent the inputs random
generation rarely finds: a body nested 1,000 levels, `NaN`, a body over the limit, Unicode
digits for every numeric or enum query parameter, and a 50 kB header. The gateway itself
must refuse each with its 4xx (400, 413, 431) and the error body.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.conftest import Stack


def _schemathesis() -> str | None:
    candidate = Path(sys.executable).with_name("schemathesis")
    return str(candidate) if candidate.exists() else shutil.which("schemathesis")


@pytest.mark.slow
async def test_fuzzing_the_registry_routes_finds_no_server_error(
    stack: Stack, tmp_path: Path
) -> None:
    command = _schemathesis()
    if command is None:
        pytest.skip("schemathesis is not installed")
    process = await asyncio.create_subprocess_exec(
        command,
        "run",
        f"{stack.gateway.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--include-tag",
        "grace.registry.v1.RegistryService",
        "--exclude-path",
        "/domains/watch",
        "--max-examples",
        "25",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--seed",
        "20261121",
        "--no-color",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=tmp_path,  # schemathesis keeps a cache directory in its working directory
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=300)
    report = out.decode(errors="replace")
    assert process.returncode == 0, report[-4000:]
    assert "RegisterDomain" in report or "/domains/register" in report, report[-4000:]
    health = await stack.http.get("/domains/system/health")
    assert health.json()["services"]["registry"]["status"] == "SERVING"
    stats = await stack.http.get("/domains/registry-stats")
    assert stats.status_code == 200


# Hostile inputs for every operation in /openapi.json, whether or not its upstream runs
# here: each must be refused by the gateway itself with its own 4xx, before any upstream.
UNICODE_DIGITS = [
    "\u00b9",
    "\u0663",
    "\uff11",
]  # superscript one, Arabic-Indic three, fullwidth one
NESTED_BODY = '{"a":' * 1000 + "1" + "}" * 1000


def _numeric(schema: dict[str, Any]) -> bool:
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    return "enum" in schema or "integer" in kinds or "number" in kinds


async def _hostile_cases(stack: Stack) -> list[tuple[str, str, dict[str, Any], int]]:
    document = (await stack.http.get("/openapi.json")).json()
    cases: list[tuple[str, str, dict[str, Any], int]] = []
    for path, operations in document["paths"].items():
        url = re.sub(r"\{[^}]*\}", "x", path)
        for method, operation in operations.items():
            method = method.upper()
            cases.append((method, url, {"headers": {"X-Actor": "a" * 50_000}}, 431))
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and _numeric(parameter["schema"]):
                    for digit in UNICODE_DIGITS:
                        cases.append((method, url, {"params": {parameter["name"]: digit}}, 400))
            if "requestBody" in operation:
                json_body = {"content-type": "application/json"}
                cases.append((method, url, {"content": NESTED_BODY, "headers": json_body}, 400))
                nan = '{"a": NaN}'
                cases.append((method, url, {"content": nan, "headers": json_body}, 400))
                too_big = b"{" + b" " * (64 * 1024) + b"}"
                cases.append((method, url, {"content": too_big, "headers": json_body}, 413))
    return cases


async def test_every_operation_refuses_nesting_unicode_digits_and_oversize_with_a_4xx(
    stack: Stack,
) -> None:
    cases = await _hostile_cases(stack)
    assert len(cases) > 300
    wrong = []
    for method, url, kwargs, expected in cases:
        response = await stack.http.request(method, url, **kwargs)
        body = response.json()
        if response.status_code != expected or set(body["error"]) != {
            "code",
            "status",
            "message",
            "details",
        }:
            shown = {k: (v if len(str(v)) < 40 else "...") for k, v in kwargs.items()}
            wrong.append((method, url, shown, response.status_code, response.text[:200]))
    assert wrong == [], wrong[:10]
