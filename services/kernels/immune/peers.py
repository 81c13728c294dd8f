"""The immune kernel's peers over gRPC: Guardian heals, shared memory remembers.

`GuardianHealer` implements `remediation.Healer` with GuardianService (GetComponent to
check the target exists, Heal to run a playbook). `MemoryExperience` implements
`playbooks.Experience` with SharedMemoryService: one contribution per (anomaly kind,
playbook), of type `remediation_playbook`, created idempotently on first use, and one
Apply per outcome (success or failure), so memory's counts and confidence are the
playbook's track record for that kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from google.protobuf import struct_pb2

from grace.eventbus.v1 import eventbus_pb2, eventbus_pb2_grpc
from grace.guardian.v1 import guardian_pb2, guardian_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.backoff import Backoff, Retries
from services.common.channels import channel
from services.common.governance_client import DECISION_METADATA
from services.kernels.immune.model import PlaybookScore
from services.kernels.immune.remediation import ACTOR, HealResult

log = logging.getLogger(__name__)

CONTRIBUTION_TYPE = "remediation_playbook"
_PAGE = 1000


class GuardianHealer:
    """Runs playbooks through Guardian.

    Args:
        chan: Channel to Guardian.
        timeout_s: Deadline of a Heal call (a restart waits for the component to serve).
    """

    def __init__(self, chan: grpc.aio.Channel, *, timeout_s: float = 120.0) -> None:
        self._stub = guardian_pb2_grpc.GuardianServiceStub(chan)
        self.timeout_s = timeout_s

    async def known(self, component: str) -> bool:
        try:
            await self._stub.GetComponent(
                guardian_pb2.GetComponentRequest(component_name=component), timeout=10.0
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return False
            raise
        return True

    async def heal(self, component: str, playbook: str, decision_id: str = "") -> HealResult:
        # Guardian asks governance before healing; the decision the kernel already holds
        # saves it a second one (Guardian confirms it is for this very heal).
        metadata = [("x-actor", ACTOR)]
        if decision_id:
            metadata.append((DECISION_METADATA, decision_id))
        try:
            response = await self._stub.Heal(
                guardian_pb2.HealRequest(component_name=component, playbook=playbook),
                timeout=self.timeout_s,
                metadata=metadata,
            )
        except grpc.aio.AioRpcError as exc:
            return HealResult(False, f"guardian: {exc.code().name}: {exc.details()}")
        return HealResult(response.success, response.message or response.playbook)


class MemoryExperience:
    """Playbook outcomes as shared-memory contributions.

    Args:
        chan: Channel to shared memory.
        domain_id: Domain the contributions and applications are made as.
        timeout_s: Deadline of each call.
        contribution_type: Type of the contributions.
        subject: What `kind` names, in the contributions' summaries.
    """

    def __init__(
        self,
        chan: grpc.aio.Channel,
        *,
        domain_id: str = "immune",
        timeout_s: float = 5.0,
        contribution_type: str = CONTRIBUTION_TYPE,
        subject: str = "anomaly kind",
    ) -> None:
        self._stub = memory_pb2_grpc.SharedMemoryServiceStub(chan)
        self.domain_id = domain_id
        self.timeout_s = timeout_s
        self.contribution_type = contribution_type
        self.subject = subject
        self._ids: dict[tuple[str, str], str] = {}

    async def _contributions(self) -> list[memory_pb2.Contribution]:
        found: list[memory_pb2.Contribution] = []
        token = ""
        while True:
            page = await self._stub.ListByDomain(
                memory_pb2.ListByDomainRequest(
                    domain_id=self.domain_id,
                    contribution_type=self.contribution_type,
                    page_size=_PAGE,
                    page_token=token,
                ),
                timeout=self.timeout_s,
            )
            found.extend(page.contributions)
            token = page.next_page_token
            if not token:
                return found

    async def outcomes(self, kind: str, playbooks: Sequence[str]) -> dict[str, PlaybookScore]:
        wanted = set(playbooks)
        out: dict[str, PlaybookScore] = {}
        for c in await self._contributions():
            fields = c.content.fields
            if "kind" not in fields or "playbook" not in fields:
                continue
            c_kind = fields["kind"].string_value
            book = fields["playbook"].string_value
            self._ids[(c_kind, book)] = c.contribution_id
            if c_kind == kind and book in wanted:
                out[book] = PlaybookScore(
                    book, int(c.successful_applications), int(c.failed_applications)
                )
        return out

    async def _contribution_id(self, kind: str, playbook: str) -> str:
        known = self._ids.get((kind, playbook))
        if known:
            return known
        content = struct_pb2.Struct()
        content.update(
            {
                "kind": kind,
                "playbook": playbook,
                "summary": f"remediation playbook {playbook} for {self.subject} {kind}",
            }
        )
        response = await self._stub.Contribute(
            memory_pb2.ContributeRequest(
                domain_id=self.domain_id,
                contribution_type=self.contribution_type,
                content=content,
                tags=[
                    self.domain_id,
                    "remediation",
                    f"kind:{kind}"[:64],
                    f"playbook:{playbook}"[:64],
                ],
                initial_confidence=0.5,
                # The same request id for the same pair makes creation idempotent across
                # restarts and immune instances.
                request_id=f"{self.domain_id}-playbook:{kind}:{playbook}"[:128],
            ),
            timeout=self.timeout_s,
        )
        self._ids[(kind, playbook)] = response.contribution.contribution_id
        return response.contribution.contribution_id

    async def record(self, kind: str, playbook: str, success: bool, detail: str) -> None:
        contribution_id = await self._contribution_id(kind, playbook)
        await self._stub.Apply(
            memory_pb2.ApplyRequest(
                contribution_id=contribution_id,
                domain_id=self.domain_id,
                outcome=memory_pb2.OUTCOME_SUCCESS if success else memory_pb2.OUTCOME_FAILURE,
                detail=detail[:1000],
            ),
            timeout=self.timeout_s,
        )


async def keep_subscribed(
    bus_address: str, domain_id: str, patterns: Sequence[str], *, max_backoff_s: float = 30.0
) -> None:
    """Creates the kernel's push subscription to metric events on the bus (idempotent, by
    a fixed subscription id), retrying with backoff until the bus takes it."""
    retries = Retries(Backoff(1.0, max_s=max_backoff_s))
    async with channel(bus_address) as chan:
        stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
        while True:
            try:
                await stub.CreateSubscription(
                    eventbus_pb2.CreateSubscriptionRequest(
                        domain_id=domain_id,
                        patterns=list(patterns),
                        subscription_id=f"{domain_id}-metrics",
                    ),
                    timeout=5.0,
                )
                log.info("immune: subscribed to %s on the bus", ", ".join(patterns))
                return
            except grpc.aio.AioRpcError as exc:
                wait = retries.failed()
                log.warning(
                    "immune: subscribing on the bus at %s failed (%s); retrying in %.0fs",
                    bus_address,
                    exc.code().name,
                    wait,
                )
                await asyncio.sleep(wait)
