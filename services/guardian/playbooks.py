"""Healing playbooks (seed 003): restart_component, clear_port, rebind_port, diagnose_network,
and the control operations (restart, stop, start), each asked of governance first
(`services.guardian.consent`); the supervisor's own crash restarts never come here.

`clear_port` only ever signals a process Guardian itself started: the process holding the
port (or the leader of its process group) must match a spawn record by pid AND start time,
so neither a stranger nor a recycled pid is touched. Anything else is refused with
FAILED_PRECONDITION and nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

from services.common.completion import runs_to_completion
from services.common.errors import FailedPrecondition, InvalidArgument
from services.guardian.consent import HealConsent
from services.guardian.journal import Journal
from services.guardian.model import ComponentStatus, Finding, HealResult, State
from services.guardian.ports import free_port_in_tier, listening_pids, port_accepts, tier
from services.guardian.probe import Observation, probe_address
from services.guardian.process import kill_group, pid_alive, process_group, process_start_ticks
from services.guardian.store import GuardianStore
from services.guardian.supervisor import Supervisor

log = logging.getLogger(__name__)

RESTART_COMPONENT = "restart_component"
CLEAR_PORT = "clear_port"
REBIND_PORT = "rebind_port"
DIAGNOSE_NETWORK = "diagnose_network"
PLAYBOOKS = (RESTART_COMPONENT, CLEAR_PORT, REBIND_PORT, DIAGNOSE_NETWORK)
# Operations of the control RPCs, governed as `heal:<operation>` like the playbooks.
STOP_COMPONENT = "stop_component"
START_COMPONENT = "start_component"


class Healer:
    """Runs playbooks on the supervisor's components.

    Args:
        supervisor: The supervisor.
        store: Spawn records (to recognise Guardian's own processes); None trusts only the
            processes of the current run.
        journal: Where decisions go.
        reserved_ports: Ports rebind_port must not pick (Guardian's own).
        consent: Governance's consent asked before each playbook runs; None heals without
            asking.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        store: GuardianStore | None,
        journal: Journal,
        reserved_ports: Callable[[], set[int]] = set,
        consent: HealConsent | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.store = store
        self.journal = journal
        self._reserved_ports = reserved_ports
        self.consent = consent

    @runs_to_completion
    async def heal(
        self,
        name: str,
        playbook: str = "",
        *,
        actor: str = "",
        decision_id: str = "",
        reason: str = "",
    ) -> HealResult:
        """Runs `playbook` on component `name` ("" picks one), once governance allows it.

        Args:
            name: The component.
            playbook: One of PLAYBOOKS, or "" to let Guardian choose.
            actor: Who asks (governance's principal; "operator" when empty).
            decision_id: A governance decision the caller already holds for this heal.
            reason: Why the heal is asked for (journaled with it); "requested" when empty.

        A heal runs to its end even when its caller goes away (`runs_to_completion`): cut
        midway, a playbook would leave its component stopped, its governance decision
        spent (a retry with it is refused) and its journal saying it started, not how it
        ended.
        """
        status = self.supervisor.status(name)
        if playbook and playbook not in PLAYBOOKS:
            raise InvalidArgument("playbook", f"must be one of {', '.join(PLAYBOOKS)}")
        if not playbook:
            playbook = await self._choose(status)
        decided = ""
        if self.consent is not None:
            consent = await self.consent.require(
                name, playbook, actor=actor, decision_id=decision_id
            )
            decided = consent.decision_id or "fallback: " + "; ".join(consent.reasons)
        if playbook == DIAGNOSE_NETWORK:
            return await self.diagnose(name)
        await self.journal.decide(
            "healing.started",
            name,
            playbook=playbook,
            reason=reason or "requested",
            **({"governance_decision": decided} if self.consent is not None else {}),
        )
        try:
            if playbook == RESTART_COMPONENT:
                result = await self._restart(name)
            elif playbook == CLEAR_PORT:
                result = await self._clear_port(name)
            else:
                result = await self._rebind(name)
        except Exception as exc:
            await self.journal.decide("healing.failed", name, playbook=playbook, reason=str(exc))
            raise
        event = "healing.completed" if result.success else "healing.failed"
        await self.journal.decide(event, name, playbook=playbook, message=result.message)
        return result

    async def restart(
        self, name: str, *, actor: str = "", decision_id: str = ""
    ) -> ComponentStatus:
        """Restarts component `name` once governance allows `heal:restart_component`, the
        action of the restart playbook: a restart is one governed action by any route."""
        return await self._control(name, RESTART_COMPONENT, actor, decision_id)

    async def stop(self, name: str, *, actor: str = "", decision_id: str = "") -> ComponentStatus:
        """Stops component `name` once governance allows `heal:stop_component`."""
        return await self._control(name, STOP_COMPONENT, actor, decision_id)

    async def start(self, name: str, *, actor: str = "", decision_id: str = "") -> ComponentStatus:
        """Starts component `name` once governance allows `heal:start_component`."""
        return await self._control(name, START_COMPONENT, actor, decision_id)

    async def _control(
        self, name: str, operation: str, actor: str, decision_id: str
    ) -> ComponentStatus:
        self.supervisor.status(name)  # NotFound before governance is asked
        status = await self._govern_and_apply(name, operation, actor, decision_id)
        if operation == STOP_COMPONENT:
            return status
        return await self.supervisor.ready(name)

    @runs_to_completion
    async def _govern_and_apply(
        self, name: str, operation: str, actor: str, decision_id: str
    ) -> ComponentStatus:
        """Asks governance, then applies the operation, even when the caller goes away in
        between: the decision is spent once asked, so a retry with it would be refused."""
        if self.consent is not None:
            await self.consent.require(name, operation, actor=actor, decision_id=decision_id)
        if operation == STOP_COMPONENT:
            return await self.supervisor.stop(name)
        if operation == START_COMPONENT:
            return await self.supervisor.start(name, wait=False)
        return await self.supervisor.restart(name, wait=False)

    async def _choose(self, status: ComponentStatus) -> str:
        holders = await asyncio.to_thread(listening_pids, status.port)
        if holders - {status.pid}:
            return CLEAR_PORT
        return RESTART_COMPONENT

    async def _restart(self, name: str) -> HealResult:
        after = await self.supervisor.restart(name)
        ok = after.state == State.SERVING
        return HealResult(
            after,
            RESTART_COMPONENT,
            ok,
            f"{name} restarted: {after.state.value}" + ("" if ok else f" ({after.last_error})"),
            (Finding("restarted", ok, f"pid {after.pid}, state {after.state.value}"),),
        )

    async def _clear_port(self, name: str) -> HealResult:
        status = self.supervisor.status(name)
        port = status.port
        findings: list[Finding] = []
        current = self.supervisor.process(name)
        others = {s.pid: s.name for s in self.supervisor.statuses() if s.pid and s.name != name}
        stale: list[int] = []
        for pid in sorted(await asyncio.to_thread(listening_pids, port)):
            if current is not None and process_group(pid) == current.pid:
                findings.append(Finding("port_holder", True, f"pid {pid} is {name} itself"))
                continue
            if pid in others:
                raise FailedPrecondition(
                    f"port {port} is held by pid {pid}, the running {others[pid]}; "
                    "refusing to touch it"
                )
            leader = await self._guardian_started(pid)
            if leader is None:
                raise FailedPrecondition(
                    f"port {port} is held by pid {pid}, which Guardian did not start; "
                    "refusing to touch it",
                    reason="NOT_STARTED_BY_GUARDIAN",
                    metadata={"pid": str(pid), "port": str(port)},
                )
            findings.append(
                Finding("port_holder", False, f"pid {pid}: stale process Guardian started")
            )
            stale.append(leader)
        await self.supervisor.stop(name, deregister=False)
        for pgid in stale:
            await self._kill_group(pgid)
            findings.append(Finding("killed", True, f"process group {pgid}"))
        if not await self._wait_port_free(port):
            raise FailedPrecondition(f"port {port} is still in use after clearing it")
        after = await self.supervisor.start(name)
        ok = after.state == State.SERVING
        findings.append(Finding("restarted", ok, f"pid {after.pid}, state {after.state.value}"))
        message = f"port {port} cleared ({len(stale)} stale process group(s)); {name} " + (
            "SERVING" if ok else f"{after.state.value}: {after.last_error}"
        )
        return HealResult(after, CLEAR_PORT, ok, message, tuple(findings))

    async def _guardian_started(self, pid: int) -> int | None:
        """The process group to kill when `pid` (or its group leader) is a process Guardian
        started; None otherwise."""
        if self.store is None:
            return None
        for candidate in (pid, process_group(pid)):
            if candidate is None:
                continue
            record = await self.store.spawned(candidate)
            ticks = process_start_ticks(candidate)
            if record is not None and ticks is not None and record.start_ticks == ticks:
                return candidate
        return None

    async def _kill_group(self, pgid: int) -> None:
        log.warning("clear_port: stopping stale process group %d", pgid)
        kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + self.supervisor.topology.boot.stop_timeout_s
        while pid_alive(pgid) and time.monotonic() < deadline:  # noqa: ASYNC110 - polls /proc
            await asyncio.sleep(0.05)
        kill_group(pgid, signal.SIGKILL)

    async def _wait_port_free(self, port: int, timeout_s: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not await asyncio.to_thread(listening_pids, port):
                return True
            await asyncio.sleep(0.05)
        return False

    async def _rebind(self, name: str) -> HealResult:
        status = self.supervisor.status(name)
        avoid = {s.port for s in self.supervisor.statuses()} | self._reserved_ports()
        new_port = await asyncio.to_thread(free_port_in_tier, status.host, status.port, avoid)
        if new_port is None:
            block = tier(status.port)
            raise FailedPrecondition(
                f"no free port in {name}'s tier {block.start}-{block.stop - 1}"
            )
        await self.supervisor.stop(name, deregister=False)
        self.supervisor.move(name, new_port)
        after = await self.supervisor.start(name)
        ok = after.state == State.SERVING
        findings = (
            Finding("rebound", True, f"port {status.port} -> {new_port}"),
            Finding("restarted", ok, f"pid {after.pid}, state {after.state.value}"),
        )
        message = f"{name} moved from port {status.port} to {new_port}: {after.state.value}"
        return HealResult(after, REBIND_PORT, ok, message, findings)

    async def diagnose(self, name: str) -> HealResult:
        """Reports what is wrong with a component without changing anything."""
        status = self.supervisor.status(name)
        proc = self.supervisor.process(name)
        findings = [
            Finding(
                "process_alive",
                proc is not None,
                f"pid {proc.pid} running" if proc else f"no process ({status.state.value})",
            )
        ]
        accepts = await asyncio.to_thread(port_accepts, status.host, status.port)
        findings.append(
            Finding(
                "port_listening",
                accepts,
                f"{status.address} {'accepts' if accepts else 'refuses'} connections",
            )
        )
        holders = await asyncio.to_thread(listening_pids, status.port)
        own = proc is not None and all(process_group(p) == proc.pid for p in holders)
        findings.append(
            Finding(
                "port_holder",
                own and bool(holders),
                f"held by pid(s) {', '.join(map(str, sorted(holders)))}"
                if holders
                else "no visible process listens",
            )
        )
        probe = await probe_address(
            status.address,
            status.spec.health_service,
            self.supervisor.topology.probe.timeout_s,
            status.spec.health_http_path,
        )
        findings.append(
            Finding(
                "health",
                probe.serving,
                f"{probe.status} in {probe.latency_ms:.1f} ms"
                + (f" ({probe.error})" if probe.error else ""),
            )
        )
        findings.append(
            Finding("probe_latency", probe.serving, f"{probe.latency_ms:.1f} ms"),
        )
        registrar = self.supervisor.registrar
        if registrar is not None and status.spec.register:
            registered = registrar.is_registered(name)
            findings.append(
                Finding(
                    "registered",
                    registered,
                    "registered in the registry" if registered else "not registered (yet)",
                )
            )
        ok = all(f.ok for f in findings)
        problems = [f.check for f in findings if not f.ok]
        message = "no problem found" if ok else "problems: " + ", ".join(problems)
        log.info("diagnose_network %s: %s", name, message)
        return HealResult(status, DIAGNOSE_NETWORK, ok, message, tuple(findings))

    async def check_all(self) -> list[tuple[ComponentStatus, Observation]]:
        """Probes every component now, concurrently (one Check each)."""
        statuses = self.supervisor.statuses()
        timeout = self.supervisor.topology.probe.timeout_s
        observations = await asyncio.gather(
            *(
                probe_address(s.address, s.spec.health_service, timeout, s.spec.health_http_path)
                for s in statuses
            )
        )
        return list(zip(statuses, observations, strict=True))
