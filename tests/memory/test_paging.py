"""Contributions of almost 1 MiB each come back in pages within the gRPC message limit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.memory.memory import MemorySettings
from services.memory.server import MemoryServer
from tests.memory.conftest import RecordingPublisher, memory_config
from tests.support import serving

MESSAGE_LIMIT = 4 * 1024 * 1024


async def test_large_contributions_list_and_query_in_pages_within_the_message_limit(
    tmp_path: Path,
) -> None:
    config = dataclasses.replace(
        memory_config(tmp_path), settings=MemorySettings(max_content_bytes=1024 * 1024)
    )
    service = MemoryServer(config, publisher=RecordingPublisher())
    async with serving(config.server, service) as (_, chan):
        stub = memory_pb2_grpc.SharedMemoryServiceStub(chan)
        for n in range(5):
            request = memory_pb2.ContributeRequest(
                domain_id="bulky", contribution_type="optimization", tags=["bulk"]
            )
            request.content.update({"n": n, "note": "bulk", "blob": "x" * 900_000})
            await stub.Contribute(request)
        listed: list[str] = []
        token = ""
        for _ in range(10):
            page = await stub.ListByDomain(
                memory_pb2.ListByDomainRequest(domain_id="bulky", page_size=50, page_token=token)
            )
            assert page.ByteSize() < MESSAGE_LIMIT
            assert page.contributions
            listed.extend(c.contribution_id for c in page.contributions)
            token = page.next_page_token
            if not token:
                break
        assert len(set(listed)) == len(listed) == 5
        found: list[str] = []
        token = ""
        for _ in range(10):
            results = await stub.Query(
                memory_pb2.QueryRequest(query="bulk", page_size=50, page_token=token)
            )
            assert results.ByteSize() < MESSAGE_LIMIT
            found.extend(r.contribution.contribution_id for r in results.results)
            token = results.next_page_token
            if not token:
                break
        assert sorted(found) == sorted(listed)
