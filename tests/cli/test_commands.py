"""`grace` commands against real servers, run as a subprocess and read as a user reads them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.channels import channel
from tests.cli.conftest import PROJECT_ROOT, Platform, grace
from tests.support import free_port


async def _register(platform: Platform, domain_id: str, capabilities: list[str]) -> None:
    async with channel(platform.world.registry_address) as chan:
        await registry_pb2_grpc.RegistryServiceStub(chan).RegisterDomain(
            registry_pb2.RegisterDomainRequest(
                domain_id=domain_id, host="127.0.0.1", port=9999, capabilities=capabilities
            )
        )


async def test_domains_list_prints_json_when_piped_and_a_table_or_yaml_on_request(
    platform: Platform,
) -> None:
    await _register(platform, "ai_domain", ["chat", "ml"])
    await _register(platform, "data_domain", ["ingest"])

    piped = await platform.grace("domains", "list")
    assert piped.code == 0, piped.stderr
    listed = json.loads(piped.stdout)
    assert [d["domain_id"] for d in listed] == ["ai_domain", "data_domain"]
    assert listed[0]["capabilities"] == ["chat", "ml"]
    assert listed[0]["status"] == "DOMAIN_STATUS_HEALTHY"

    table = await platform.grace("domains", "list", "-o", "table")
    assert table.code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["DOMAIN", "STATUS", "ADDRESS"]
    row = next(line for line in lines if line.startswith("ai_domain"))
    assert row.split()[1:3] == ["HEALTHY", "127.0.0.1:9999"]
    assert "\x1b[" not in table.stdout  # no colours when not on a terminal

    as_yaml = await platform.grace("domains", "list", "--capability", "ml", "-o", "yaml")
    assert [d["domain_id"] for d in yaml.safe_load(as_yaml.stdout)] == ["ai_domain"]


async def test_domains_get_shows_one_domain_and_exits_3_for_an_unknown_one(
    platform: Platform,
) -> None:
    await _register(platform, "ai_domain", ["chat"])
    found = await platform.grace("domains", "get", "ai_domain", "-o", "table")
    assert found.code == 0, found.stderr
    assert "ADDRESS" in found.stdout
    assert "127.0.0.1:9999" in found.stdout

    missing = await platform.grace("domains", "get", "nobody")
    assert missing.code == 3
    assert "NOT_FOUND" in missing.stderr
    assert missing.stdout == ""


async def test_domains_watch_starts_with_a_snapshot_and_stops_after_count(
    platform: Platform,
) -> None:
    await _register(platform, "ai_domain", ["chat"])
    watched = await platform.grace("domains", "watch", "--count", "1")
    assert watched.code == 0, watched.stderr
    (change,) = [json.loads(line) for line in watched.stdout.splitlines()]
    assert change["kind"] == "CHANGE_KIND_SNAPSHOT"
    assert change["domain"]["domain_id"] == "ai_domain"


async def test_an_unreachable_service_exits_2_and_names_its_address() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = await grace("domains", "list", env={"GRACE_REGISTRY_ADDR": address})
    assert result.code == 2
    assert f"no registry answers on {address}" in result.stderr


async def test_bad_usage_exits_2_with_clicks_message(platform: Platform) -> None:
    result = await platform.grace("domains", "list", "-o", "xml")
    assert result.code == 2
    assert "'xml' is not one of 'table', 'json', 'yaml'" in result.stderr


async def test_events_publish_then_history_and_tail_find_the_event(platform: Platform) -> None:
    published = await platform.grace(
        "events", "publish", "ml.prediction", "--source", "ai_domain", "-d", '{"p": "positive"}'
    )
    assert published.code == 0, published.stderr
    sequence = json.loads(published.stdout)["sequence"]
    assert int(sequence) >= 1

    text = await platform.grace(
        "events", "publish", "ml.trained", "--source", "ai_domain", "-o", "table"
    )
    assert text.stdout.startswith("published ")
    assert "at sequence" in text.stdout

    history = await platform.grace("events", "history", "--pattern", "ml.*")
    assert history.code == 0, history.stderr
    events = json.loads(history.stdout)
    assert [e["event_type"] for e in events] == ["ml.prediction", "ml.trained"]
    assert events[0]["data"] == {"p": "positive"}

    tail = await platform.grace("events", "tail", "ml.prediction", "--all", "--count", "1")
    assert tail.code == 0, tail.stderr
    (line,) = tail.stdout.splitlines()
    assert json.loads(line)["sequence"] == sequence

    resumed = await platform.grace("events", "tail", "--after", str(sequence), "--count", "1")
    assert json.loads(resumed.stdout)["event_type"] == "ml.trained"


async def test_events_publish_rejects_data_that_is_not_a_json_object(platform: Platform) -> None:
    result = await platform.grace("events", "publish", "x.y", "-d", "[1, 2]")
    assert result.code == 2
    assert "must be a JSON object" in result.stderr


async def test_events_dead_letters_lists_nothing_on_a_fresh_bus(platform: Platform) -> None:
    result = await platform.grace("events", "dead-letters")
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == []


WORKFLOW = """
name: pipeline
description: two steps, the second after the first
steps:
  - id: fetch
    domain_id: data_domain
    action: ingest
    data: {document: hello}
  - id: think
    domain_id: ai_domain
    action: analyze
    depends_on: [fetch]
