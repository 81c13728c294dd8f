"""A wheel install (not editable) serves /openapi.json with the proto comments."""

from __future__ import annotations

import asyncio
import json
import sys
import sysconfig
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Run inside the wheel's venv: where the gateway comes from, and what its document says.
PROBE = """
import json, gateway
from gateway.config import GatewayConfig
from gateway.server import build_app
app = build_app(GatewayConfig.from_env({}))
document = json.loads(app.openapi_json())
print(json.dumps({
    "gateway": gateway.__file__,
    "register": document["paths"]["/domains/register"]["post"].get("description", ""),
    "domain_id": document["components"]["schemas"]["grace.registry.v1.Domain"]["properties"]
        ["domain_id"].get("description", ""),
}))
"""


async def run(*command: str | Path, cwd: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        *map(str, command),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=540)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{command}: {text[-3000:]}"
    return text


@pytest.mark.slow
async def test_a_wheel_install_documents_the_api_with_the_proto_comments(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    await run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "-w",
        dist,
        PROJECT_ROOT,
        cwd=tmp_path,
    )
    (wheel,) = dist.glob("grace-*.whl")
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    await run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        python,
        "install",
        "--quiet",
        "--no-deps",
        "--disable-pip-version-check",
        wheel,
        cwd=tmp_path,
    )
    # The dependencies come from this environment's site-packages, added as a plain path
    # (its .pth files, among them the editable install of this checkout, are not run).
    site = Path(
        (
            await run(
                python,
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=tmp_path,
            )
        ).strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    output = await run(python, "-I", "-c", PROBE, cwd=tmp_path)
    probe = json.loads(output.strip().splitlines()[-1])
    assert Path(probe["gateway"]).is_relative_to(venv), probe["gateway"]
    assert "Registers a domain" in probe["register"]
    assert "Unique id" in probe["domain_id"]
