"""gRPC adapter of the registry: proto in, core call, proto out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from grace.registry.v1 import registry_pb2, registry_pb2_grpc
from services.common.auth import current_principal
from services.common.pagination import encoded_size
from services.common.peers import caller_host
from services.common.timestamps import from_duration, to_duration, to_timestamp
from services.registry import ranking
from services.registry.federation import Federation
from services.registry.model import (
    ChangeKind,
    DomainRecord,
    DomainStatus,
    Instance,
    Metrics,
    Registration,
)
from services.registry.registry import OWNER_KEY, Registry
from services.registry.suspicions import Report, Suspicion, SuspicionState

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]

_STATUS_TO_PROTO = {
    DomainStatus.HEALTHY: registry_pb2.DOMAIN_STATUS_HEALTHY,
    DomainStatus.DEGRADED: registry_pb2.DOMAIN_STATUS_DEGRADED,
    DomainStatus.UNHEALTHY: registry_pb2.DOMAIN_STATUS_UNHEALTHY,
}
_STATUS_FROM_PROTO = {v: k for k, v in _STATUS_TO_PROTO.items()}
_SUSPICION_TO_PROTO = {
    SuspicionState.SUSPECTED: registry_pb2.SUSPICION_STATE_SUSPECTED,
    SuspicionState.CONFIRMED_DOWN: registry_pb2.SUSPICION_STATE_CONFIRMED_DOWN,
}
_KIND_TO_PROTO = {
    ChangeKind.SNAPSHOT: registry_pb2.CHANGE_KIND_SNAPSHOT,
    ChangeKind.REGISTERED: registry_pb2.CHANGE_KIND_REGISTERED,
    ChangeKind.UPDATED: registry_pb2.CHANGE_KIND_UPDATED,
    ChangeKind.STATUS_CHANGED: registry_pb2.CHANGE_KIND_STATUS_CHANGED,
    ChangeKind.REMOVED: registry_pb2.CHANGE_KIND_REMOVED,
}


def domain_to_proto(record: DomainRecord) -> registry_pb2.Domain:
    """The wire form of a domain record (the owner binding stays inside the registry)."""
    return registry_pb2.Domain(
        domain_id=record.domain_id,
        host=record.host,
        port=record.port,
        address=record.address,
        capabilities=record.capabilities,
        version=record.version,
        metadata={k: v for k, v in record.metadata.items() if k != OWNER_KEY},
        public_key=record.public_key,
        lease_ttl=to_duration(record.lease_ttl_s),
        status=_STATUS_TO_PROTO[record.status],
        metrics=registry_pb2.DomainMetrics(
            load=record.metrics.load,
            latency_ms=record.metrics.latency_ms,
            success_rate=record.metrics.success_rate,
        ),
        registered_at=to_timestamp(record.registered_at),
        last_heartbeat_at=to_timestamp(record.last_heartbeat_at),
        lease_expires_at=to_timestamp(record.lease_expires_at),
        revision=record.revision,
        instances=[_instance_to_proto(record, i) for i in record.instances],
    )


def _instance_to_proto(record: DomainRecord, instance: Instance) -> registry_pb2.DomainInstance:
    # An instance is scored as its domain would be with its own status and metrics.
    alone = record.with_changes(status=instance.status, metrics=instance.metrics)
    return registry_pb2.DomainInstance(
        instance_id=instance.instance_id,
        host=instance.host,
        port=instance.port,
        address=instance.address,
        status=_STATUS_TO_PROTO[instance.status],
        metrics=registry_pb2.DomainMetrics(
            load=instance.metrics.load,
            latency_ms=instance.metrics.latency_ms,
            success_rate=instance.metrics.success_rate,
        ),
        last_heartbeat_at=to_timestamp(instance.last_heartbeat_at),
        lease_expires_at=to_timestamp(instance.lease_expires_at),
        score=ranking.score(alone) if instance.status.is_live else 0.0,
    )


def suspicion_to_proto(suspicion: Suspicion) -> registry_pb2.Suspicion:
    """The wire form of a suspicion."""
    message = registry_pb2.Suspicion(
        suspect_id=suspicion.suspect_id,
        incarnation=suspicion.incarnation,
        state=_SUSPICION_TO_PROTO[suspicion.state],
        suspecting=sorted(suspicion.suspecting),
        confirming=sorted(suspicion.confirming),
        observers=list(suspicion.observers),
        quorum=suspicion.quorum,
        suspected_at=to_timestamp(suspicion.suspected_at),
    )
    if suspicion.confirmed_at:
        message.confirmed_at.CopyFrom(to_timestamp(suspicion.confirmed_at))
    return message


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    """Serves `grace.registry.v1.RegistryService` over a `Registry` core and its
    health-federation `Federation`."""

    def __init__(self, registry: Registry, federation: Federation) -> None:
        self._registry = registry
        self._federation = federation
        # Records are immutable and replaced on every change, so the wire form of a record
        # object can be reused until the record is replaced: lookups then cost a copy of a
        # C message instead of a Python conversion per candidate.
        self._wire: dict[str, tuple[DomainRecord, registry_pb2.Domain]] = {}

    def _domain(self, record: DomainRecord) -> registry_pb2.Domain:
        cached = self._wire.get(record.domain_id)
        if cached is not None and cached[0] is record:
            return cached[1]
        if len(self._wire) > 2 * max(1024, self._registry.domain_count()):
            self._wire.clear()  # drop entries of domains that are gone
        message = domain_to_proto(record)
        self._wire[record.domain_id] = (record, message)
        return message

    async def RegisterDomain(
        self, request: registry_pb2.RegisterDomainRequest, context: Context
    ) -> registry_pb2.RegisterDomainResponse:
        registration = Registration(
            domain_id=request.domain_id,
            host=request.host or caller_host(context),
            port=request.port,
            capabilities=tuple(request.capabilities),
            version=request.version,
            metadata=dict(request.metadata),
            public_key=request.public_key,
            lease_ttl_s=from_duration(request.lease_ttl) if request.HasField("lease_ttl") else None,
            instance_id=request.instance_id,
        )
        outcome = await self._registry.registered(
            registration, owner=_caller(), replace=request.replace
        )
        return registry_pb2.RegisterDomainResponse(
            domain=self._domain(outcome.record),
            created=outcome.created,
            kept_fields=list(outcome.kept_fields),
            changed_fields=list(outcome.changed_fields),
        )

    async def Heartbeat(
        self, request: registry_pb2.HeartbeatRequest, context: Context
    ) -> registry_pb2.HeartbeatResponse:
        metrics = None
        if request.HasField("metrics"):
            m = request.metrics
            metrics = Metrics(load=m.load, latency_ms=m.latency_ms, success_rate=m.success_rate)
        record = await self._registry.heartbeat(
            request.domain_id, metrics, request.degraded, _caller(), request.instance_id
        )
        return registry_pb2.HeartbeatResponse(domain=self._domain(record))

    async def DeregisterDomain(
        self, request: registry_pb2.DeregisterDomainRequest, context: Context
    ) -> registry_pb2.DeregisterDomainResponse:
        principal = current_principal()
        revision = await self._registry.deregister(
            request.domain_id,
            _caller(),
            admin=principal is not None and principal.is_admin,
            instance_id=request.instance_id,
        )
        return registry_pb2.DeregisterDomainResponse(revision=revision)

    async def GetDomain(
        self, request: registry_pb2.GetDomainRequest, context: Context
    ) -> registry_pb2.GetDomainResponse:
        return registry_pb2.GetDomainResponse(
            domain=self._domain(await self._registry.lookup(request.domain_id))
        )

    async def ListDomains(
        self, request: registry_pb2.ListDomainsRequest, context: Context
    ) -> registry_pb2.ListDomainsResponse:
        records, next_token, total = self._registry.list_domains(
            size=request.page_size,
            token=request.page_token,
            status=_STATUS_FROM_PROTO.get(request.status),
            capability=request.capability,
            size_of=lambda record: encoded_size(self._domain(record)),
        )
        return registry_pb2.ListDomainsResponse(
            domains=[self._domain(r) for r in records],
            next_page_token=next_token,
            total_size=total,
        )

    async def GetCapabilityMap(
        self, request: registry_pb2.GetCapabilityMapRequest, context: Context
    ) -> registry_pb2.GetCapabilityMapResponse:
        mapping = self._registry.capability_map(request.include_unhealthy)
        return registry_pb2.GetCapabilityMapResponse(
            capabilities={c: registry_pb2.DomainIds(domain_ids=ids) for c, ids in mapping.items()}
        )

    async def FindByCapability(
        self, request: registry_pb2.FindByCapabilityRequest, context: Context
    ) -> registry_pb2.FindByCapabilityResponse:
        ranked = self._registry.find(request.capability, request.limit)
        return registry_pb2.FindByCapabilityResponse(
            domains=[registry_pb2.RankedDomain(domain=self._domain(r), score=s) for r, s in ranked]
        )

    async def WatchDomains(
        self, request: registry_pb2.WatchDomainsRequest, context: Context
    ) -> AsyncIterator[registry_pb2.WatchDomainsResponse]:
        async for batch in self._registry.watch(request.after_revision):
            yield registry_pb2.WatchDomainsResponse(
                changes=[
                    registry_pb2.DomainChange(
                        kind=_KIND_TO_PROTO[c.kind],
                        domain=self._domain(c.record),
                        revision=c.revision,
                    )
                    for c in batch.changes
                ],
                revision=batch.revision,
                reset=batch.reset,
            )

    async def GetRegistryStats(
        self, request: registry_pb2.GetRegistryStatsRequest, context: Context
    ) -> registry_pb2.GetRegistryStatsResponse:
        stats = self._registry.stats()
        return registry_pb2.GetRegistryStatsResponse(
            total_domains=stats.total,
            domains_by_status=stats.by_status,
            domains_by_capability=stats.by_capability,
            revision=stats.revision,
            leases_expired=stats.leases_expired,
            domains_reaped=stats.domains_reaped,
        )

    async def ReportSuspicion(
        self, request: registry_pb2.ReportSuspicionRequest, context: Context
    ) -> registry_pb2.ReportSuspicionResponse:
        suspicion, known = await self._federation.report(
            Report(
                observer_id=request.observer_id,
                suspect_id=request.suspect_id,
                incarnation=request.incarnation,
                confirmed=request.confirmed,
            )
        )
        response = registry_pb2.ReportSuspicionResponse(current_incarnation=known)
        if suspicion is not None:
            response.suspicion.CopyFrom(suspicion_to_proto(suspicion))
        return response

    async def Refute(
        self, request: registry_pb2.RefuteRequest, context: Context
    ) -> registry_pb2.RefuteResponse:
        outcome = await self._federation.refute(request.domain_id, request.incarnation)
        return registry_pb2.RefuteResponse(
            cleared=outcome.cleared, recovered=outcome.recovered, incarnation=outcome.incarnation
        )

    async def ListSuspicions(
        self, request: registry_pb2.ListSuspicionsRequest, context: Context
    ) -> registry_pb2.ListSuspicionsResponse:
        page, next_token = await self._federation.page(request.page_size, request.page_token)
        return registry_pb2.ListSuspicionsResponse(
            suspicions=[suspicion_to_proto(s) for s in page], next_page_token=next_token
        )


def _caller() -> str:
    """The authenticated principal of the call ("" when security is off)."""
    principal = current_principal()
    return principal.name if principal is not None else ""