"""


async def test_a_workflow_created_from_yaml_runs_with_progress_and_leaves_a_valid_proof(
    platform: Platform, tmp_path: Path
) -> None:
    await platform.world.add_domain("data_domain")
    await platform.world.add_domain("ai_domain")
    definition = tmp_path / "pipeline.yaml"
    definition.write_text(WORKFLOW)

    created = await platform.grace("workflow", "create", str(definition))
    assert created.code == 0, created.stderr
    workflow_id = json.loads(created.stdout)["workflow_id"]

    ran = await platform.grace("workflow", "run", "pipeline", "-i", '{"user": "ada"}')
    assert ran.code == 0, ran.stderr
    execution = json.loads(ran.stdout)
    assert execution["workflow_id"] == workflow_id
    assert execution["state"] == "EXECUTION_STATE_SUCCEEDED"
    # Progress: a line per step as it completes, on stderr, in dependency order.
    progress = ran.stderr.splitlines()
    done = [line.split()[1] for line in progress if "SUCCEEDED" in line and "✓" in line]
    assert done == ["fetch", "think"]
    execution_id = execution["execution_id"]

    shown = await platform.grace("workflow", "show", execution_id, "-o", "table")
    assert shown.code == 0, shown.stderr
    steps = {line.split()[0]: line.split()[1] for line in shown.stdout.splitlines()[-3:]}
    assert steps == {"STEP": "STATE", "fetch": "SUCCEEDED", "think": "SUCCEEDED"}

    listed = await platform.grace("workflow", "executions", "--state", "succeeded")
    assert [e["execution_id"] for e in json.loads(listed.stdout)] == [execution_id]
    workflows = await platform.grace("workflow", "list")
    assert [w["name"] for w in json.loads(workflows.stdout)] == ["pipeline"]

    proof = await platform.grace("workflow", "proof", execution_id, "--verify")
    assert proof.code == 0, proof.stderr
    saved = tmp_path / "proof.json"
    saved.write_text(proof.stdout)
    # Offline, trusting the key of the orchestrator that signed it (in its data dir).
    verified = await platform.grace(
        "verify-proof", str(saved), "--data-dir", str(tmp_path / "orch")
    )
    assert verified.code == 0, verified.stdout + verified.stderr
    assert f"\nvalid: execution {execution_id}" in verified.stdout


async def test_a_failing_workflow_run_exits_1_and_shows_the_failed_step(
    platform: Platform, tmp_path: Path
) -> None:
    data = await platform.world.add_domain("data_domain")
    await platform.world.add_domain("ai_domain")

    async def broken(_request: object) -> dict[str, object]:
        raise ValueError("the model is on fire")

    data.actions["ingest"] = broken
    definition = tmp_path / "pipeline.json"
    definition.write_text(json.dumps(yaml.safe_load(WORKFLOW)))
    created = await platform.grace("workflow", "create", str(definition))
    workflow_id = json.loads(created.stdout)["workflow_id"]

    ran = await platform.grace("workflow", "run", workflow_id, "-o", "table")
    assert ran.code == 1, ran.stdout + ran.stderr
    assert "✗ fetch FAILED" in ran.stderr
    assert "ROLLED_BACK" in ran.stdout


async def test_workflow_commands_on_unknown_ids_exit_3(platform: Platform) -> None:
    assert (await platform.grace("workflow", "run", "no-such-workflow")).code == 3
    assert (await platform.grace("workflow", "show", "ex_000000000000000000000000")).code == 3


async def test_memory_contribute_query_and_show(platform: Platform) -> None:
    contributed = await platform.grace(
        "memory",
        "contribute",
        "--domain",
        "ai_domain",
        "--type",
        "optimization",
        "-c",
        '{"technique": "caching", "improvement": "2x faster"}',
        "--tag",
        "perf",
    )
    assert contributed.code == 0, contributed.stderr
    contribution_id = json.loads(contributed.stdout)["contribution_id"]

    found = await platform.grace("memory", "query", "caching")
    assert found.code == 0, found.stderr
    results = json.loads(found.stdout)
    assert [r["contribution"]["contribution_id"] for r in results] == [contribution_id]

    shown = await platform.grace("memory", "show", contribution_id, "-o", "table")
    assert shown.code == 0, shown.stderr
    assert "caching" in shown.stdout
    assert "optimization" in shown.stdout


async def test_logs_prints_the_last_lines_and_names_the_logs_it_has(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "registry.log").write_text("".join(f"line {i}\n" for i in range(100)))
    (logs / "eventbus.log").write_text("")

    tail = await grace("logs", "registry", "-n", "3", "--data-dir", str(tmp_path))
    assert tail.code == 0, tail.stderr
    assert tail.stdout == "line 97\nline 98\nline 99\n"

    missing = await grace("logs", "memory", env={"GRACE_DATA_DIR": str(tmp_path)})
    assert missing.code == 3
    assert "logs there: eventbus, registry" in missing.stderr


async def test_down_without_a_running_grace_up_exits_3(tmp_path: Path) -> None:
    result = await grace("down", "--data-dir", str(tmp_path))
    assert result.code == 3
    assert "no `grace up` is running" in result.stderr


async def test_version_and_completion_scripts() -> None:
    version = await grace("--version")
    assert version.code == 0
    assert version.stdout.startswith("grace, version ")
    bash = await grace("completion", "bash")
    assert bash.code == 0
    assert "_GRACE_COMPLETE=bash_complete" in bash.stdout
    assert (await grace("completion", "powershell")).code == 2


async def test_logs_follow_prints_lines_as_they_are_written_until_ctrl_c(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "registry.log"
    log.write_text("old line\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "logs",
        "registry",
        "-f",
        "--data-dir",
        str(tmp_path),
        cwd=PROJECT_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"old line\n"
        with log.open("a") as handle:
            handle.write("new line\n")
        assert await asyncio.wait_for(proc.stdout.readline(), 30) == b"new line\n"
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_down_never_signals_a_process_that_merely_reuses_a_stale_pid(
    tmp_path: Path,
) -> None:
    # A grace up killed with SIGKILL leaves its file; the pid now belongs to this test.
    (tmp_path / "grace-up.json").write_text(json.dumps({"pid": os.getpid(), "addresses": {}}))
    result = await grace("down", "--data-dir", str(tmp_path))
    assert result.code == 3
    assert not (tmp_path / "grace-up.json").exists()
