"""The README's recipe for verifying the log by hand works as written, through the gateway."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from gateway.server import Gateway, build_app
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from services.kernels.immutable_log.server import ImmutableLogServer
from tests.gateway.conftest import gateway_config
from tests.kernels.immutable_log.test_servicer import log_config, new_entry
from tests.support import serving, session_pki

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq"
)

README = Path(__file__).parents[3] / "README.md"
LATER = "# ... later"


def readme_recipe() -> tuple[str, str]:
    """The README's bash block that ends with `grace log verify-consistency`, split where
    it says "later"."""
    blocks = README.read_text().split("```bash\n")[1:]
    recipe = next(b.split("```")[0] for b in blocks if "log verify-consistency" in b)
    now, later = recipe.split(LATER)
    return now, LATER + later


async def run(script: str, cwd: Path, base_url: str) -> str:
    grace = str(Path(sys.executable).with_name("grace"))
    script = script.replace("localhost:8000", base_url).replace(".venv/bin/grace", grace)
    # The test gateway serves plain HTTP (its upstreams are the secure test servers).
    script = script.replace(f"https://{base_url}", f"http://{base_url}")
    # The README defines gcurl in the tour's first block: curl with the CA and the token.
    pki = session_pki()
    gcurl = (
        f'gcurl() {{ curl --cacert {pki.ca_file} -H "authorization: Bearer {pki.admin_token}" '
        '"$@"; }\n'
    )
    script = gcurl + script
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    text = out.decode()
    assert process.returncode == 0, text
    return text


async def test_the_readme_log_verification_recipe_works_as_written(tmp_path: Path) -> None:
    now, later = readme_recipe()
    service = ImmutableLogServer(log_config(tmp_path / "log"))
    async with serving(service.config.server, service) as (server, chan):
        stub = pb_grpc.ImmutableLogServiceStub(chan)
        await stub.AppendBatch(pb.AppendBatchRequest(entries=[new_entry(n) for n in range(5)]))
        config = gateway_config({"GRACE_IMMUTABLE_LOG_ADDR": server.address})
        async with Gateway(config, build_app(config)) as gateway:
            base_url = f"127.0.0.1:{gateway.port}"
            work = tmp_path / "work"
            work.mkdir()
            first = await run(now, work, base_url)
            assert "OK: entry 3 is in the log" in first
            await stub.AppendBatch(
                pb.AppendBatchRequest(entries=[new_entry(n) for n in range(5, 17)])
            )
            second = await run(later, work, base_url)
    assert "of size 5 is a prefix of size 17" in second


async def test_the_recipe_also_holds_when_the_log_has_not_grown(tmp_path: Path) -> None:
    now, later = readme_recipe()
    service = ImmutableLogServer(log_config(tmp_path / "log"))
    async with serving(service.config.server, service) as (server, chan):
        await pb_grpc.ImmutableLogServiceStub(chan).AppendBatch(
            pb.AppendBatchRequest(entries=[new_entry(n) for n in range(4)])
        )
        config = gateway_config({"GRACE_IMMUTABLE_LOG_ADDR": server.address})
        async with Gateway(config, build_app(config)) as gateway:
            work = tmp_path / "work"
            work.mkdir()
            output = await run(now + later, work, f"127.0.0.1:{gateway.port}")
    assert "of size 4 is a prefix of size 4" in output
