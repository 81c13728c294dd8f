"""A TypeScript client generated from /openapi.json compiles against every seed route.

openapi-typescript turns the gateway's document into types; `seed_routes.ts` calls each
seed route (DESIGN.md section 4) through openapi-fetch with those types, and `tsc --strict`
must accept it. Skipped cleanly without Node.js and npm; the npm packages come from
package-lock.json (`npm ci`) into this directory's node_modules on first use.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from gateway.server import build_app

HERE = Path(__file__).parent
NODE, NPM = shutil.which("node"), shutil.which("npm")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE is None or NPM is None, reason="Node.js/npm not installed"),
]


def _npm_ci() -> None:
    if (HERE / "node_modules" / ".bin" / "tsc").exists():
        return
    assert NPM is not None
    subprocess.run(
        [NPM, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"],
        cwd=HERE,
        check=True,
        timeout=600,
    )


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HERE / "node_modules" / ".bin" / argv[0]), *argv[1:]],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_the_generated_client_compiles_strictly_against_each_seed_route(
    tmp_path: Path,
) -> None:
    _npm_ci()
    app = build_app(GatewayConfig(env={"GRACE_GATEWAY_GOVERNANCE": "off"}))
    document = tmp_path / "openapi.json"
    document.write_text(json.dumps(json.loads(app.openapi_json())))
    generated = HERE / "generated"
    generated.mkdir(exist_ok=True)
    made = _run("openapi-typescript", str(document), "-o", str(generated / "grace-api.d.ts"))
    assert made.returncode == 0, made.stdout + made.stderr
    compiled = _run("tsc", "-p", "tsconfig.json")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr


def test_a_struct_that_is_not_a_free_object_would_fail_the_compilation(tmp_path: Path) -> None:
    """The compilation can fail: with Struct as a closed object, `data: {...}` is refused."""
    _npm_ci()
    app = build_app(GatewayConfig(env={"GRACE_GATEWAY_GOVERNANCE": "off"}))
    text = (
        app.openapi_json()
        .decode()
        .replace('"additionalProperties":true', '"additionalProperties":false')
    )
    document = tmp_path / "openapi.json"
    document.write_text(text)
    generated = HERE / "generated"
    generated.mkdir(exist_ok=True)
    made = _run("openapi-typescript", str(document), "-o", str(generated / "grace-api.d.ts"))
    assert made.returncode == 0, made.stdout + made.stderr
    compiled = _run("tsc", "-p", "tsconfig.json")
    assert compiled.returncode != 0
    source = (HERE / "seed_routes.ts").read_text().splitlines()
    publish_line = next(i for i, line in enumerate(source, 1) if 'prediction: "positive"' in line)
    assert f"seed_routes.ts({publish_line}," in compiled.stdout  # the event's data is refused
