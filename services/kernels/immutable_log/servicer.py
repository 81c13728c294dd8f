"""gRPC adapter of the immutable log: proto in, core call, proto out."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from services.kernels.immutable_log.log import ImmutableLog, StoredView

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def entry_data(entry: pb.NewEntry) -> pb.EntryData:
    """The record a new entry commits to."""
    data = pb.EntryData(kind=entry.kind, actor=entry.actor)
    if entry.HasField("time"):
        data.time.CopyFrom(entry.time)
    which = entry.WhichOneof("payload")
    if which == "data":
        data.data.CopyFrom(entry.data)
    elif which == "raw":
        data.raw = entry.raw
    return data


def entry_to_proto(view: StoredView) -> pb.Entry:
    """The wire form of a stored entry."""
    entry = pb.Entry(index=view.index, leaf_data=view.leaf_data, leaf_hash=view.leaf_hash)
    if view.data is not None:
        entry.data.CopyFrom(view.data)
    return entry


class ImmutableLogServicer(pb_grpc.ImmutableLogServiceServicer):
    """Serves `grace.kernels.immutable_log.v1.ImmutableLogService` over the core."""

    def __init__(self, log: ImmutableLog) -> None:
        self._log = log

    async def Append(self, request: pb.AppendRequest, context: Context) -> pb.AppendResponse:
        result = await self._log.append([entry_data(request.entry)], request.request_id)
        return pb.AppendResponse(
            index=result.first_index,
            leaf_hash=result.leaf_hashes[0] if result.leaf_hashes else b"",
            tree_size=result.tree_size,
            replayed=result.replayed,
        )

    async def AppendBatch(
        self, request: pb.AppendBatchRequest, context: Context
    ) -> pb.AppendBatchResponse:
        result = await self._log.append(
            [entry_data(e) for e in request.entries], request.request_id
        )
        return pb.AppendBatchResponse(
            first_index=result.first_index,
            leaf_hashes=result.leaf_hashes,
            tree_size=result.tree_size,
            replayed=result.replayed,
        )

    async def GetEntries(
        self, request: pb.GetEntriesRequest, context: Context
    ) -> pb.GetEntriesResponse:
        views, token = await self._log.entries(
            request.start, request.end, request.page_size, request.page_token
        )
        return pb.GetEntriesResponse(
            entries=[entry_to_proto(v) for v in views],
            next_page_token=token,
            tree_size=self._log.size,
        )

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: Context
    ) -> pb.GetCheckpointResponse:
        note, size, root = await self._log.checkpoint(request.tree_size)
        return pb.GetCheckpointResponse(
            checkpoint=note,
            tree_size=size,
            root_hash=root,
            origin=self._log.settings.origin,
            verifier_key=self._log.verifier_key,
            public_key=self._log.public_key,
        )

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: Context
    ) -> pb.GetInclusionProofResponse:
        which = request.WhichOneof("leaf")
        index, size, path, view, note = await self._log.inclusion_proof(
            request.index if which == "index" else None,
            request.leaf_hash if which == "leaf_hash" else None,
            request.tree_size,
        )
        return pb.GetInclusionProofResponse(
            leaf_index=index,
            tree_size=size,
            hashes=path,
            entry=entry_to_proto(view),
            checkpoint=note,
        )

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: Context
    ) -> pb.GetConsistencyProofResponse:
        first, second, path = await self._log.consistency_proof(
            request.first_size, request.second_size
        )
        return pb.GetConsistencyProofResponse(
            first_size=first,
            second_size=second,
            hashes=path,
            first_checkpoint=(await self._log.checkpoint(first))[0],
            second_checkpoint=(await self._log.checkpoint(second))[0],
        )

    async def VerifyIntegrity(
        self, request: pb.VerifyIntegrityRequest, context: Context
    ) -> pb.VerifyIntegrityResponse:
        report = await self._log.verify_integrity()
        return pb.VerifyIntegrityResponse(
            valid=report.valid,
            checked=report.checked,
            first_bad_index=report.first_bad_index,
            reason=report.reason,
            root_hash=report.root_hash,
        )
