"""Immutable log and signed-event figures, each beside a baseline measured in the same run.

1. Durable batched appends: AppendBatch over gRPC (1,000 entries per batch, 4 concurrent
   clients) to a real log server on SQLite (WAL, synchronous=FULL), against raw sqlite3
   inserts of rows of the same size in 1,000-row transactions. Target: >= 20,000 appends/s.
2. Inclusion proofs at 1,000,000 entries: generation by the log core from the complete
   subtree hashes in its SQLite store (the entry row and the O(log n) hashes; at the
   current size and at an earlier one, whose root comes in the same query) and offline
   verification, against rehashing the leaves once (what a log without stored internal
   nodes pays per proof). The 1M-entry store is written straight through the store's
   commit for the set-up. Target: generation < 5 ms. Also the log's start-up at 1M entries
   (it reads the tree's frontier) and its first start after an upgrade from a store
   without nodes (a back-fill of 1M), and GetInclusionProof over gRPC against a
   DescribeDomain call on the same server.
3. Event bus throughput with signature verification `reject` (keys from a real trust
   kernel, cached) against verification `off`, for: PublishBatch of 500 events carrying
   one batch signature (what EventBusPublisher sends; target on/off > 0.5), the same
   batches with a per-event signature on every event, and unary Publish of per-event
   signed events (one event per call, 50 concurrent publishers).

    python benchmarks/immutable_log.py [--appends N] [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from grace.domain.v1 import domain_pb2, domain_pb2_grpc
from grace.eventbus.v1 import event_pb2, eventbus_pb2, eventbus_pb2_grpc
from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from grace.kernels.immutable_log.v1 import immutable_log_pb2_grpc as pb_grpc
from grace.kernels.trust.v1 import trust_pb2, trust_pb2_grpc
from services.common.channels import channel
from services.common.config import ServerConfig
from services.common.event_signing import sign_event, sign_event_batch
from services.common.server import GraceServer
from services.common.signing import SigningKey
from services.common.storage import Database
from services.eventbus.config import EventBusConfig
from services.eventbus.model import BusSettings
from services.eventbus.server import EventBusServer
from services.kernels.immutable_log import store as log_store
from services.kernels.immutable_log.checkpoint import sign_checkpoint
from services.kernels.immutable_log.config import LogConfig
from services.kernels.immutable_log.log import ImmutableLog, LogSettings
from services.kernels.immutable_log.merkle import (
    MerkleFrontier,
    leaf_hash,
    node_hash,
    verify_inclusion,
)
from services.kernels.immutable_log.server import ImmutableLogServer
from services.kernels.trust import statements
from services.kernels.trust.config import TrustConfig
from services.kernels.trust.server import TrustServer
from services.kernels.trust.trust import TrustSettings

BATCH = 1000
CLIENTS = 4
MILLION = 1_000_000


def config(service: str, data_dir: Path) -> ServerConfig:
    return ServerConfig(
        service=service,
        host="127.0.0.1",
        port=0,
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / (service + '.db')}",
        shutdown_grace_s=0.5,
    )


def entries(start: int) -> list[pb.NewEntry]:
    batch = []
    for n in range(start, start + BATCH):
        entry = pb.NewEntry(kind="healing.decision", actor="guardian")
        entry.data.update({"n": n, "component": "registry", "action": "restart"})
        batch.append(entry)
    return batch


async def bench_appends(stub: pb_grpc.ImmutableLogServiceStub, total: int) -> tuple[float, int]:
    batches = total // BATCH
    queue = [entries(i * BATCH) for i in range(batches)]
    start = time.perf_counter()

    async def client(k: int) -> None:
        for batch in queue[k::CLIENTS]:
            await stub.AppendBatch(pb.AppendBatchRequest(entries=batch))

    await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    elapsed = time.perf_counter() - start
    return batches * BATCH / elapsed, batches * BATCH


def bench_raw_sqlite(total: int, row_bytes: int, path: Path) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (idx INTEGER PRIMARY KEY, data BLOB, hash BLOB)")
    payload = b"x" * row_bytes
    start = time.perf_counter()
    for first in range(0, total, BATCH):
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO t VALUES (?, ?, ?)",
            [(i, payload, hashlib.sha256(payload).digest()) for i in range(first, first + BATCH)],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return total / elapsed


async def build_store(url: str, key: SigningKey, origin: str) -> list[bytes]:
    """Writes a log of 1M small entries straight through the store's commit, 50,000 per
    transaction; returns the leaf hashes."""
    store = log_store.LogStore(Database(url))
    await store.open()
    frontier = MerkleFrontier()
    leaves: list[bytes] = []
    for first in range(0, MILLION, 50_000):
        rows = []
        for n in range(first, first + 50_000):
            data = n.to_bytes(8, "big")
            rows.append(log_store.NewRow(data, leaf_hash(data), "bench", "bench", 0.0))
        completed = frontier.extend(row.leaf_hash for row in rows)
        root = frontier.root()
        note = sign_checkpoint(origin, frontier.size, root, key.private_key)
        await store.commit(first, rows, [], log_store.Head(frontier.size, root, note), completed)
        leaves += [row.leaf_hash for row in rows]
    await store.close()
    return leaves


async def timed_open(url: str, key: SigningKey, origin: str) -> tuple[ImmutableLog, float]:
    log = ImmutableLog(log_store.LogStore(Database(url)), key, LogSettings(origin=origin))
    start = time.perf_counter()
    await log.open()
    elapsed = time.perf_counter() - start
    assert not log.startup_problem, log.startup_problem
    return log, elapsed


async def bench_proofs(data_dir: Path) -> dict[str, float]:
    url = f"sqlite+aiosqlite:///{data_dir / 'proofs.db'}"
    key, origin = SigningKey.generate(), "bench.example/proofs"
    start = time.perf_counter()
    leaves = await build_store(url, key, origin)
    build_s = time.perf_counter() - start
    log, open_s = await timed_open(url, key, origin)
    rng = random.Random(7)
    figures: dict[str, float] = {}
    # At the current size (1,000,000: not a power of two, so right-edge subtrees too) and
    # at an earlier size (its root is part of the proof's query).
    for name, size in (("current", MILLION), ("earlier", MILLION - 7)):
        root = (await log.checkpoint(size))[2]
        gen, ver = [], []
        for _ in range(1000):
            index = rng.randrange(size)
            t0 = time.perf_counter()
            _, _, proof, view, _note = await log.inclusion_proof(index, None, size)
            t1 = time.perf_counter()
            ok = verify_inclusion(view.leaf_hash, index, size, proof, root)
            t2 = time.perf_counter()
            assert ok
            assert view.leaf_hash == leaves[index]
            gen.append((t1 - t0) * 1e3)
            ver.append((t2 - t1) * 1e3)
        gen.sort()
        figures[f"gen_p50_ms_{name}"] = statistics.median(gen)
        figures[f"gen_p99_ms_{name}"] = gen[int(len(gen) * 0.99) - 1]
        figures["verify_p50_ms"] = statistics.median(ver)
    await log.close()
    # The first start of a store written before nodes were stored back-fills them.
    db = Database(url)
    async with db.transaction() as conn:
        await conn.run_sync(lambda sync: log_store.nodes.drop(sync))
    await db.close()
    log, backfill_s = await timed_open(url, key, origin)
    await log.close()
    # Baseline: rehash the leaves into a root once (a log without stored nodes does at
    # least this much per proof).
    t0 = time.perf_counter()
    level = leaves[: MILLION - 7]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    rehash_ms = (time.perf_counter() - t0) * 1e3
    return {
        **figures,
        "build_1m_s": build_s,
        "open_1m_s": open_s,
        "backfill_open_1m_s": backfill_s,
        "rehash_ms": rehash_ms,
    }


async def bench_grpc_proof(
    stub: pb_grpc.ImmutableLogServiceStub, domain: domain_pb2_grpc.DomainServiceStub, size: int
) -> tuple[float, float]:
    async def timed(call: Any, n: int = 500) -> float:
        for _ in range(50):
            await call()
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(samples)

    rng = random.Random(3)
    proof = await timed(
        lambda: stub.GetInclusionProof(pb.GetInclusionProofRequest(index=rng.randrange(size)))
    )
    noop = await timed(lambda: domain.DescribeDomain(domain_pb2.DescribeDomainRequest()))
    return proof, noop


def batch_signed_events(key: SigningKey, count: int, tag: str) -> list[event_pb2.Event]:
    """Events signed with one batch signature per PublishBatch of 500."""
    events = signed_events(key, count, tag)
    for first in range(0, count, 500):
        sign_event_batch(events[first : first + 500], key)
    return events


def signed_events(key: SigningKey, count: int, tag: str) -> list[event_pb2.Event]:
    """Events each with its own (per-event) signature."""
    events = []
    for n in range(count):
        event = event_pb2.Event(
            id=f"{tag}-{n}", event_type="ml.prediction", source_domain="ai_domain"
        )
        event.time.FromSeconds(1_800_000_000 + n)
        event.data.update({"n": n, "label": "cat", "confidence": 0.93})
        events.append(sign_event(event, key))
    return events


async def publish_unary(
    stub: eventbus_pb2_grpc.EventBusServiceStub, events: list[event_pb2.Event]
) -> None:
    """Publishes events one per call from 50 concurrent publishers."""

    async def publisher(k: int) -> None:
        for event in events[k::50]:
            await stub.Publish(
                eventbus_pb2.PublishRequest(
                    id=event.id,
                    event_type=event.event_type,
                    source_domain=event.source_domain,
                    time=event.time,
                    data=event.data,
                    signature=event.signature,
                    signature_key_id=event.signature_key_id,
                )
            )

    await asyncio.gather(*(publisher(k) for k in range(50)))


async def bench_bus(data_dir: Path, total: int) -> dict[str, float]:
    key = SigningKey.generate()
    trust = TrustServer(
        TrustConfig(
            server=config("trust", data_dir),
            settings=TrustSettings(),
            registry_address="127.0.0.1:9",
            registry_timeout_s=0.5,
            registration=None,
        )
    )
    results: dict[str, float] = {}
    async with GraceServer(trust.config.server, trust) as trust_server:
        async with channel(trust_server.address) as chan:
            stub = trust_pb2_grpc.TrustServiceStub(chan)
            challenge = (
                await stub.CreateChallenge(trust_pb2.CreateChallengeRequest(domain_id="ai_domain"))
            ).challenge
            body = statements.registration("ai_domain", key.public_key, challenge)
            await stub.RegisterIdentity(
                trust_pb2.RegisterIdentityRequest(
                    domain_id="ai_domain",
                    public_key=key.public_key,
                    challenge=challenge,
                    signature=statements.sign(key, statements.REGISTRATION, body),
                )
            )
        for mode in ("off", "reject"):
            bus = EventBusServer(
                EventBusConfig(
                    server=config(f"eventbus_{mode}", data_dir),
                    settings=BusSettings(retention_interval_s=3600),
                    registry_address="127.0.0.1:9",
                    verify_signatures=mode,
                    trust_address=trust_server.address,
                )
            )
            batched = {
                "": batch_signed_events(key, total, mode),
                "_per_event": signed_events(key, total, f"{mode}-per-event"),
            }
            unary = signed_events(key, total // 4, f"{mode}-unary")
            async with (
                GraceServer(bus.config.server, bus) as server,
                channel(server.address) as chan,
            ):
                bus_stub = eventbus_pb2_grpc.EventBusServiceStub(chan)
                await bus_stub.PublishBatch(
                    eventbus_pb2.PublishBatchRequest(events=signed_events(key, 10, "warm"))
                )
                for suffix, events in batched.items():
                    start = time.perf_counter()
                    for first in range(0, total, 500):
                        reply = await bus_stub.PublishBatch(
                            eventbus_pb2.PublishBatchRequest(events=events[first : first + 500])
                        )
                        stored = eventbus_pb2.PUBLISH_STATUS_STORED
                        assert all(r.status == stored for r in reply.results)
                    results[f"{mode}{suffix}"] = total / (time.perf_counter() - start)
                start = time.perf_counter()

                await publish_unary(bus_stub, unary)
                results[f"{mode}_unary"] = len(unary) / (time.perf_counter() - start)
    return results


async def main(appends: int, events: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        service = ImmutableLogServer(
            LogConfig(
                server=config("immutable_log", data_dir),
                settings=LogSettings(origin="bench.example/log"),
                key_file=data_dir / "log.key",
                registration=None,
            )
        )
        async with (
            GraceServer(service.config.server, service) as server,
            channel(server.address) as chan,
        ):
            stub = pb_grpc.ImmutableLogServiceStub(chan)
            rate, appended = await bench_appends(stub, appends)
            first = (await stub.GetEntries(pb.GetEntriesRequest())).entries[0]
            row_bytes = len(first.leaf_data)
            grpc_proof_ms, noop_ms = await bench_grpc_proof(
                stub, domain_pb2_grpc.DomainServiceStub(chan), appended
            )
            integrity = await stub.VerifyIntegrity(pb.VerifyIntegrityRequest())
            assert integrity.valid, integrity.reason
            assert integrity.checked == appended
        raw_rate = bench_raw_sqlite(appends, row_bytes, data_dir / "raw.db")
        proofs = await bench_proofs(data_dir)
        bus = await bench_bus(data_dir, events)
    return {
        "appends_per_s": rate,
        "raw_sqlite_inserts_per_s": raw_rate,
        "appends_vs_raw_sqlite": rate / raw_rate,
        "proof_gen_p50_ms_1m": proofs["gen_p50_ms_current"],
        "proof_gen_p99_ms_1m": proofs["gen_p99_ms_current"],
        "proof_gen_p50_ms_1m_earlier_size": proofs["gen_p50_ms_earlier"],
        "proof_gen_p99_ms_1m_earlier_size": proofs["gen_p99_ms_earlier"],
        "proof_verify_p50_ms": proofs["verify_p50_ms"],
        "rehash_1m_ms": proofs["rehash_ms"],
        "build_1m_store_s": proofs["build_1m_s"],
        "open_1m_s": proofs["open_1m_s"],
        "backfill_open_1m_s": proofs["backfill_open_1m_s"],
        "grpc_inclusion_proof_p50_ms": grpc_proof_ms,
        "grpc_noop_p50_ms": noop_ms,
        "bus_events_per_s_verify_off": bus["off"],
        "bus_events_per_s_verify_on": bus["reject"],
        "bus_verify_on_vs_off": bus["reject"] / bus["off"],
        "bus_per_event_signed_per_s_verify_off": bus["off_per_event"],
        "bus_per_event_signed_per_s_verify_on": bus["reject_per_event"],
        "bus_per_event_signed_verify_on_vs_off": bus["reject_per_event"] / bus["off_per_event"],
        "bus_unary_publish_per_s_verify_off": bus["off_unary"],
        "bus_unary_publish_per_s_verify_on": bus["reject_unary"],
        "bus_unary_verify_on_vs_off": bus["reject_unary"] / bus["off_unary"],
        "entries_appended": appended,
    }


def report(r: dict[str, Any]) -> None:
    rows = [
        (
            "durable appends/s (AppendBatch 1000 x 4 clients)",
            f"{r['appends_per_s']:,.0f}",
            ">= 20,000",
        ),
        (
            "  baseline: raw sqlite3 inserts/s, same rows",
            f"{r['raw_sqlite_inserts_per_s']:,.0f}",
            f"ratio {r['appends_vs_raw_sqlite']:.2f}",
        ),
        ("inclusion proof generation p50 @1M (ms)", f"{r['proof_gen_p50_ms_1m']:.3f}", "< 5"),
        ("inclusion proof generation p99 @1M (ms)", f"{r['proof_gen_p99_ms_1m']:.3f}", "< 5"),
        (
            "  at an earlier size, p50 (ms)",
            f"{r['proof_gen_p50_ms_1m_earlier_size']:.3f}",
            f"p99 {r['proof_gen_p99_ms_1m_earlier_size']:.3f}",
        ),
        ("inclusion proof verification p50 (ms)", f"{r['proof_verify_p50_ms']:.3f}", ""),
        (
            "  baseline: rehash 1M leaves once (ms)",
            f"{r['rehash_1m_ms']:,.0f}",
            f"ratio {r['rehash_1m_ms'] / r['proof_gen_p50_ms_1m']:,.0f}x slower",
        ),
        ("  set-up: write a 1M-entry store (s)", f"{r['build_1m_store_s']:.2f}", ""),
        ("log start-up @1M entries (s)", f"{r['open_1m_s']:.3f}", "reads the frontier"),
        (
            "  first start after upgrade @1M (s)",
            f"{r['backfill_open_1m_s']:.2f}",
            "back-fills the nodes",
        ),
        ("GetInclusionProof over gRPC p50 (ms)", f"{r['grpc_inclusion_proof_p50_ms']:.3f}", ""),
        (
            "  baseline: DescribeDomain no-op p50 (ms)",
            f"{r['grpc_noop_p50_ms']:.3f}",
            f"ratio {r['grpc_inclusion_proof_p50_ms'] / r['grpc_noop_p50_ms']:.2f}",
        ),
        (
            "bus events/s, PublishBatch 500, batch-signed, verification off",
            f"{r['bus_events_per_s_verify_off']:,.0f}",
            "",
        ),
        (
            "bus events/s, PublishBatch 500, batch-signed, verification on",
            f"{r['bus_events_per_s_verify_on']:,.0f}",
            f"ratio {r['bus_verify_on_vs_off']:.2f} (target > 0.5)",
        ),
        (
            "bus events/s, PublishBatch 500, per-event signed, verification off",
            f"{r['bus_per_event_signed_per_s_verify_off']:,.0f}",
            "",
        ),
        (
            "bus events/s, PublishBatch 500, per-event signed, verification on",
            f"{r['bus_per_event_signed_per_s_verify_on']:,.0f}",
            f"ratio {r['bus_per_event_signed_verify_on_vs_off']:.2f}",
        ),
        (
            "bus events/s, unary Publish (1 per call), verification off",
            f"{r['bus_unary_publish_per_s_verify_off']:,.0f}",
            "",
        ),
        (
            "bus events/s, unary Publish (1 per call), verification on",
            f"{r['bus_unary_publish_per_s_verify_on']:,.0f}",
            f"ratio {r['bus_unary_verify_on_vs_off']:.2f}",
        ),
    ]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure':<{width}}  {'value':>12}  note")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    figures = asyncio.run(main(args.appends, args.events))
    report(figures)
    print(json.dumps(figures))
