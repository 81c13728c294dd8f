"""The topology: defaults, user overrides, and every validation error before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.guardian.settings import RestartPolicy
from services.guardian.topology import (
    TopologyError,
    build_topology,
    load_topology,
    merge,
)
from tests.guardian.conftest import TEST_COMPONENT


def _component(port: int, **table: Any) -> dict[str, Any]:
    return {"module": TEST_COMPONENT, "port": port, **table}


def test_default_topology_runs_the_registry_in_chunk_zero() -> None:
    topo = load_topology()
    registry = topo.component("registry")
    assert registry is not None
    assert registry.port == 8102
    assert registry.chunk == 0
    assert registry.health_service == "grace.registry.v1.RegistryService"
    assert topo.probe.interval_s == 10
    assert topo.probe.timeout_s == 1
    assert topo.probe.failure_threshold == 3
    assert topo.restart.initial_backoff_s == 1
    assert topo.restart.max_backoff_s == 60
    assert topo.restart.reset_after_s == 600


def test_the_default_topology_boots_the_registry_then_the_rest_by_dependencies() -> None:
    core = load_topology()
    chunks = [[c.name for c in chunk] for chunk in core.chunks()]
    assert chunks[0] == ["registry"]
    assert len(chunks) == 2  # one barrier: everything registers in the registry
    started: set[str] = {"registry"}
    for spec in core.chunks()[1]:
        assert "registry" in spec.depends_on
        assert set(spec.depends_on) <= started, spec.name  # dependencies start first
        started.add(spec.name)
    topo = load_topology(groups=["examples"])
    # The example domains join through the gateway: after the whole core, in a chunk.
    *_, examples = topo.chunks()
    assert {c.group for c in examples} == {"examples"}
    assert len(topo.chunks()) == 3
    by_name = {c.name: c for c in topo.components}
    # What the components need up from their first request on: the log before governance,
    # governance before those it gates, the trust kernel's keys before the bus, shared
    # memory and the bus before those that feed on them. The orchestrator is not among
    # them: the kernels that start workflows wait for it when they fire.
    assert "immutable_log" in by_name["governance"].depends_on
    for name in ("triggers", "tasks", "scheduler", "immune", "orchestrator", "gateway"):
        assert "governance" in by_name[name].depends_on, name
    assert "trust" in by_name["eventbus"].depends_on
    assert not any("orchestrator" in c.depends_on for c in topo.components)
    assert {"eventbus", "memory"} <= set(by_name["librarian"].depends_on)


def test_user_file_overrides_one_key_and_adds_a_component(tmp_path: Path) -> None:
    user = tmp_path / "grace.toml"
    user.write_text(
        "[probe]\ninterval_s = 2\n"
        "[components.registry]\nport = 9102\n"
        f'[components.extra]\nmodule = "{TEST_COMPONENT}"\nport = 9200\nchunk = 1\n'
        'depends_on = ["registry"]\n'
    )
    topo = load_topology(user)
    registry = topo.component("registry")
    assert registry is not None
    assert registry.port == 9102
    assert registry.module == "services.registry"  # kept from the default
    assert topo.probe.interval_s == 2
    assert topo.probe.failure_threshold == 3
    names = [c.name for c in topo.components]
    assert set(names) == {c.name for c in load_topology(None).components} | {"extra"}
    chunks = [c.chunk for c in topo.components]
    assert chunks == sorted(chunks)  # boot order follows the chunks
    assert topo.component("extra").chunk == 1  # type: ignore[union-attr]


def test_a_component_can_be_disabled_by_the_user_file(tmp_path: Path) -> None:
    user = tmp_path / "grace.toml"
    user.write_text("[components.gateway]\nenabled = false\n")
    names = [c.name for c in load_topology(user).components]
    assert "gateway" not in names
    assert "registry" in names


def test_groups_other_than_core_run_only_when_enabled() -> None:
    data = {
        "components": {
            "base": _component(9001),
            "demo": _component(9002, group="examples", depends_on=["base"], chunk=1),
        }
    }
    assert [c.name for c in build_topology(data).components] == ["base"]
    with_examples = build_topology(data, groups=["examples"])
    assert [c.name for c in with_examples.components] == ["base", "demo"]


def test_chunks_are_ordered_and_dependencies_come_first_inside_a_chunk() -> None:
    data = {
        "components": {
            "late": _component(9003, chunk=2),
            "b": _component(9002, chunk=1, depends_on=["a"]),
            "a": _component(9001, chunk=1),
            "first": _component(9000, chunk=0.5),
        }
    }
    topo = build_topology(data)
    assert [c.name for c in topo.components] == ["first", "a", "b", "late"]
    assert [[c.name for c in chunk] for chunk in topo.chunks()] == [["first"], ["a", "b"], ["late"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": {}}, "unknown key 'bogus'"),
        ({"probe": {"interval": 3}}, "[probe] unknown key 'interval'"),
        ({"probe": {"interval_s": "fast"}}, "[probe] interval_s must be a number"),
        ({"probe": {"interval_s": 0}}, "[probe] interval_s must be > 0"),
        ({"restart": {"budget": True}}, "[restart] budget must be an integer"),
        ({"components": {"x": {"port": 9000, "modul": "m"}}}, "unknown key 'modul'"),
        ({"components": {"x": {"module": TEST_COMPONENT}}}, "'port' is required"),
        ({"components": {"x": _component(70000)}}, "port 70000 must be between"),
        ({"components": {"Bad-Name": _component(9000)}}, "names are 1-63 lower-case"),
        (
            {"components": {"x": {"port": 9000, "module": "a", "command": ["b"]}}},
            "exactly one of 'module' or 'command'",
        ),
        (
            {"components": {"a": _component(9000), "b": _component(9000)}},
            "component 'b' uses port 9000, already used by 'a'",
        ),
        (
            {"components": {"a": _component(9000, depends_on=["ghost"])}},
            "depends on 'ghost', which is not in the topology",
        ),
        (
            {
                "components": {
                    "a": _component(9000, depends_on=["b"]),
                    "b": _component(9001, depends_on=["c"]),
                    "c": _component(9002, depends_on=["a"]),
                }
            },
            "dependency cycle: a -> b -> c -> a",
        ),
        (
            {
                "components": {
                    "a": _component(9000, depends_on=["b"]),
                    "b": _component(9001, chunk=1),
                }
            },
            "which boots later (chunk 1)",
        ),
        (
            {"components": {"a": {"module": "services.does_not_exist", "port": 9000}}},
            "module 'services.does_not_exist' cannot be found",
        ),
        (
            {"components": {"a": {"command": ["no-such-program-grace"], "port": 9000}}},
            "command 'no-such-program-grace' is not on PATH",
        ),
    ],
)
def test_invalid_topologies_are_rejected_with_a_message_naming_the_problem(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(TopologyError) as caught:
        build_topology(data)
    assert message in str(caught.value)


def test_a_component_on_guardians_own_port_is_rejected() -> None:
    with pytest.raises(TopologyError, match="already used by guardian"):
        build_topology({"components": {"a": _component(8104)}}, reserved_ports={8104: "guardian"})


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    user = tmp_path / "grace.toml"
    user.write_text("[components.registry\n")
    with pytest.raises(TopologyError, match=r"grace\.toml: not valid TOML"):
        load_topology(user)


def test_merge_keeps_default_keys_the_user_does_not_mention() -> None:
    merged = merge(
        {"components": {"a": {"port": 1, "module": "m"}}, "probe": {"interval_s": 10}},
        {"components": {"a": {"port": 2}}, "probe": {"timeout_s": 3}},
    )
    assert merged == {
        "components": {"a": {"port": 2, "module": "m"}},
        "probe": {"interval_s": 10, "timeout_s": 3},
    }


def test_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    policy = RestartPolicy()
    assert [policy.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_a_host_runs_part_of_the_topology_and_points_at_the_shared_components(
    tmp_path: Path,
) -> None:
    # A worker host: the orchestrator and the gateway here, everything else elsewhere.
    elsewhere = [
        "registry", "trust", "immutable_log", "governance", "eventbus",
        "memory", "immune", "scheduler", "librarian", "tasks", "learning", "triggers",
    ]  # fmt: skip
    text = "".join(f"[components.{name}]\nenabled = false\n" for name in elsewhere)
    text += (
        "[components.orchestrator]\ndepends_on = []\n"
        'env = { GRACE_REGISTRY_ADDR = "core-1:8102" }\n'
        "[components.gateway]\ndepends_on = []\n"
        'env = { GRACE_REGISTRY_ADDR = "core-1:8102" }\n'
    )
    user_file = tmp_path / "grace.toml"
    user_file.write_text(text)
    topology = load_topology(user_file, check_modules=False)
    assert [c.name for c in topology.components] == ["orchestrator", "gateway"]
    assert all(c.env["GRACE_REGISTRY_ADDR"] == "core-1:8102" for c in topology.components)
    # Without dropping the dependency, a disabled component is an error that says so.
    user_file.write_text(
        text.replace("[components.gateway]\ndepends_on = []\n", "[components.gateway]\n")
    )
    with pytest.raises(TopologyError, match="'gateway' depends on 'registry', which is disabled"):
        load_topology(user_file, check_modules=False)
