"""The deployment files validate against the schemas of the tools that read them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.config import DEFAULT_PORTS
from services.guardian.topology import load_topology

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _manifests() -> list[dict[str, Any]]:
    with (DEPLOY / "kubernetes" / "grace.yaml").open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _compose() -> dict[str, Any]:
    with (DEPLOY / "compose.yaml").open() as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


@pytest.mark.parametrize("doc", _manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_kubernetes_manifest_is_valid_against_the_strict_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_an_invalid_manifest_is_refused_by_the_validator() -> None:
    broken = {**_manifests()[1], "spec": {"replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_every_component_of_the_topology_has_a_workload_with_grpc_or_http_probes() -> None:
    topology = load_topology(groups=["examples"], check_modules=False)
    workloads = {
        d["metadata"]["name"]: d for d in _manifests() if d["kind"] in ("Deployment", "StatefulSet")
    }
    assert set(workloads) == {c.name.replace("_", "-") for c in topology.components}
    for component in topology.components:
        container = workloads[component.name.replace("_", "-")]["spec"]["template"]["spec"][
            "containers"
        ][0]
        assert container["command"][-1] == component.module
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            expected = (
                {"httpGet": {"path": "/health", "port": component.port}}
                if component.health_http_path
                else {"grpc": {"port": component.port}}
            )
            assert {k: container[probe][k] for k in expected} == expected
        assert container["resources"]["requests"]["memory"]


def test_the_orchestrator_and_registry_run_as_several_instances_and_single_writers_as_one() -> None:
    workloads = {d["metadata"]["name"]: d for d in _manifests() if "replicas" in d.get("spec", {})}
    for several in ("orchestrator", "registry"):
        assert workloads[several]["kind"] == "Deployment"
        assert workloads[several]["spec"]["replicas"] >= 2
    assert _compose()["services"]["registry"]["deploy"]["replicas"] >= 2
    assert workloads["immutable-log"]["kind"] == "StatefulSet"
    assert workloads["immutable-log"]["spec"]["replicas"] == 1


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor")
        .joinpath("compose-spec.json")
        .read_text("utf-8")
    )
    compose = _compose()
    jsonschema.validate(compose, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**compose, "services": {"x": {"restart": 3}}}, schema)


def test_the_compose_file_runs_every_component_with_postgresql_nats_and_health_checks() -> None:
    services = _compose()["services"]
    assert {"postgres", "nats"} <= set(services)
    for name, port in DEFAULT_PORTS.items():
        if name == "guardian":
            continue  # Compose restarts and checks the components itself.
        service = services[name.replace("_", "-")]
        assert service["environment"][f"GRACE_{name.upper()}_PORT"] == str(port)
        assert service["healthcheck"]["test"][:4] == [
            "CMD",
            "python",
            "-m",
            "services.guardian.healthcheck",
        ]
