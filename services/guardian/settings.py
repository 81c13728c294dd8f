"""Timing settings of a topology: probes, restarts, boot and registration.

The defaults follow Kubernetes probes (every 10 s, 1 s timeout, 3 failures) and a
supervisord-like restart budget with exponential backoff (1 s doubling to 60 s, reset after
10 minutes healthy). Every value can be changed in the topology file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeSettings:
    """How components are probed (Kubernetes-like defaults).

    Attributes:
        interval_s: Seconds between health Checks of a running component.
        timeout_s: Deadline of one Check.
        failure_threshold: Consecutive failed Checks after which a SERVING component is
            restarted.
        watch: Also follow grpc.health.v1 Watch, so state changes are seen at once.
        startup_poll_s: Seconds between Checks while a component starts.
    """

    interval_s: float = 10.0
    timeout_s: float = 1.0
    failure_threshold: int = 3
    watch: bool = True
    startup_poll_s: float = 0.05


@dataclass(frozen=True)
class RestartPolicy:
    """Exponential backoff with a budget (supervisord's startretries, Kubernetes' backoff).

    Attributes:
        initial_backoff_s: Delay before the first restart.
        multiplier: Factor between consecutive delays.
        max_backoff_s: Longest delay.
        reset_after_s: A component SERVING this long gets its restart count reset.
        budget: Restarts allowed before the component is FAILED.
    """

    initial_backoff_s: float = 1.0
    multiplier: float = 2.0
    max_backoff_s: float = 60.0
    reset_after_s: float = 600.0
    budget: int = 5

    def delay(self, restarts: int) -> float:
        """Delay before restart number `restarts` (0 for the first)."""
        return min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**restarts)


@dataclass(frozen=True)
class BootSettings:
    """Start-up and shutdown timing.

    Attributes:
        startup_timeout_s: How long a component may take to report SERVING.
        stop_timeout_s: How long a component gets after SIGTERM before SIGKILL.
        fork_server: Start Python components by forking them from a warm fork server that
            has their modules imported (see `services.guardian.zygote`) instead of a fresh
            interpreter each; falls back to exec where it cannot run.
    """

    startup_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    fork_server: bool = True


@dataclass(frozen=True)
class RegistrationSettings:
    """How Guardian registers its components in the registry.

    Attributes:
        enabled: Register components (and renew their leases from health probes).
        lease_ttl_s: Lease length asked for; heartbeats go every third of it.
        retry_max_s: Longest wait between attempts while the registry is down.
    """

    enabled: bool = True
    lease_ttl_s: float = 30.0
    retry_max_s: float = 10.0
