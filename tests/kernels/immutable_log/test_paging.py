"""Entries of almost 1 MiB each come back in pages within the gRPC message limit."""

from __future__ import annotations

import grpc

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from services.kernels.immutable_log.server import ImmutableLogServer
from tests.kernels.immutable_log.test_servicer import served  # noqa: F401  # fixture

MESSAGE_LIMIT = 4 * 1024 * 1024


async def test_large_entries_come_back_in_pages_within_the_message_limit(
    served: tuple[ImmutableLogServer, grpc.aio.Channel],  # noqa: F811  # the fixture
) -> None:
    stub = pb_grpc.ImmutableLogServiceStub(served[1])
    for n in range(6):
        entry = pb.NewEntry(kind="bulk.record", actor="tester")
        entry.data.update({"n": n, "blob": "x" * 900_000})
        await stub.Append(pb.AppendRequest(entry=entry))
    indexes: list[int] = []
    token = ""
    for _ in range(10):
        page = await stub.GetEntries(pb.GetEntriesRequest(page_size=1000, page_token=token))
        assert page.ByteSize() < MESSAGE_LIMIT
        assert page.entries
        indexes.extend(e.index for e in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert indexes == list(range(6))
