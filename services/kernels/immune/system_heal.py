"""The three steps of seed 000's `full_system_heal` workflow, as actions of the immune
kernel's domain (capabilities `diagnostics`, `healing`, `verification`).

- `scan` (diagnostics): Guardian probes every component now (`CheckComponents`); the output
  lists the unhealthy ones with what the probe saw, and the anomalies the immune kernel
  detected for each component in the last `window_s` (default 600).
- `fix` (healing): heals each unhealthy component the scan found (its `unhealthy` list,
  passed along by the orchestrator, or `components` given explicitly; without either it
  probes for itself, so the seed's steps work even without `depends_on`) through Guardian,
  which asks governance first and picks the playbook (clear_port when a stale process
  holds the port, restart_component otherwise). The output lists each heal and its result.
- `verify` (verification): probes again, waiting up to `timeout_s` (default 60) for every
  component the fix touched (its `heals`, or `components`; without either, every
  component) to serve; fails (FAILED_PRECONDITION) naming the ones that do not, so the
  workflow's record says the heal did not work.

Nothing here is undone by a compensation: a restart cannot be taken back, and the scan and
the verification change nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from services.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.common.validation import ID_PATTERN
from services.kernels.domain import KernelAction
from services.kernels.immune.immune import Immune

ACTOR = "immune"
CAPABILITIES = ("diagnostics", "healing", "verification")
DEFAULT_WINDOW_S = 600.0
DEFAULT_VERIFY_TIMEOUT_S = 60.0
MAX_VERIFY_TIMEOUT_S = 600.0
MAX_COMPONENTS = 100
HEAL_TIMEOUT_S = 120.0
_POLL_S = 0.5


def _check_json(check: guardian_pb2.ComponentCheck) -> dict[str, Any]:
    return {
        "component": check.component_name,
        "port": check.port,
        "state": guardian_pb2.ComponentState.Name(check.state).removeprefix("COMPONENT_STATE_"),
        "status": check.status,
        "healthy": check.healthy,
        "error": check.error,
    }


def _components(data: Mapping[str, Any]) -> list[str]:
    """The components to fix or verify: `components`, else the scan's `unhealthy` list."""
    given = data.get("components")
    if given is None:
        given = [u.get("component") for u in data.get("unhealthy") or [] if isinstance(u, dict)]
    if not isinstance(given, list) or len(given) > MAX_COMPONENTS:
        raise InvalidArgument("input.components", f"must be a list of at most {MAX_COMPONENTS}")
    names: list[str] = []
    for name in given:
        if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
            raise InvalidArgument("input.components", f"{name!r} is not a component name")
        if name not in names:
            names.append(name)
    return names


class SystemHeal:
    """The scan, fix and verify actions over Guardian and the immune core.

    Args:
        guardian: Guardian's stub, opened when first needed (channels bind to the loop).
        immune: The immune core (recent anomalies).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        guardian: Callable[[], guardian_pb2_grpc.GuardianServiceAsyncStub],
        immune: Immune,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._guardian = guardian
        self.immune = immune
        self.clock = clock

    async def _probe(self) -> list[guardian_pb2.ComponentCheck]:
        try:
            response = await self._guardian().CheckComponents(
                guardian_pb2.CheckComponentsRequest(), timeout=30.0
            )
        except grpc.aio.AioRpcError as exc:
            raise Unavailable(f"guardian cannot probe the components: {exc.details()}") from None
        return list(response.checks)

    async def _recent_anomalies(self, window_s: float) -> dict[str, int]:
        since = self.clock() - window_s
        found, _ = await self.immune.list_anomalies(size=1000)
        counts: dict[str, int] = {}
        for anomaly in found:
            if anomaly.detected_at >= since:
                counts[anomaly.component] = counts.get(anomaly.component, 0) + 1
        return counts

    async def scan(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Probes every component; lists the unhealthy ones and recent anomalies."""
        window = data.get("window_s", DEFAULT_WINDOW_S)
        if not isinstance(window, int | float) or not 0 <= window <= 86400:
            raise InvalidArgument("input.window_s", "must be between 0 and 86400 seconds")
        checks = await self._probe()
        anomalies = await self._recent_anomalies(float(window))
        unhealthy = [_check_json(c) for c in checks if not c.healthy]
        return {
            "checked": len(checks),
            "healthy": not unhealthy,
            "unhealthy": unhealthy,
            "anomalies": anomalies,
            "scanned_at": self.clock(),
        }

    async def fix(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Heals every unhealthy component through Guardian (which asks governance)."""
        if "components" in data or "unhealthy" in data:
            targets = _components(data)
        else:
            # Run without a scan before it (the seed's steps have no depends_on): probe now.
            targets = [c.component_name for c in await self._probe() if not c.healthy]
        heals: list[dict[str, Any]] = []
        for component in targets:
            try:
                response = await self._guardian().Heal(
                    guardian_pb2.HealRequest(
                        component_name=component, reason="full_system_heal: unhealthy in scan"
                    ),
                    timeout=HEAL_TIMEOUT_S,
                    metadata=(("x-actor", ACTOR),),
                )
            except grpc.aio.AioRpcError as exc:
                heals.append(
                    {
                        "component": component,
                        "playbook": "",
                        "success": False,
                        "message": f"{exc.code().name}: {exc.details()}",
                    }
                )
                continue
            heals.append(
                {
                    "component": component,
                    "playbook": response.playbook,
                    "success": response.success,
                    "message": response.message,
                }
            )
        return {
            "attempted": len(heals),
            "fixed": [h["component"] for h in heals if h["success"]],
            "heals": heals,
        }

    async def verify(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """Waits for every component the fix touched (or given) to serve; fails if not."""
        timeout = data.get("timeout_s", DEFAULT_VERIFY_TIMEOUT_S)
        if not isinstance(timeout, int | float) or not 0 <= timeout <= MAX_VERIFY_TIMEOUT_S:
            raise InvalidArgument(
                "input.timeout_s", f"must be between 0 and {MAX_VERIFY_TIMEOUT_S:g} seconds"
            )
        if "components" in data:
            wanted = _components(data)
        else:
            touched = [h.get("component") for h in data.get("heals") or [] if isinstance(h, dict)]
            wanted = _components({"components": touched})
        deadline = self.clock() + float(timeout)
        while True:
            checks = await self._probe()
            # Nothing named: verify the whole system.
            targets = [c for c in checks if c.component_name in wanted] if wanted else checks
            failing = [c for c in targets if not c.healthy]
            if not failing or self.clock() >= deadline:
                break
            await asyncio.sleep(_POLL_S)
        if failing:
            raise FailedPrecondition(
                "verification failed: "
                + ", ".join(f"{c.component_name} is {c.status or 'not serving'}" for c in failing),
                reason="VERIFICATION_FAILED",
            )
        return {
            "verified": [c.component_name for c in targets],
            "healthy": True,
            "checks": [_check_json(c) for c in targets],
        }

    def actions(self) -> dict[str, KernelAction]:
        """The actions, as the kernel's DomainService serves them."""
        return {
            "scan": KernelAction(
                self.scan, "Probes every component; lists the unhealthy ones (diagnostics)"
            ),
            "fix": KernelAction(
                self.fix, "Heals each unhealthy component of a scan through Guardian (healing)"
            ),
            "verify": KernelAction(
                self.verify, "Waits for the fixed components to serve; fails if not (verification)"
            ),
        }
