"""The immutable log's actions as a domain (workflow steps) and its event intake.

- `append` {kind, actor, data} -> {index, leaf_hash, tree_size}; the step's idempotency key
  is the append's request id, so a retried step appends once. Its compensation appends a
  `compensation` entry that points at the original index: the log never deletes.
- `verify` {} -> the VerifyIntegrity report.
- `checkpoint` {tree_size?} -> {checkpoint, tree_size, root_hash}.
- `inclusion_proof` {index, tree_size?} -> {leaf_index, tree_size, hashes, checkpoint}.

Events pushed to the kernel through its bus push subscriptions (`EVENT_PATTERNS`:
Guardian's `healing.*` decisions, the orchestrator's final `workflow.completed` /
`workflow.rolled_back` events, which carry the execution proof's signed chain head, and
`governance.decision*`) are appended with kind = event type, actor = source domain, and
request id = "event:<source>:<event id>", so a redelivered event is recorded once; events
pushed together (DeliverEvents) are appended in their order in one commit. Anyone
can call the kernel's DeliverEvent, not only the bus, so each event's signature is checked
first by the bus's own rules (`services.common.event_verification`, reject mode): an event
claiming a source that has an identity (the orchestrator, Guardian, governance...) must be
signed by that source's key, or it is refused with PERMISSION_DENIED and not recorded.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format

from grace.eventbus.v1 import event_pb2
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.common.errors import InvalidArgument
from services.common.event_delivery import ACK, Handled, failed
from services.common.event_verification import EventVerifier
from services.kernels.domain import EventBatchHandler, EventHandler, KernelAction, dict_to_struct
from services.kernels.immutable_log.log import ImmutableLog

EVENT_PATTERNS = (
    "healing.*",
    "workflow.completed",
    "workflow.rolled_back",
    "governance.decision*",
)


def _int(value: Any, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise InvalidArgument(field, "must be an integer")
    return int(value)


def log_actions(log: ImmutableLog) -> dict[str, KernelAction]:
    """The actions of the immutable log kernel."""

    async def append(data: dict[str, Any], key: str) -> dict[str, Any]:
        entry = pb.EntryData(kind=str(data.get("kind", "")), actor=str(data.get("actor", "")))
        payload = data.get("data")
        if payload is not None:
            if not isinstance(payload, dict):
                raise InvalidArgument("input.data", "must be an object")
            entry.data.CopyFrom(dict_to_struct(payload))
        result = await log.append([entry], key.replace("/", ":"))
        return {
            "index": result.first_index,
            "leaf_hash": result.leaf_hashes[0].hex() if result.leaf_hashes else "",
            "tree_size": result.tree_size,
            "replayed": result.replayed,
        }

    async def compensate_append(
        data: dict[str, Any], output: dict[str, Any], key: str
    ) -> dict[str, Any]:
        entry = pb.EntryData(kind="compensation", actor=str(data.get("actor") or "orchestrator"))
        entry.data.update({"compensates_index": output.get("index"), "kind": data.get("kind")})
        result = await log.append([entry], key.replace("/", ":"))
        return {"index": result.first_index, "compensates_index": output.get("index")}

    async def verify(data: dict[str, Any], key: str) -> dict[str, Any]:
        report = await log.verify_integrity()
        return {
            "valid": report.valid,
            "checked": report.checked,
            "first_bad_index": report.first_bad_index,
            "reason": report.reason,
            "root_hash": report.root_hash.hex(),
        }

    async def checkpoint(data: dict[str, Any], key: str) -> dict[str, Any]:
        note, size, root = await log.checkpoint(_int(data.get("tree_size"), "input.tree_size"))
        return {"checkpoint": note, "tree_size": size, "root_hash": root.hex()}

    async def inclusion_proof(data: dict[str, Any], key: str) -> dict[str, Any]:
        index, size, path, _view, note = await log.inclusion_proof(
            _int(data.get("index"), "input.index"),
            None,
            _int(data.get("tree_size"), "input.tree_size"),
        )
        return {
            "leaf_index": index,
            "tree_size": size,
            "hashes": [h.hex() for h in path],
            "checkpoint": note,
        }

    return {
        "append": KernelAction(append, "Append an entry {kind, actor, data}", compensate_append),
        "verify": KernelAction(verify, "Recompute the log from storage (VerifyIntegrity)"),
        "checkpoint": KernelAction(checkpoint, "The signed checkpoint {tree_size?}"),
        "inclusion_proof": KernelAction(inclusion_proof, "Inclusion proof {index, tree_size?}"),
    }


def _entry(event: event_pb2.Event) -> tuple[pb.EntryData, str]:
    """The entry recording an event, and its request id (a redelivery is recorded once)."""
    entry = pb.EntryData(kind=event.event_type, actor=event.source_domain)
    if event.HasField("time"):
        entry.time.CopyFrom(event.time)
    record: dict[str, Any] = {
        "event_id": event.id,
        "sequence": event.sequence,
        "subject": event.subject,
        "data": json_format.MessageToDict(event.data),
    }
    if event.signature:
        # The producer's signature over the event, so the entry can be checked against
        # the source's key later (see services.common.event_signing).
        record["signature"] = base64.b64encode(event.signature).decode()
        record["signature_key_id"] = event.signature_key_id
        if event.signature_batch_size:
            # A batch signature: the entry keeps what checks it alone (leaf -> path ->
            # signed root).
            record["signature_leaf_index"] = event.signature_leaf_index
            record["signature_batch_size"] = event.signature_batch_size
            record["signature_inclusion_path"] = [
                base64.b64encode(p).decode() for p in event.signature_inclusion_path
            ]
    entry.data.update(record)
    return entry, f"event:{event.source_domain}:{event.id}"[:128]


def event_recorder(log: ImmutableLog, verifier: EventVerifier | None = None) -> EventHandler:
    """A DeliverEvent handler that appends each event once (request id = source + id),
    after `verifier` (when given) has accepted its signature."""

    async def record(event: event_pb2.Event) -> bool:
        if verifier is not None:
            await verifier.enforce(event)
        entry, request_id = _entry(event)
        await log.append([entry], request_id)
        return True

    return record


def batch_recorder(log: ImmutableLog, verifier: EventVerifier | None = None) -> EventBatchHandler:
    """A DeliverEvents handler: records the events, in order, as `event_recorder` does one,
    in one commit. It stops at the first event whose signature is refused (or whose append
    fails): the events before it are recorded, the ones after it are not handled."""

    async def record_all(events: Sequence[event_pb2.Event]) -> list[Handled]:
        accepted: list[tuple[pb.EntryData, str]] = []
        refused: Handled | None = None
        for event in events:
            try:
                if verifier is not None:
                    await verifier.enforce(event)
                accepted.append(_entry(event))
            except Exception as exc:
                refused = failed(exc)
                break
        # One append per event, each with its own request id, submitted together: the log's
        # group committer writes them in this order in one transaction.
        appended = await asyncio.gather(
            *(log.append([entry], request_id) for entry, request_id in accepted),
            return_exceptions=True,
        )
        results: list[Handled] = []
        for outcome in appended:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, Exception):
                return [*results, failed(outcome)]
            results.append(ACK)
        return results if refused is None else [*results, refused]

    return record_all
