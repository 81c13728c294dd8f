"""Benchmark of the librarian: index throughput and Search latency at 100,000 documents,
beside the same queries on shared memory's search in the same run.

Generates 100,000 synthetic documents (a title, 10-60 words of text over a Zipf-like
vocabulary of 20,000 words, a source, metadata), starts the librarian server on loopback in
this process as it is deployed (SQLite, its shared port relaying gRPC), and indexes them
over gRPC with IndexBatch (batches of 500, two callers so that the server prepares one batch
while SQLite writes another): that is the index throughput. The same texts
are bulk-loaded into shared memory (its own bulk path), whose server runs beside it. Then
sequential calls: a common word (in about 20% of documents), a rare word (in 10), two
words, two words whose second changes every call (its document frequency is not cached
yet), the common word filtered by source, FindSimilar, and a no-op gRPC call (health
Check) as the baseline. Prints a table with p50/p99, then one JSON line with the figures.

Targets: index at least 2,000 documents/s; Search p50 under 10 ms.

Run: .venv/bin/python benchmarks/librarian.py [--documents N] [--calls N] [--batch N]
     [--clients N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grace.kernels.librarian.v1 import librarian_pb2 as pb
from grace.kernels.librarian.v1 import librarian_pb2_grpc
from grace.memory.v1 import memory_pb2, memory_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig, sqlite_url
from services.common.outbox import OutboxEvent
from services.common.server import GraceServer
from services.common.storage import Database
from services.kernels.librarian.config import LibrarianConfig
from services.kernels.librarian.librarian import COMPACT_WHEN_IDLE_S
from services.kernels.librarian.server import MAINTENANCE_INTERVAL_S, LibrarianServer
from services.memory.confidence import Evidence
from services.memory.config import MemoryConfig
from services.memory.memory import MemorySettings
from services.memory.model import Contribution
from services.memory.server import MemoryServer
from services.memory.store import MemoryStore
from services.memory.text import document

SOURCES = [f"domain_{i}" for i in range(10)]
COMMON_WORD = "timeout"
RARE_WORD = "zeppelin"
SECOND_WORD = "w1x"
RARE_COUNT = 10


class CountingPublisher:
    """Stands in for the event bus: accepts and counts announcements."""

    def __init__(self) -> None:
        self.count = 0

    async def publish(self, events: Sequence[OutboxEvent]) -> None:
        self.count += len(events)


def synthetic(n: int, rng: random.Random) -> list[pb.NewDocument]:
    """n documents over a Zipf-like vocabulary of 20,000 words."""
    vocabulary = [f"w{i}x" for i in range(20_000)]
    cumulative = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(vocabulary))))
    rare_at = set(rng.sample(range(n), RARE_COUNT))
    documents = []
    for i in range(n):
        title = rng.choices(vocabulary, cum_weights=cumulative, k=4)
        body = rng.choices(vocabulary, cum_weights=cumulative, k=rng.randint(10, 60))
        if rng.random() < 0.2:
            body.insert(rng.randrange(len(body)), COMMON_WORD)
        if i in rare_at:
            body.append(RARE_WORD)
        metadata = struct_pb2.Struct()
        metadata.update({"team": rng.choice(["ops", "db", "ml"]), "priority": rng.randint(1, 5)})
        documents.append(
            pb.NewDocument(
                id=f"doc-{i}",
                title=" ".join(title),
                text=" ".join(body),
                source=rng.choice(SOURCES),
                metadata=metadata,
            )
        )
    return documents


def contributions(documents: Sequence[pb.NewDocument]) -> list[tuple[Contribution, str]]:
    """The same texts as shared-memory contributions (type insight, default confidence)."""
    now = time.time()
    rows = []
    for d in documents:
        content = {"title": d.title, "text": d.text}
        c = Contribution(
            contribution_id=str(uuid.uuid4()),
            domain_id=d.source,
            contribution_type="insight",
            content=content,
            tags=(),
            initial_confidence=0.5,
            confidence=0.5,
            evidence=Evidence(0, 0, 0, 0),
            created_at=now,
            updated_at=now,
        )
        rows.append((c, document("insight", (), content)))
    return rows


async def timed(calls: int, make: Callable[[int], Awaitable[Any]]) -> list[float]:
    """Milliseconds of `calls` sequential awaits (after 20 warm-up calls)."""
    for i in range(20):
        await make(i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        await make(i)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(n: int, calls: int, batch: int, clients: int) -> dict[str, Any]:
    rng = random.Random(42)
    documents = synthetic(n, rng)
    common_matches = sum(1 for d in documents if f" {COMMON_WORD} " in f" {d.text} ")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = ServerConfig(
            service="librarian",
            port=0,
            data_dir=root,
            database_url=sqlite_url(root / "librarian.db"),
        )
        bus = CountingPublisher()
        librarian = LibrarianServer(
            LibrarianConfig(server=server, subscribe=False, registration=None), bus=bus
        )
        memory_url = sqlite_url(root / "memory.db")
        store = MemoryStore(Database(memory_url))
        await store.open()
        start = time.perf_counter()
        await store.bulk_insert(contributions(documents))
        memory_load_s = time.perf_counter() - start
        await store.close()
        memory_config = MemoryConfig(
            server=replace(server, service="memory", database_url=memory_url),
            settings=MemorySettings(),
        )
        memory = MemoryServer(memory_config, publisher=CountingPublisher())

        async with (
            GraceServer(librarian.grpc_config(), librarian),
            GraceServer(memory_config.server, memory) as memory_server,
            channel(f"127.0.0.1:{librarian.public_port}") as chan,
            channel(memory_server.address) as memory_chan,
        ):
            stub = librarian_pb2_grpc.LibrarianServiceStub(chan)
            memory_stub = memory_pb2_grpc.SharedMemoryServiceStub(memory_chan)
            health = health_pb2_grpc.HealthStub(chan)

            batches = [documents[at : at + batch] for at in range(0, n, batch)]

            async def feed(mine: Sequence[Sequence[pb.NewDocument]]) -> None:
                for part in mine:
                    await stub.IndexBatch(pb.IndexBatchRequest(documents=part))

            # `clients` callers each send every clients-th batch, one at a time: the server
            # prepares one batch while SQLite writes another.
            start = time.perf_counter()
            await asyncio.gather(*(feed(batches[i::clients]) for i in range(clients)))
            index_s = time.perf_counter() - start
            # The librarian compacts its index once writing pauses (checked every
            # MAINTENANCE_INTERVAL_S); query that steady state.
            await asyncio.sleep(COMPACT_WHEN_IDLE_S + 3 * MAINTENANCE_INTERVAL_S)
            compacted = librarian.librarian.store.uncompacted == 0

            def search(query: str, **kwargs: Any) -> Callable[[int], Awaitable[Any]]:
                return lambda i: stub.Search(pb.SearchRequest(query=query, **kwargs))

            def query(text: str) -> Callable[[int], Awaitable[Any]]:
                return lambda i: memory_stub.Query(memory_pb2.QueryRequest(query=text))

            two = f"{COMMON_WORD} {SECOND_WORD}"
            figures = {
                "noop": await timed(calls, lambda i: health.Check(health_pb2.HealthCheckRequest())),
                "search_common": await timed(calls, search(COMMON_WORD)),
                "memory_query_common": await timed(calls, query(COMMON_WORD)),
                "search_rare": await timed(calls, search(RARE_WORD)),
                "memory_query_rare": await timed(calls, query(RARE_WORD)),
                "search_two_words": await timed(calls, search(two)),
                "memory_query_two_words": await timed(calls, query(two)),
                "search_two_words_uncached": await timed(
                    calls, lambda i: stub.Search(pb.SearchRequest(query=f"{COMMON_WORD} w{i}x"))
                ),
                "search_common_by_source": await timed(
                    calls, search(COMMON_WORD, source=SOURCES[0])
                ),
                "find_similar": await timed(
                    calls // 3,
                    lambda i: stub.FindSimilar(pb.FindSimilarRequest(id=f"doc-{i * 7919 % n}")),
                ),
            }
            stats = await stub.GetLibrarianStats(pb.GetLibrarianStatsRequest())

    base = statistics.median(figures["noop"])
    print(
        f"librarian benchmark: {n:,} documents indexed over gRPC in batches of {batch} "
        f"({clients} callers) in "
        f"{index_s:.1f} s ({n / index_s:,.0f}/s; target >= 2,000/s); shared memory bulk load "
        f"{memory_load_s:.1f} s; index compacted: {compacted}; {calls} sequential calls each "
        f"({calls // 3} for similar), "
        "SQLite, loopback, one process"
    )
    print(
        f"common word '{COMMON_WORD}' in {common_matches:,} documents; rare word "
        f"'{RARE_WORD}' in {RARE_COUNT}; page size 50; target Search p50 < 10 ms"
    )
    print(f"{'call':<26}{'p50 ms':>10}{'p99 ms':>10}{'p50 / no-op':>14}")
    for name, samples in figures.items():
        p50 = statistics.median(samples)
        print(f"{name:<26}{p50:>10.2f}{pct(samples, 0.99):>10.2f}{p50 / base:>13.1f}x")
    result: dict[str, Any] = {
        "backend": "sqlite",
        "documents": n,
        "indexed": stats.documents,
        "index_per_s": round(n / index_s),
        "index_batch": batch,
        "index_clients": clients,
        "index_compacted": compacted,
        "memory_bulk_load_per_s": round(n / memory_load_s),
        "common_matches": common_matches,
        "rare_matches": RARE_COUNT,
        "announcements_published": bus.count,
    }
    for name, samples in figures.items():
        result[f"{name}_p50_ms"] = round(statistics.median(samples), 3)
        result[f"{name}_p99_ms"] = round(pct(samples, 0.99), 3)
    result["index_target_met"] = result["index_per_s"] >= 2000
    result["search_p50_target_met"] = all(
        result[f"{name}_p50_ms"] < 10
        for name in ("search_common", "search_rare", "search_two_words")
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--clients", type=int, default=2, help="concurrent IndexBatch callers")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.documents, args.calls, args.batch, args.clients))))
