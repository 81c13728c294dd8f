"""`--otlp` sets the export variables for Guardian and, through it, every component."""

from __future__ import annotations

from pathlib import Path

from services.cli.up import parse_up_flags
from services.guardian.config import GuardianConfig, otlp_environment
from services.guardian.model import ComponentStatus
from services.guardian.process import child_environment
from services.guardian.topology import load_topology


def test_a_bare_host_and_port_means_plain_grpc_like_jaegers_4317() -> None:
    assert otlp_environment("localhost:4317") == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }


def test_an_https_endpoint_keeps_tls() -> None:
    assert otlp_environment("https://collector.example:4317") == {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4317"
    }


def test_grace_up_otlp_puts_the_endpoint_in_guardians_environment(tmp_path: Path) -> None:
    args = parse_up_flags(["--otlp", "localhost:4317"])
    config = GuardianConfig.from_env({"GRACE_DATA_DIR": str(tmp_path)}, args)
    assert config.server.env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
    assert config.server.env["OTEL_EXPORTER_OTLP_INSECURE"] == "true"


def test_without_otlp_no_export_variable_is_invented(tmp_path: Path) -> None:
    args = parse_up_flags([])
    config = GuardianConfig.from_env({"GRACE_DATA_DIR": str(tmp_path)}, args)
    assert not [k for k in config.server.env if k.startswith("OTEL_")]


def test_each_component_reports_under_its_own_name_whatever_guardian_inherited(
    tmp_path: Path,
) -> None:
    spec = load_topology(None).component("registry")
    assert spec is not None
    status = ComponentStatus(spec=spec, host="127.0.0.1", port=8102, log_path=tmp_path / "r.log")
    base = {"OTEL_SERVICE_NAME": "grace", **otlp_environment("localhost:4317")}
    env = child_environment(base, status, {}, tmp_path)
    assert env["OTEL_SERVICE_NAME"] == "registry"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://localhost:4317"
