"""Wires the librarian core, its intake, relay, servicers and HTTP front into the runtime."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format

from grace.domain.v1 import domain_pb2_grpc
from grace.eventbus.v1 import event_pb2
from grace.kernels.librarian.v1 import librarian_pb2 as pb
from grace.kernels.librarian.v1 import librarian_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from grace.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from services.common.bus_client import EventBusPublisher
from services.common.channels import channel
from services.common.config import ServerConfig
from services.common.errors import GraceError, InvalidArgument, NotFound, Unavailable
from services.common.outbox import OutboxRelay, Publisher, flush_and_close
from services.common.server import Service
from services.common.shared_port import SharedPort, http_error
from services.common.storage import Database
from services.common.subscriptions import Subscriptions
from services.kernels import domain
from services.kernels.librarian.config import CAPABILITIES, SERVICE, LibrarianConfig
from services.kernels.librarian.intake import Fetch, Incoming, Intake
from services.kernels.librarian.librarian import Librarian, scalar_text
from services.kernels.librarian.model import NewDocument
from services.kernels.librarian.servicer import (
    LibrarianServicer,
    hit_to_proto,
    search,
    stats_to_proto,
)
from services.kernels.registration import keep_registered, mounted, peer_health_of

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LibrarianService"].full_name
VERSION = "0.1.0"
PEER_TIMEOUT_S = 5.0
MAINTENANCE_INTERVAL_S = 1.0

log = logging.getLogger(__name__)


def _fetch(what: str, call: Any, request: Any, field: str) -> Fetch:
    """A Fetch over one unary RPC: NOT_FOUND is None, other failures Unavailable."""

    async def fetch(record_id: str) -> dict[str, Any] | None:
        try:
            response = await call(request(record_id), timeout=PEER_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise Unavailable(f"{what} {record_id}: {exc.code().name}: {exc.details()}") from None
        return json_format.MessageToDict(getattr(response, field), preserving_proto_field_name=True)

    return fetch


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class LibrarianServer(Service):
    """The librarian kernel as a Grace service.

    Args:
        config: Server and librarian settings. With `config.http`, the gRPC server runs on
            `grpc_config()` (loopback, a free port) and the configured port is a
            `SharedPort` serving gRPC and plain HTTP.
        bus: Publisher of events; None means the event bus at the configured address.
        schema: PostgreSQL schema (tests); None for the default.
    """

    def __init__(
        self,
        config: LibrarianConfig,
        *,
        bus: Publisher | None = None,
        schema: str | None = None,
    ) -> None:
        self.config = config
        self.peer_health = peer_health_of(config.registration, config.server.env)
        self.librarian = Librarian(Database(config.server.database_url, schema=schema))
        self.publisher = bus or EventBusPublisher(config.eventbus_address)
        self.relay = OutboxRelay(
            self.librarian.events, self.publisher, poll_interval_s=config.relay_interval_s
        )
        self.librarian.on_commit(self.relay.wake)
        self._channels: list[grpc.aio.Channel] = []
        self.intake: Intake | None = None
        self.subscriptions: Subscriptions | None = None
        self.front: SharedPort | None = None
        self.public_port = 0
        self._stopping = False

    def grpc_config(self) -> ServerConfig:
        """Where the gRPC server binds: the configured address, or with the HTTP front,
        a free loopback port behind it."""
        if not self.config.http:
            return self.config.server
        return dataclasses.replace(self.config.server, host="127.0.0.1", port=0)

    @property
    def patterns(self) -> list[str]:
        """Event patterns indexed from the bus (none when not subscribing)."""
        return list(self.config.patterns) if self.config.subscribe else []

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        librarian_pb2_grpc.add_LibrarianServiceServicer_to_server(
            LibrarianServicer(self.librarian, self.patterns), server
        )
        domain_pb2_grpc.add_DomainServiceServicer_to_server(
            domain.KernelDomainServicer(
                SERVICE,
                VERSION,
                CAPABILITIES,
                {
                    "index": domain.KernelAction(
                        self._index,
                        "Indexes a document: {id, text, title?, source?, metadata?}",
                        compensate=self._unindex,
                    ),
                    "search": domain.KernelAction(
                        self._search,
                        "Full-text search: {query, source?, metadata?: {k: v}, limit?}",
                    ),
                    "similar": domain.KernelAction(
                        self._similar, "Documents similar to a stored one: {id, limit?}"
                    ),
                    "delete": domain.KernelAction(self._delete, "Removes a document: {id}"),
                },
                on_event=self._on_event,
                event_patterns=self.patterns,
            ),
            server,
        )
        return [SERVICE_NAME, domain.SERVICE_NAME, *mounted(self.peer_health, server)]

    # -- DomainService actions ------------------------------------------------------------

    async def _index(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise InvalidArgument("input.metadata", "must be an object")
        document = NewDocument(
            document_id=str(data.get("id", "") or data.get("document_id", "")),
            text=str(data.get("text", "")),
            title=str(data.get("title", "")),
            source=str(data.get("source", "")),
            metadata=metadata,
        )
        (result,) = await self.librarian.index([document])
        return {"id": result.document_id, "created": result.created, "changed": result.changed}

    async def _unindex(
        self, data: dict[str, Any], output: dict[str, Any], idempotency_key: str
    ) -> dict[str, Any]:
        # Undoing an index step removes what it created; a replaced document stays (its
        # previous content is not kept).
        document_id = str(output.get("id", ""))
        removed = bool(output.get("created")) and await self.librarian.delete(
            document_id, missing_ok=True
        )
        return {"id": document_id, "removed": removed}

    async def _search(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        limit = data.get("limit", 10)
        if not isinstance(limit, int | float) or not 1 <= limit <= 1000:
            raise InvalidArgument("input.limit", "must be between 1 and 1000")
        filters = data.get("metadata") or {}
        if not isinstance(filters, dict):
            raise InvalidArgument("input.metadata", "must be an object of key: value")
        hits, _ = await self.librarian.search(
            str(data.get("query", "")),
            source=str(data.get("source", "")),
            metadata={str(k): scalar_text(v) for k, v in filters.items()},
            size=int(limit),
        )
        return {"hits": [_json(hit_to_proto(h)) for h in hits]}

    async def _similar(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        limit = data.get("limit", 10)
        if not isinstance(limit, int | float):
            raise InvalidArgument("input.limit", "must be a number")
        found_id, hits = await self.librarian.similar(
            str(data.get("id", "")), limit=int(limit), source=str(data.get("source", ""))
        )
        return {"id": found_id, "hits": [_json(hit_to_proto(h)) for h in hits]}

    async def _delete(self, data: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        document_id = str(data.get("id", ""))
        removed = await self.librarian.delete(document_id, missing_ok=True)
        return {"id": document_id, "removed": removed}

    async def _on_event(self, event: event_pb2.Event) -> bool:
        if self.intake is None:
            return False
        return await self.intake.take(
            Incoming(
                event_id=event.id,
                event_type=event.event_type,
                source_domain=event.source_domain,
                subject=event.subject,
                data=domain.struct_to_dict(event.data),
            )
        )

    # -- plain HTTP on the shared port ----------------------------------------------------

    async def _http(self, path: str, query: Mapping[str, list[str]]) -> tuple[int, Any]:
        path = path.rstrip("/") or "/"
        if path == "/health":
            if self._stopping:
                return 503, {"status": "not_serving", "kernel": SERVICE}
            return 200, {"status": "ok", "kernel": SERVICE}
        if self.config.server.security is not None:
            # Plain HTTP carries no credential: only health answers in a secure Grace;
            # search and stats are on the authenticated gateway (/librarian/...).
            return 401, http_error(
                401,
                f"{path}: in a secure Grace only /health answers here; use the gateway's "
                "/librarian routes with a bearer token",
            )
        try:
            if path in ("/search", "/librarian/search"):
                request = pb.SearchRequest(
                    query=_one(query, "query"),
                    source=_one(query, "source"),
                    metadata=query.get("metadata", []),
                    page_size=_integer(query, "page_size"),
                    page_token=_one(query, "page_token"),
                )
                return 200, _json(await search(self.librarian, request))
            if path in ("/stats", "/librarian/stats"):
                return 200, _json(stats_to_proto(await self.librarian.stats(), self.patterns))
        except GraceError as exc:
            status = 404 if isinstance(exc, NotFound) else 400
            return status, http_error(status, exc.message)
        return 404, http_error(404, f"{path}: served here are /health, /search, /stats")

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.librarian.open()
        config = self.config
        self.spawn(self.relay.run(), "librarian-relay")
        self.spawn(self._maintain(), "librarian-maintenance")
        memory = self._channel(config.memory_address)
        orchestrator = self._channel(config.orchestrator_address)
        self.intake = Intake(
            self.librarian,
            _fetch(
                "contribution",
                memory_pb2_grpc.SharedMemoryServiceStub(memory).GetContribution,
                lambda i: memory_pb2.GetContributionRequest(contribution_id=i),
                "contribution",
            ),
            _fetch(
                "execution",
                orchestrator_pb2_grpc.OrchestratorServiceStub(orchestrator).GetExecution,
                lambda i: orchestrator_pb2.GetExecutionRequest(execution_id=i),
                "execution",
            ),
        )
        self.public_port = self.bound_port
        if config.http:
            self.front = SharedPort(
                config.server.host, config.server.port, f"127.0.0.1:{self.bound_port}", self._http
            )
            self.public_port = await self.front.start()
            log.info(
                "librarian: gRPC and plain HTTP on %s:%d (gRPC server behind it on port %d)",
                config.server.host,
                self.public_port,
                self.bound_port,
            )
        if config.registration is not None:
            self.spawn(
                keep_registered(config.registration, self.public_port, self.peer_health),
                "librarian-registration",
            )
            if config.subscribe and config.patterns:
                # The bus pushes through the registry, so subscriptions need the
                # registration; creating them is idempotent and retried while the bus is down.
                bus = self._channel(config.eventbus_address)
                self.subscriptions = Subscriptions(bus, SERVICE, config.patterns)
                self.spawn(self.subscriptions.run(), "librarian-subscriptions")

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            try:
                if await self.librarian.maintain():
                    log.info("librarian: full-text index compacted")
            except Exception:
                log.exception("librarian: compacting the index failed; retrying later")

    def _channel(self, address: str) -> grpc.aio.Channel:
        chan = channel(address)
        self._channels.append(chan)
        return chan

    async def begin_shutdown(self) -> None:
        self._stopping = True

    async def stop(self) -> None:
        if self.front is not None:
            await self.front.close()
        await flush_and_close([self.relay], [self.publisher])
        for chan in self._channels:
            await chan.close()
        await self.librarian.close()


def _one(query: Mapping[str, list[str]], name: str) -> str:
    values = query.get(name, [])
    return values[-1] if values else ""


def _integer(query: Mapping[str, list[str]], name: str) -> int:
    text = _one(query, name)
    if not text:
        return 0
    if not text.isdigit() or len(text) > 9:
        raise InvalidArgument(name, "must be a non-negative integer")
    return int(text)
