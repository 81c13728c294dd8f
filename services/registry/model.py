"""What the registry stores: domain records, their status and metrics, and changes."""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field, replace
from typing import Any


class DomainStatus(enum.Enum):
    """Health of a domain as the registry sees it."""

    HEALTHY = "HEALTHY"
    DEGRADED = "DEGRADED"
    UNHEALTHY = "UNHEALTHY"

    @property
    def is_live(self) -> bool:
        """True when the domain is routed to (HEALTHY or DEGRADED)."""
        return self is not DomainStatus.UNHEALTHY


class ChangeKind(enum.Enum):
    """What happened to a domain in one registry revision."""

    SNAPSHOT = "SNAPSHOT"
    REGISTERED = "REGISTERED"
    UPDATED = "UPDATED"
    STATUS_CHANGED = "STATUS_CHANGED"
    REMOVED = "REMOVED"


@dataclass(frozen=True)
class Metrics:
    """What a domain reports with each heartbeat.

    Attributes:
        load: In [0, 1]; 0 idle, 1 saturated.
        latency_ms: Recent mean call latency.
        success_rate: In [0, 1]; fraction of recent calls that succeeded.
    """

    load: float = 0.0
    latency_ms: float = 0.0
    success_rate: float = 1.0


def format_address(host: str, port: int) -> str:
    """`host:port`, IPv6 literals bracketed."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Instance:
    """One process serving a domain, with its own lease. Times are epoch seconds.

    Attributes:
        instance_id: "" for a domain's single default instance.
    """

    instance_id: str
    host: str
    port: int
    status: DomainStatus
    metrics: Metrics
    last_heartbeat_at: float
    lease_expires_at: float

    @property
    def address(self) -> str:
        """`host:port`, IPv6 literals bracketed."""
        return format_address(self.host, self.port)

    def with_changes(self, **changes: Any) -> Instance:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict, for the change log and the record's row."""
        return {
            "instance_id": self.instance_id,
            "host": self.host,
            "port": self.port,
            "status": self.status.value,
            "metrics": [self.metrics.load, self.metrics.latency_ms, self.metrics.success_rate],
            "last_heartbeat_at": self.last_heartbeat_at,
            "lease_expires_at": self.lease_expires_at,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Instance:
        """The inverse of `to_json`."""
        load, latency_ms, success_rate = data["metrics"]
        return cls(
            instance_id=data["instance_id"],
            host=data["host"],
            port=int(data["port"]),
            status=DomainStatus(data["status"]),
            metrics=Metrics(load, latency_ms, success_rate),
            last_heartbeat_at=float(data["last_heartbeat_at"]),
            lease_expires_at=float(data["lease_expires_at"]),
        )


# Which instance stands for the domain: the healthiest, then the lowest id. The choice
# depends on status only, never on heartbeat times, so a heartbeat that keeps every status
# leaves the domain's host and port as they were and needs no revision.
_STANDING = {DomainStatus.HEALTHY: 0, DomainStatus.DEGRADED: 1, DomainStatus.UNHEALTHY: 2}


@dataclass(frozen=True)
class Registration:
    """A validated registration request.

    Attributes:
        lease_ttl_s: None means the registry's default.
    """

    domain_id: str
    host: str
    port: int
    capabilities: tuple[str, ...] = ()
    version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    public_key: bytes = b""
    lease_ttl_s: float | None = None
    instance_id: str = ""


@dataclass(frozen=True)
class DomainRecord:
    """One registered domain with its lease. Times are epoch seconds.

    `instances` are the processes serving the domain, each with its own lease; the
    top-level host, port, status, metrics and lease summarize them (see `with_instances`).
    A record written before instances existed has none stored: `with_default_instance`
    gives it its one default instance.
    """

    domain_id: str
    host: str
    port: int
    capabilities: tuple[str, ...]
    version: str
    metadata: dict[str, str]
    public_key: bytes
    lease_ttl_s: float
    status: DomainStatus
    metrics: Metrics
    registered_at: float
    last_heartbeat_at: float
    lease_expires_at: float
    revision: int
    instances: tuple[Instance, ...] = ()

    @property
    def address(self) -> str:
        """`host:port`, IPv6 literals bracketed."""
        return format_address(self.host, self.port)

    def with_changes(self, **changes: Any) -> DomainRecord:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def instance(self, instance_id: str) -> Instance | None:
        """The instance with that id, if registered."""
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    @property
    def live_instances(self) -> tuple[Instance, ...]:
        """The instances routed to (HEALTHY or DEGRADED)."""
        return tuple(i for i in self.instances if i.status.is_live)

    def with_default_instance(self) -> DomainRecord:
        """The record itself, or, when it has no instances (written before they existed),
        the record with one default instance made of its top-level fields."""
        if self.instances:
            return self
        default = Instance(
            "",
            self.host,
            self.port,
            self.status,
            self.metrics,
            self.last_heartbeat_at,
            self.lease_expires_at,
        )
        return replace(self, instances=(default,))

    def with_instances(self, instances: tuple[Instance, ...]) -> DomainRecord:
        """The record holding `instances` (at least one), its top-level fields summarizing
        them: the status of the healthiest, the address and metrics of the one that
        stands for the domain, the latest heartbeat and lease."""
        ordered = tuple(sorted(instances, key=lambda i: i.instance_id))
        standing = min(ordered, key=lambda i: (_STANDING[i.status], i.instance_id))
        return replace(
            self,
            instances=ordered,
            host=standing.host,
            port=standing.port,
            status=standing.status,
            metrics=standing.metrics,
            last_heartbeat_at=max(i.last_heartbeat_at for i in ordered),
            lease_expires_at=max(i.lease_expires_at for i in ordered),
        )

    def sweep_due_at(self, deregister_after_s: float) -> float:
        """When the lease sweep next has work on this record: the soonest lapse of a live
        instance's lease, or removal of a lapsed one after the grace period."""
        return min(
            i.lease_expires_at if i.status.is_live else i.lease_expires_at + deregister_after_s
            for i in self.with_default_instance().instances
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict, for the change log."""
        return {
            "domain_id": self.domain_id,
            "host": self.host,
            "port": self.port,
            "capabilities": list(self.capabilities),
            "version": self.version,
            "metadata": self.metadata,
            "public_key": base64.b64encode(self.public_key).decode(),
            "lease_ttl_s": self.lease_ttl_s,
            "status": self.status.value,
            "metrics": [self.metrics.load, self.metrics.latency_ms, self.metrics.success_rate],
            "registered_at": self.registered_at,
            "last_heartbeat_at": self.last_heartbeat_at,
            "lease_expires_at": self.lease_expires_at,
            "revision": self.revision,
            "instances": [i.to_json() for i in self.instances],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainRecord:
        """The inverse of `to_json`."""
        load, latency_ms, success_rate = data["metrics"]
        return cls(
            domain_id=data["domain_id"],
            host=data["host"],
            port=int(data["port"]),
            capabilities=tuple(data["capabilities"]),
            version=data["version"],
            metadata=dict(data["metadata"]),
            public_key=base64.b64decode(data["public_key"]),
            lease_ttl_s=float(data["lease_ttl_s"]),
            status=DomainStatus(data["status"]),
            metrics=Metrics(load, latency_ms, success_rate),
            registered_at=float(data["registered_at"]),
            last_heartbeat_at=float(data["last_heartbeat_at"]),
            lease_expires_at=float(data["lease_expires_at"]),
            revision=int(data["revision"]),
            instances=tuple(Instance.from_json(i) for i in data.get("instances") or ()),
        ).with_default_instance()


@dataclass(frozen=True)
class Change:
    """One registry revision: what happened to which domain."""

    revision: int
    kind: ChangeKind
    record: DomainRecord
