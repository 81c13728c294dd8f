"""The topology Guardian supervises: components, how to start them, and timing settings.

A topology is TOML. Guardian ships a default (`default.toml` in this package) and a user's
`grace.toml` overrides it key by key: a user table `[components.registry]` with only
`port = 9102` moves the registry and keeps everything else; a new table adds a component;
`enabled = false` removes one. The merged result is validated before anything starts:
unknown keys, wrong types, duplicate ports, unknown or later-chunk dependencies,
dependency cycles and modules that cannot be imported are all errors that name the
component and the key.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from services.guardian.settings import (
    BootSettings,
    ProbeSettings,
    RegistrationSettings,
    RestartPolicy,
)

CORE_GROUP = "core"
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")


class TopologyError(ValueError):
    """The topology is invalid; the message names the component and the key."""


@dataclass(frozen=True)
class ComponentSpec:
    """One component of the topology.

    Attributes:
        name: Component name; names its env variables (`GRACE_<NAME>_PORT`).
        port: Port it serves on.
        module: Python module run as `python -m module` (or None with `command`).
        command: Command line run as is (or empty with `module`).
        args: Extra arguments after the module or command.
        chunk: Boot chunk; lower chunks boot first.
        depends_on: Components that must be SERVING before this one starts.
        can_fail: The system may run without it.
        health_service: grpc.health.v1 service name to probe ("" = whole server).
        health_http_path: When set, probe `GET <path>` over HTTP instead (2xx = SERVING),
            for components without gRPC health.
        env: Extra environment variables.
        group: "core" always runs; other groups run when enabled.
        capabilities: Capabilities registered in the registry.
        register: Register it in the registry.
        identity: "component" or "domain": the kind of certificate Guardian issues it
            (`spiffe://grace.local/<identity>/<name>`) in secure mode.
        enabled: False removes it from the topology.
        startup_timeout_s: Overrides the boot setting for this component.
    """

    name: str
    port: int
    module: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    chunk: float = 0.0
    depends_on: tuple[str, ...] = ()
    can_fail: bool = False
    health_service: str = ""
    health_http_path: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    group: str = CORE_GROUP
    capabilities: tuple[str, ...] = ()
    register: bool = True
    identity: str = "component"
    enabled: bool = True
    startup_timeout_s: float | None = None

    def argv(self) -> list[str]:
        """The command line that starts the component."""
        if self.module:
            return [sys.executable, "-m", self.module, *self.args]
        return [*self.command, *self.args]


@dataclass(frozen=True)
class Topology:
    """A validated topology: enabled components in boot order, and the settings."""

    components: tuple[ComponentSpec, ...]
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    boot: BootSettings = field(default_factory=BootSettings)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)

    def component(self, name: str) -> ComponentSpec | None:
        """The component called `name`, if any."""
        return next((c for c in self.components if c.name == name), None)

    def chunks(self) -> list[list[ComponentSpec]]:
        """Components grouped by chunk, chunks ascending, boot order kept inside each."""
        grouped: dict[float, list[ComponentSpec]] = {}
        for spec in self.components:
            grouped.setdefault(spec.chunk, []).append(spec)
        return [grouped[key] for key in sorted(grouped)]


# Key -> (type checked, human-readable type) for every table.
_SECTION_KEYS: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "probe": {
        "interval_s": ((int, float), "a number"),
        "timeout_s": ((int, float), "a number"),
        "failure_threshold": (int, "an integer"),
        "watch": (bool, "true or false"),
        "startup_poll_s": ((int, float), "a number"),
    },
    "restart": {
        "initial_backoff_s": ((int, float), "a number"),
        "multiplier": ((int, float), "a number"),
        "max_backoff_s": ((int, float), "a number"),
        "reset_after_s": ((int, float), "a number"),
        "budget": (int, "an integer"),
    },
    "boot": {
        "startup_timeout_s": ((int, float), "a number"),
        "stop_timeout_s": ((int, float), "a number"),
        "fork_server": (bool, "true or false"),
    },
    "registration": {
        "enabled": (bool, "true or false"),
        "lease_ttl_s": ((int, float), "a number"),
        "retry_max_s": ((int, float), "a number"),
    },
}
_COMPONENT_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "module": (str, "a string"),
    "command": ((str, list), "a string or a list of strings"),
    "args": (list, "a list of strings"),
    "port": (int, "an integer"),
    "chunk": ((int, float), "a number"),
    "depends_on": (list, "a list of component names"),
    "can_fail": (bool, "true or false"),
    "health_service": (str, "a string"),
    "health_http_path": (str, "a path starting with '/'"),
    "env": (dict, "a table of strings"),
    "group": (str, "a string"),
    "capabilities": (list, "a list of strings"),
    "register": (bool, "true or false"),
    "identity": (str, "component or domain"),
    "enabled": (bool, "true or false"),
    "startup_timeout_s": ((int, float), "a number"),
}
_TOP_KEYS = {*_SECTION_KEYS, "components"}


def default_topology_text() -> str:
    """The TOML of the built-in topology."""
    return resources.files("services.guardian").joinpath("default.toml").read_text("utf-8")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parses TOML, turning syntax errors into a `TopologyError` naming the source."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{source}: not valid TOML: {exc}") from None


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`override` on top of `base`, table by table (components and sections key by key)."""
    merged: dict[str, Any] = {key: dict(value) for key, value in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            if key == "components":
                components = dict(merged[key])
                for name, table in value.items():
                    if isinstance(table, dict) and isinstance(components.get(name), dict):
                        components[name] = {**components[name], **table}
                    else:
                        components[name] = table
                merged[key] = components
            else:
                merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_topology(
    user_file: Path | None = None,
    *,
    groups: Iterable[str] = (),
    reserved_ports: Mapping[int, str] | None = None,
    check_modules: bool = True,
) -> Topology:
    """The default topology with the user's file on top, validated.

    Args:
        user_file: A grace.toml to merge over the default; None for the default alone.
        groups: Groups to run besides "core" (for example "examples").
        reserved_ports: Ports no component may use, with who holds them (Guardian's own).
        check_modules: Verify that each module can be imported and each command exists.

    Raises:
        TopologyError: The topology is invalid.
    """
    data = parse_toml(default_topology_text(), "default topology")
    source = "default topology"
    if user_file is not None:
        try:
            text = user_file.read_text("utf-8")
        except OSError as exc:
            raise TopologyError(f"{user_file}: cannot read: {exc.strerror}") from None
        data = merge(data, parse_toml(text, str(user_file)))
        source = str(user_file)
    return build_topology(
        data,
        source=source,
        groups=groups,
        reserved_ports=reserved_ports,
        check_modules=check_modules,
    )


def build_topology(
    data: Mapping[str, Any],
    *,
    source: str = "topology",
    groups: Iterable[str] = (),
    reserved_ports: Mapping[int, str] | None = None,
    check_modules: bool = True,
) -> Topology:
    """Validates parsed TOML and builds the topology (see `load_topology`)."""
    for key in data:
        if key not in _TOP_KEYS:
            raise TopologyError(
                f"{source}: unknown key {key!r} (expected one of {', '.join(sorted(_TOP_KEYS))})"
            )
    sections = {name: _section(data, name, source) for name in _SECTION_KEYS}
    try:
        probe = ProbeSettings(**sections["probe"])
        restart = RestartPolicy(**sections["restart"])
        boot = BootSettings(**sections["boot"])
        registration = RegistrationSettings(**sections["registration"])
    except TypeError as exc:  # pragma: no cover - keys are checked above
        raise TopologyError(f"{source}: {exc}") from None
    _check_settings(probe, restart, boot, registration, source)
    raw_components = data.get("components", {})
    if not isinstance(raw_components, dict):
        raise TopologyError(f"{source}: 'components' must be a table of tables")
    enabled_groups = {CORE_GROUP, *groups}
    specs = [_component(name, table, source) for name, table in raw_components.items()]
    active = [s for s in specs if s.enabled and s.group in enabled_groups]
    _check_graph(active, {s.name for s in specs}, source)
    _check_ports(active, dict(reserved_ports or {}), source)
    if check_modules:
        for spec in active:
            _check_runnable(spec, source)
    return Topology(
        components=tuple(_boot_order(active)),
        probe=probe,
        restart=restart,
        boot=boot,
        registration=registration,
    )


def _section(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise TopologyError(f"{source}: [{name}] must be a table")
    known = _SECTION_KEYS[name]
    for key, value in table.items():
        if key not in known:
            raise TopologyError(
                f"{source}: [{name}] unknown key {key!r} (expected one of {', '.join(known)})"
            )
        _check_type(f"[{name}] {key}", value, known[key], source)
    return dict(table)


def _check_type(
    where: str, value: Any, expected: tuple[type | tuple[type, ...], str], source: str
) -> None:
    kinds, text = expected
    # bool is an int in Python; a number key must not accept true/false.
    if isinstance(value, bool) and kinds is not bool:
        raise TopologyError(f"{source}: {where} must be {text}, not {value!r}")
    if not isinstance(value, kinds):
        raise TopologyError(f"{source}: {where} must be {text}, not {value!r}")


def _check_settings(
    probe: ProbeSettings,
    restart: RestartPolicy,
    boot: BootSettings,
    registration: RegistrationSettings,
    source: str,
) -> None:
    positive = {
        "[probe] interval_s": probe.interval_s,
        "[probe] timeout_s": probe.timeout_s,
        "[probe] startup_poll_s": probe.startup_poll_s,
        "[probe] failure_threshold": probe.failure_threshold,
        "[restart] initial_backoff_s": restart.initial_backoff_s,
        "[restart] max_backoff_s": restart.max_backoff_s,
        "[restart] reset_after_s": restart.reset_after_s,
        "[boot] startup_timeout_s": boot.startup_timeout_s,
        "[registration] lease_ttl_s": registration.lease_ttl_s,
        "[registration] retry_max_s": registration.retry_max_s,
    }
    for where, value in positive.items():
        if value <= 0:
            raise TopologyError(f"{source}: {where} must be > 0, not {value}")
    if restart.multiplier < 1:
        raise TopologyError(f"{source}: [restart] multiplier must be >= 1")
    if restart.budget < 0:
        raise TopologyError(f"{source}: [restart] budget must be >= 0")
    if boot.stop_timeout_s < 0:
        raise TopologyError(f"{source}: [boot] stop_timeout_s must be >= 0")
    if registration.lease_ttl_s < 1:
        raise TopologyError(f"{source}: [registration] lease_ttl_s must be >= 1")


def _strings(where: str, values: Any, source: str) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise TopologyError(f"{source}: {where} must be a list of strings")
    return tuple(values)


def _component(name: str, table: Any, source: str) -> ComponentSpec:
    where = f"component {name!r}"
    if not NAME_PATTERN.fullmatch(name):
        raise TopologyError(
            f"{source}: {where}: names are 1-63 lower-case letters, digits and '_', "
            "starting with a letter"
        )
    if not isinstance(table, dict):
        raise TopologyError(f"{source}: {where} must be a table")
    for key, value in table.items():
        if key not in _COMPONENT_KEYS:
            raise TopologyError(
                f"{source}: {where}: unknown key {key!r} "
                f"(expected one of {', '.join(_COMPONENT_KEYS)})"
            )
        _check_type(f"{where} {key}", value, _COMPONENT_KEYS[key], source)
    if "port" not in table:
        raise TopologyError(f"{source}: {where}: 'port' is required")
    port = table["port"]
    if not 1 <= port <= 65535:
        raise TopologyError(f"{source}: {where}: port {port} must be between 1 and 65535")
    module = table.get("module")
    command_value = table.get("command", [])
    command = (
        tuple(command_value.split())
        if isinstance(command_value, str)
        else _strings(f"{where} command", command_value, source)
    )
    if bool(module) == bool(command):
        raise TopologyError(f"{source}: {where}: set exactly one of 'module' or 'command'")
    env = table.get("env", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise TopologyError(f"{source}: {where}: env values must be strings")
    http_path = table.get("health_http_path", "")
    if http_path and not http_path.startswith("/"):
        raise TopologyError(f"{source}: {where}: health_http_path must start with '/'")
    timeout = table.get("startup_timeout_s")
    if timeout is not None and timeout <= 0:
        raise TopologyError(f"{source}: {where}: startup_timeout_s must be > 0")
    return ComponentSpec(
        name=name,
        port=port,
        module=module,
        command=command,
        args=_strings(f"{where} args", table.get("args", []), source),
        chunk=float(table.get("chunk", 0.0)),
        depends_on=_strings(f"{where} depends_on", table.get("depends_on", []), source),
        can_fail=table.get("can_fail", False),
        health_service=table.get("health_service", ""),
        health_http_path=http_path,
        env=dict(env),
        group=table.get("group", CORE_GROUP),
        capabilities=_strings(f"{where} capabilities", table.get("capabilities", []), source),
        register=table.get("register", True),
        identity=_identity(f"{where} identity", table.get("identity", "component"), source),
        enabled=table.get("enabled", True),
        startup_timeout_s=None if timeout is None else float(timeout),
    )


def _identity(where: str, value: str, source: str) -> str:
    if value not in ("component", "domain"):
        raise TopologyError(f"{source}: {where}={value!r}: expected component or domain")
    return value


def _check_graph(active: list[ComponentSpec], defined: set[str], source: str) -> None:
    by_name = {s.name: s for s in active}
    for spec in active:
        for dep in spec.depends_on:
            if dep == spec.name:
                raise TopologyError(f"{source}: component {spec.name!r} depends on itself")
            if dep not in by_name:
                why = "is disabled" if dep in defined else "is not in the topology"
                raise TopologyError(
                    f"{source}: component {spec.name!r} depends on {dep!r}, which {why}"
                )
            if by_name[dep].chunk > spec.chunk:
                raise TopologyError(
                    f"{source}: component {spec.name!r} (chunk {spec.chunk:g}) depends on "
                    f"{dep!r}, which boots later (chunk {by_name[dep].chunk:g})"
                )
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*path[path.index(name) :], name]
            raise TopologyError(f"{source}: dependency cycle: {' -> '.join(cycle)}")
        state[name] = 1
        for dep in by_name[name].depends_on:
            visit(dep, [*path, name])
        state[name] = 2

    for spec in active:
        visit(spec.name, [])


def _check_ports(active: list[ComponentSpec], reserved: dict[int, str], source: str) -> None:
    taken = dict(reserved)
    for spec in active:
        if spec.port in taken:
            raise TopologyError(
                f"{source}: component {spec.name!r} uses port {spec.port}, "
                f"already used by {taken[spec.port]}"
            )
        taken[spec.port] = repr(spec.name)


def _check_runnable(spec: ComponentSpec, source: str) -> None:
    if spec.module:
        try:
            found = importlib.util.find_spec(spec.module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise TopologyError(
                f"{source}: component {spec.name!r}: module {spec.module!r} cannot be found"
            )
        return
    program = spec.command[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise TopologyError(
            f"{source}: component {spec.name!r}: command {program!r} is not on PATH"
        )


def _boot_order(active: list[ComponentSpec]) -> list[ComponentSpec]:
    """Chunk ascending; inside a chunk dependencies first, otherwise file order."""
    ordered: list[ComponentSpec] = []
    placed: set[str] = set()
    for chunk in sorted({s.chunk for s in active}):
        pending = [s for s in active if s.chunk == chunk]
        while pending:
            ready = next(s for s in pending if all(d in placed for d in s.depends_on))
            ordered.append(ready)
            placed.add(ready.name)
            pending.remove(ready)
    return ordered
