"""What Guardian knows about each component while it runs."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path

from services.guardian.topology import ComponentSpec


class State(enum.Enum):
    """Life-cycle state of a supervised component (see ComponentState in the proto)."""

    PENDING = "PENDING"
    STARTING = "STARTING"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"


# States in which a process is (or should soon be) running.
RUNNING_STATES = frozenset({State.STARTING, State.SERVING, State.NOT_SERVING})


@dataclass
class ComponentStatus:
    """The live record of one component; `snapshot` gives a copy safe to hand out."""

    spec: ComponentSpec
    host: str
    port: int
    log_path: Path
    state: State = State.PENDING
    state_since: float = 0.0
    pid: int = 0
    started_at: float = 0.0
    restarts: int = 0
    total_restarts: int = 0
    last_error: str = ""
    last_exit_code: int = 0
    probe_latency_ms: float = 0.0
    last_probe_at: float = 0.0
    serving_since: float = 0.0

    @property
    def name(self) -> str:
        """Component name."""
        return self.spec.name

    @property
    def address(self) -> str:
        """`host:port` to dial."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def snapshot(self) -> ComponentStatus:
        """A copy that later changes do not affect."""
        return dataclasses.replace(self)


@dataclass(frozen=True)
class StateChange:
    """A component moved from one state to another (or, with `snapshot`, is as it is)."""

    component: ComponentStatus
    previous: State | None
    snapshot: bool = False


class SystemStatus(enum.Enum):
    """Health of the whole system (see SystemStatus in the proto)."""

    BOOTING = "BOOTING"
    SERVING = "SERVING"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"
    STOPPING = "STOPPING"


@dataclass(frozen=True)
class SystemHealth:
    """A summary of every component."""

    status: SystemStatus
    total: int
    serving: int
    by_state: dict[str, int]
    unhealthy_required: tuple[str, ...]
    started_at: float
    boot_complete: bool


@dataclass(frozen=True)
class Finding:
    """One observation or step of a playbook."""

    check: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class HealResult:
    """What a playbook did."""

    component: ComponentStatus
    playbook: str
    success: bool
    message: str
    findings: tuple[Finding, ...] = ()


def summarize(
    statuses: list[ComponentStatus], *, boot_complete: bool, stopping: bool, started_at: float
) -> SystemHealth:
    """The health of the system from its components' states.

    SERVING when every component is; FAILED when a required one is FAILED or STOPPED;
    DEGRADED otherwise (a can_fail one is down, or a required one is being restarted).
    """
    by_state: dict[str, int] = {}
    for status in statuses:
        by_state[status.state.value] = by_state.get(status.state.value, 0) + 1
    serving = sum(1 for s in statuses if s.state == State.SERVING)
    required = [s for s in statuses if not s.spec.can_fail]
    if stopping:
        overall = SystemStatus.STOPPING
    elif not boot_complete:
        overall = SystemStatus.BOOTING
    elif serving == len(statuses):
        overall = SystemStatus.SERVING
    elif any(s.state in (State.FAILED, State.STOPPED) for s in required):
        overall = SystemStatus.FAILED
    else:
        overall = SystemStatus.DEGRADED
    return SystemHealth(
        status=overall,
        total=len(statuses),
        serving=serving,
        by_state=by_state,
        unhealthy_required=tuple(s.name for s in required if s.state != State.SERVING),
        started_at=started_at,
        boot_complete=boot_complete,
    )
