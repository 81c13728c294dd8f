"""What the orchestrator works with: workflow definitions, executions and their steps.

Executions are plain mutable dataclasses owned by one runner task; `to_json`/`from_json`
give the snapshot that the store persists at every transition, and `to_compact`/
`from_compact` the same snapshot as small bytes for keeping ended executions in memory.
"""

from __future__ import annotations

import marshal
import zlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from services.common.backoff import Backoff

JsonDict = dict[str, Any]

# Raw deflate (no header or checksum: the bytes never leave the process) at its quickest
# level: most of the gain, at half the CPU time of the default level.
_COMPACT_LEVEL = 1
_COMPACT_WBITS = -15


class ExecutionState(StrEnum):
    """Life of an execution; see ExecutionState in orchestrator.proto."""

    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    COMPENSATING = "COMPENSATING"
    ROLLED_BACK = "ROLLED_BACK"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


TERMINAL_STATES = frozenset(
    {ExecutionState.SUCCEEDED, ExecutionState.ROLLED_BACK, ExecutionState.COMPENSATION_FAILED}
)


class StepState(StrEnum):
    """Life of one step of an execution; see StepState in orchestrator.proto."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    COMPENSATING = "COMPENSATING"
    COMPENSATED = "COMPENSATED"
    COMPENSATION_FAILED = "COMPENSATION_FAILED"


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts and exponential backoff of one step's calls.

    `max_attempts` bounds the attempts after errors a domain answered. A domain (or the
    registry) that cannot be reached at all is retried past `max_attempts` for as long as
    the next attempt starts within `unavailable_window_s` of the first: long enough to
    ride out a component that Guardian restarts after a crash (seconds), instead of
    rolling back every execution in flight.
    """

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    multiplier: float = 2.0
    max_backoff_s: float = 10.0
    unavailable_window_s: float = 15.0

    @property
    def backoff(self) -> Backoff:
        """The delays between attempts."""
        return Backoff(self.initial_backoff_s, self.multiplier, self.max_backoff_s)

    def delay_after(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based) before the next one."""
        return self.backoff.delay(attempt)

    def allows_another(self, attempt: int, unreachable: bool, elapsed_s: float) -> bool:
        """Whether failed attempt `attempt` (1-based) is followed by another.

        Args:
            attempt: The attempt that just failed (with a retryable error).
            unreachable: The failure was UNAVAILABLE: nothing answered.
            elapsed_s: Seconds since the first attempt started.
        """
        if attempt < self.max_attempts:
            return True
        return unreachable and elapsed_s + self.delay_after(attempt) <= self.unavailable_window_s

    def to_json(self) -> JsonDict:
        """JSON form for storage."""
        return {
            "max_attempts": self.max_attempts,
            "initial_backoff_s": self.initial_backoff_s,
            "multiplier": self.multiplier,
            "max_backoff_s": self.max_backoff_s,
            "unavailable_window_s": self.unavailable_window_s,
        }

    @classmethod
    def from_json(cls, raw: JsonDict) -> RetryPolicy:
        """Inverse of `to_json` (policies stored before the window existed get its default)."""
        return cls(**raw)


@dataclass(frozen=True)
class StepSpec:
    """One normalized step of a workflow definition."""

    id: str
    action: str
    domain_id: str = ""
    capability: str = ""
    data: JsonDict = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    timeout_s: float = 30.0
    retry: RetryPolicy = RetryPolicy()
    compensation_action: str = ""
    compensation_skip: bool = False

    def to_json(self) -> JsonDict:
        """JSON form for storage."""
        return {
            "id": self.id,
            "action": self.action,
            "domain_id": self.domain_id,
            "capability": self.capability,
            "data": self.data,
            "depends_on": list(self.depends_on),
            "timeout_s": self.timeout_s,
            "retry": self.retry.to_json(),
            "compensation_action": self.compensation_action,
            "compensation_skip": self.compensation_skip,
        }

    @classmethod
    def from_json(cls, raw: JsonDict) -> StepSpec:
        """Inverse of `to_json`."""
        return cls(
            id=raw["id"],
            action=raw["action"],
            domain_id=raw["domain_id"],
            capability=raw["capability"],
            data=raw["data"],
            depends_on=tuple(raw["depends_on"]),
            timeout_s=raw["timeout_s"],
            retry=RetryPolicy.from_json(raw["retry"]),
            compensation_action=raw["compensation_action"],
            compensation_skip=raw["compensation_skip"],
        )


@dataclass(frozen=True)
class WorkflowSpec:
    """A stored workflow definition."""

    workflow_id: str
    name: str
    description: str
    steps: tuple[StepSpec, ...]
    created_at: float

    def step(self, step_id: str) -> StepSpec:
        """The step with this id."""
        for spec in self.steps:
            if spec.id == step_id:
                return spec
        raise KeyError(step_id)


@dataclass
class StepRun:
    """The state of one step within one execution."""

    step_id: str
    action: str
    state: StepState = StepState.PENDING
    domain_id: str = ""
    attempts: int = 0
    input: JsonDict | None = None
    output: JsonDict | None = None
    error: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    next_attempt_at: float = 0.0
    compensation_error: str = ""
    address: str = ""

    def to_json(self) -> JsonDict:
        """JSON form for snapshots."""
        return {
            "step_id": self.step_id,
            "action": self.action,
            "state": self.state.value,
            "domain_id": self.domain_id,
            "attempts": self.attempts,
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "next_attempt_at": self.next_attempt_at,
            "compensation_error": self.compensation_error,
            "address": self.address,
        }

    @classmethod
    def from_json(cls, raw: JsonDict) -> StepRun:
        """Inverse of `to_json`."""
        return cls(**{**raw, "state": StepState(raw["state"])})


@dataclass
class Execution:
    """One run of a workflow, with the chain of proof records built as it goes."""

    execution_id: str
    workflow_id: str
    workflow_name: str
    input: JsonDict
    steps: dict[str, StepRun]
    created_at: float
    state: ExecutionState = ExecutionState.RUNNING
    error: str = ""
    cancel_requested: bool = False
    updated_at: float = 0.0
    finished_at: float = 0.0
    completion_order: list[str] = field(default_factory=list)
    compensation_order: list[str] = field(default_factory=list)
    records: list[JsonDict] = field(default_factory=list)
    signature: bytes = b""
    resumed: int = 0
    compensation_rounds: int = 0
    next_compensation_at: float = 0.0
    abandoned_by: str = ""
    abandon_reason: str = ""
    abandoned_at: float = 0.0

    @property
    def terminal(self) -> bool:
        """True once the execution has ended."""
        return self.state in TERMINAL_STATES

    @property
    def awaits_compensation_retry(self) -> bool:
        """COMPENSATION_FAILED and not given up on: its compensation is tried again."""
        return self.state == ExecutionState.COMPENSATION_FAILED and not self.abandoned_at

    def output(self) -> JsonDict:
        """Outputs of the succeeded steps by step id."""
        return {
            sid: run.output
            for sid, run in self.steps.items()
            if run.output is not None and run.state == StepState.SUCCEEDED
        }

    def to_json(self) -> JsonDict:
        """The snapshot persisted at every transition."""
        return {
            "execution_id": self.execution_id,
            "workflow_id": self.workflow_id,
            "workflow_name": self.workflow_name,
            "input": self.input,
            "steps": [run.to_json() for run in self.steps.values()],
            "created_at": self.created_at,
            "state": self.state.value,
            "error": self.error,
            "cancel_requested": self.cancel_requested,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "completion_order": list(self.completion_order),
            "compensation_order": list(self.compensation_order),
            "records": list(self.records),
            "signature": self.signature.hex(),
            "resumed": self.resumed,
            "compensation_rounds": self.compensation_rounds,
            "next_compensation_at": self.next_compensation_at,
            "abandoned_by": self.abandoned_by,
            "abandon_reason": self.abandon_reason,
            "abandoned_at": self.abandoned_at,
        }

    @classmethod
    def from_json(cls, raw: JsonDict) -> Execution:
        """Inverse of `to_json`."""
        steps = [StepRun.from_json(s) for s in raw["steps"]]
        return cls(
            execution_id=raw["execution_id"],
            workflow_id=raw["workflow_id"],
            workflow_name=raw["workflow_name"],
            input=raw["input"],
            steps={s.step_id: s for s in steps},
            created_at=raw["created_at"],
            state=ExecutionState(raw["state"]),
            error=raw["error"],
            cancel_requested=raw["cancel_requested"],
            updated_at=raw["updated_at"],
            finished_at=raw["finished_at"],
            completion_order=list(raw["completion_order"]),
            compensation_order=list(raw["compensation_order"]),
            records=list(raw["records"]),
            signature=bytes.fromhex(raw["signature"]),
            resumed=raw.get("resumed", 0),
            compensation_rounds=raw.get("compensation_rounds", 0),
            next_compensation_at=raw.get("next_compensation_at", 0.0),
            abandoned_by=raw.get("abandoned_by", ""),
            abandon_reason=raw.get("abandon_reason", ""),
            abandoned_at=raw.get("abandoned_at", 0.0),
        )

    def to_compact(self) -> bytes:
        """The snapshot as compact bytes, for this process only (see `from_compact`).

        A typical ended 3-step execution takes about 2 kB in this form, against about
        15 kB as objects. marshal writes once what the snapshot holds several times (the
        values a step's input takes over from the workflow input and earlier outputs),
        several times quicker than JSON; deflate then shrinks the texts that steps pass
        along. The bytes must not be stored or sent: marshal's format belongs to the
        Python version.

        Raises:
            ValueError: The snapshot holds a value marshal cannot write (one of a subclass
                of dict, list, str, int or float, which JSON writes as its base type).
        """
        return zlib.compress(marshal.dumps(self.to_json()), _COMPACT_LEVEL, _COMPACT_WBITS)

    @classmethod
    def from_compact(cls, data: bytes) -> Execution:
        """Inverse of `to_compact`: a new Execution, equal to the one encoded."""
        return cls.from_json(marshal.loads(zlib.decompress(data, _COMPACT_WBITS)))
