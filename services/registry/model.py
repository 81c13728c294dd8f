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


@dataclass(frozen=True)
class DomainRecord:
    """One registered domain with its lease. Times are epoch seconds."""

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

    @property
    def address(self) -> str:
        """`host:port`, IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def with_changes(self, **changes: Any) -> DomainRecord:
        """A copy with some fields replaced."""
        return replace(self, **changes)

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
        )


@dataclass(frozen=True)
class Change:
    """One registry revision: what happened to which domain."""

    revision: int
    kind: ChangeKind
    record: DomainRecord
