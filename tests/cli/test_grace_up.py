"""The CLI against a whole `grace up --with-examples`, found through its data directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cli.conftest import Result, grace
from tests.grace_up import running_grace

SEED_WORKFLOW = {
    "name": "process_document",
    "steps": [
        {
            "domain_id": "data_domain",
            "action": "ingest",
            "data": {"document": "Restarting fixed the port timeout. Great result."},
        },
        {"domain_id": "ai_domain", "action": "analyze", "depends_on": ["step_1"]},
        {"domain_id": "memory_domain", "action": "store", "depends_on": ["step_2"]},
    ],
}


async def grace_up_cli(*args: str, env: dict[str, str]) -> Result:
    """The CLI as a user runs it against this grace up: its credential from the data dir."""
    return await grace(*args, env=env, test_pki=False)


@pytest.mark.slow
async def test_the_cli_operates_a_running_grace_and_grace_down_stops_it(tmp_path: Path) -> None:
    async with running_grace(tmp_path) as system:
        # Only the data directory: every address comes from grace up's grace-up.json.
        env = {"GRACE_DATA_DIR": str(system.data_dir)}

        status = await grace_up_cli("status", env=env)
        assert status.code == 0, status.stderr
        assert json.loads(status.stdout)["system"]["status"] == "SYSTEM_STATUS_SERVING"

        domains = await grace_up_cli("domains", "list", env=env)
        ids = {d["domain_id"] for d in json.loads(domains.stdout)}
        assert {"ai_domain", "data_domain", "memory_domain"} <= ids

        definition = tmp_path / "document.json"
        definition.write_text(json.dumps(SEED_WORKFLOW))
        assert (await grace_up_cli("workflow", "create", str(definition), env=env)).code == 0
        ran = await grace_up_cli("workflow", "run", "process_document", env=env)
        assert ran.code == 0, ran.stdout + ran.stderr
        assert json.loads(ran.stdout)["state"] == "EXECUTION_STATE_SUCCEEDED"
        assert [line.split()[1] for line in ran.stderr.splitlines() if "✓" in line] == [
            "step_1",
            "step_2",
            "step_3",
        ]

        approvals = await grace_up_cli("approvals", "list", "--status", "all", env=env)
        assert approvals.code == 0, approvals.stderr
        assert isinstance(json.loads(approvals.stdout), list)
        unknown = await grace_up_cli("approvals", "approve", "ap_unknown", env=env)
        assert unknown.code in (3, 4), unknown.stderr
        mode = await grace_up_cli("policies", "mode", env=env)
        assert json.loads(mode.stdout)["mode"] in ("MODE_LOG_ONLY", "MODE_ENFORCE")
        assert (await grace_up_cli("policies", "list", env=env)).code == 0

        checkpoint = await grace_up_cli("log", "checkpoint", env=env)
        assert checkpoint.code == 0, checkpoint.stderr
        assert int(json.loads(checkpoint.stdout)["tree_size"]) >= 1
        verified = await grace_up_cli("log", "verify", "-o", "table", env=env)
        assert verified.code == 0, verified.stderr
        assert verified.stdout.startswith("OK: ")

        logs = await grace_up_cli("logs", "registry", "-n", "5", env=env)
        assert logs.code == 0
        assert len(logs.stdout.splitlines()) == 5

        down = await grace_up_cli("down", "-o", "table", env=env)
        assert down.code == 0, down.stderr
        assert down.stdout.startswith("grace up (pid ")
        assert "stopping grace up" in down.stderr
        assert not (system.data_dir / "grace-up.json").exists()
        after = await grace_up_cli("status", env=env)
        assert after.code == 2
