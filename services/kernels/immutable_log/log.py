"""The immutable log core: group-committed appends, reads, checkpoints, proofs, integrity.

The log's group committer owns the write path: concurrent `append` calls queue their
entries and it takes everything waiting (up to `max_batch_entries`) into one transaction,
which holds the rows, the tree nodes they complete, their request ids and the signed
tree head of the new size. Only then do the callers get their indexes.

Memory stays bounded however long the log grows: the log holds only the tree's right
frontier (`MerkleFrontier`, popcount(size) hashes), enough to append and to sign the
current root. Roots of earlier sizes and proofs read their O(log n) node hashes from the
store in one query. At start the frontier is read from the store (O(log n) rows, not every
leaf) and checked against the last signed head; a log written before nodes were stored
has them back-filled once, in bounded batches, first. A row missing or rewritten in the
middle of the log is therefore not noticed at start but by `verify_integrity`, which
rereads everything (and by any client whose proof then fails to verify).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace

from grace.kernels.immutable_log.v1 import immutable_log_pb2 as pb
from services.common import pagination, signing, telemetry
from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.common.group_commit import GroupCommitter
from services.common.validation import require_id
from services.kernels.immutable_log.checkpoint import sign_checkpoint, verifier_key
from services.kernels.immutable_log.integrity import IntegrityReport, IntegrityScan
from services.kernels.immutable_log.merkle import (
    MerkleFrontier,
    Node,
    Range,
    consistency_ranges,
    frontier_nodes,
    inclusion_ranges,
    leaf_hash,
    nodes_of,
    range_hashes,
)
from services.kernels.immutable_log.store import Head, LogStore, NewRow, StoredEntry

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("immutable_log")

Clock = Callable[[], float]
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
MAX_BATCH = 10_000
# Leaves read (and nodes written) per step when the tree is rebuilt from the leaves: bounds
# the memory of a back-fill and of an integrity check.
SCAN_CHUNK = 10_000


@dataclass(frozen=True)
class LogSettings:
    """Behaviour of the log.

    Attributes:
        origin: The checkpoint origin line and signing key name.
        max_batch_entries: Most entries one commit takes.
        max_entry_bytes: Largest serialized entry accepted.
    """

    origin: str = "grace.local/immutable-log"
    max_batch_entries: int = 20_000
    max_entry_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class AppendResult:
    """Where appended entries landed."""

    first_index: int
    leaf_hashes: list[bytes]
    tree_size: int
    replayed: bool = False


@dataclass(frozen=True)
class StoredView:
    """An entry as served: exact leaf bytes, the stored leaf hash, the decoded data."""

    index: int
    leaf_data: bytes
    leaf_hash: bytes
    data: pb.EntryData | None


@dataclass
class _Pending:
    rows: list[NewRow]
    request_id: str
    # The trace of the append's caller, so the group commit links to it.
    caller: otel_context.Context | None = None
    first_index: int = -1
    replay_of: _Pending | None = field(default=None, repr=False)


def encode_entry(entry: pb.EntryData, max_bytes: int = 1024 * 1024) -> NewRow:
    """Validates an entry and makes its exact leaf bytes (deterministic serialization)."""
    require_id("entry.kind", entry.kind, pattern=NAME_PATTERN)
    require_id("entry.actor", entry.actor, pattern=NAME_PATTERN)
    data = entry.SerializeToString(deterministic=True)
    if len(data) > max_bytes:
        raise InvalidArgument("entry", f"is {len(data)} bytes; the limit is {max_bytes}")
    when = entry.time.seconds + entry.time.nanos / 1e9
    return NewRow(data, leaf_hash(data), entry.kind, entry.actor, when)


class ImmutableLog:
    """The log. Call `open` before use and `close` at the end.

    Args:
        store: Durable storage.
        key: The log's Ed25519 signing key.
        settings: Behaviour.
        clock: Epoch seconds, for entries without a time.
    """

    def __init__(
        self,
        store: LogStore,
        key: signing.SigningKey,
        settings: LogSettings | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.settings = settings or LogSettings()
        self._key = key
        self.public_key = key.public_key
        self.verifier_key = verifier_key(self.settings.origin, self.public_key)
        self._clock = clock
        # The committed tree's frontier; a commit builds the next one on a copy and swaps it
        # in with `_latest` once the transaction is durable, so readers never see more.
        self._frontier = MerkleFrontier()
        self._latest = ""
        self._committer: GroupCommitter[_Pending, AppendResult] = GroupCommitter(
            self._commit,
            name="immutable-log-commit",
            max_batch_weight=self.settings.max_batch_entries,
            weight=lambda pending: len(pending.rows),
            closed_error=lambda: Unavailable("the immutable log is not accepting appends"),
            failed_error=lambda exc: Unavailable(f"append not committed: {exc}"),
        )
        self.startup_problem = ""

    @property
    def size(self) -> int:
        """Committed tree size."""
        return self._frontier.size

    @property
    def frontier(self) -> MerkleFrontier:
        """The committed tree's right frontier: all of the tree the log keeps in memory."""
        return self._frontier

    async def open(self) -> None:
        """Opens storage, back-fills tree nodes a log of an older version lacks, reads the
        frontier and checks it against the last signed head."""
        await self.store.open()
        self._frontier = await self._restore()
        size = self.size
        head = await self.store.head(size)
        if size and (head is None or head.root_hash != self._frontier.root()):
            self.startup_problem = self.startup_problem or (
                f"stored entries do not match the signed tree head of size {size}"
            )
            log.error("immutable log: %s; run VerifyIntegrity", self.startup_problem)
        self._latest = head.checkpoint if head else self._sign(size, self._frontier.root())
        self._committer.start()
        log.info("immutable log open: %d entries, origin %s", size, self.settings.origin)

    async def _restore(self) -> MerkleFrontier:
        size = await self.store.size()
        # Every node within the first `through` leaves is stored (the commit invariant).
        through = min(await self.store.nodes_stored_through(), size & ~1)
        if size - through >= 2:
            log.info("immutable log: storing the tree nodes of entries [%d, %d)", through, size)
            start = await self._stored_frontier(through)
            if start is not None:
                return await self._rebuild(start, store_nodes=True)
        else:
            stored = await self._stored_frontier(size)
            if stored is not None:
                return stored
        self.startup_problem = f"tree nodes of size {size} are missing from storage"
        log.error(
            "immutable log: %s; rebuilding the frontier from the leaves", self.startup_problem
        )
        return await self._rebuild(MerkleFrontier(), store_nodes=False)

    async def _stored_frontier(self, size: int) -> MerkleFrontier | None:
        wanted = frontier_nodes(size)
        stored = await self.store.hashes(set(wanted))
        if len(stored) != len(wanted):
            return None
        return MerkleFrontier(size, [stored[node] for node in wanted])

    async def _rebuild(self, frontier: MerkleFrontier, *, store_nodes: bool) -> MerkleFrontier:
        """Extends `frontier` with the stored leaves after it, a chunk at a time, storing
        the nodes they complete if asked; stops at the first missing entry."""
        async for chunk in self.store.leaf_hashes(frontier.size, SCAN_CHUNK):
            completed: list[tuple[int, int, bytes]] = []
            gap = False
            for index, leaf in chunk:
                if index != frontier.size:
                    gap = True
                    break
                completed += frontier.append(leaf)
            if store_nodes:
                await self.store.add_nodes(completed)
            if gap:
                self.startup_problem = f"entry {frontier.size} is missing from storage"
                log.error("immutable log: %s", self.startup_problem)
                break
        return frontier

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Commits what is queued (for at most `drain_timeout_s`), stops the committer and
        closes storage."""
        await self._committer.close(drain_timeout_s)
        await self.store.close()

    def _sign(self, size: int, root: bytes) -> str:
        return sign_checkpoint(self.settings.origin, size, root, self._key.private_key)

    # Appends ---------------------------------------------------------------------------

    async def append(self, items: Sequence[pb.EntryData], request_id: str = "") -> AppendResult:
        """Appends entries in order, atomically; returns once they are durable."""
        if not items:
            raise InvalidArgument("entries", "must not be empty")
        if len(items) > MAX_BATCH:
            raise InvalidArgument("entries", f"must have at most {MAX_BATCH} entries")
        if request_id:
            require_id("request_id", request_id, pattern=NAME_PATTERN)
        now = self._clock()
        rows = []
        for entry in items:
            if not entry.HasField("time"):
                entry.time.FromNanoseconds(int(now * 1e9))
            rows.append(encode_entry(entry, self.settings.max_entry_bytes))
        pending = _Pending(rows, request_id, caller=telemetry.capture_context())
        return await self._committer.submit(pending)

    async def _commit(self, batch: list[_Pending]) -> list[AppendResult | BaseException]:
        # One span for the group commit: a child of the first caller's span and linked to
        # every other caller's, so each append's trace shows its commit.
        with telemetry.batch_span(
            _tracer,
            "immutable_log.commit",
            [item.caller for item in batch],
            {
                "grace.log.entries": sum(len(item.rows) for item in batch),
                "grace.log.appends": len(batch),
            },
        ):
            return await self._commit_batch(batch)

    async def _commit_batch(self, batch: list[_Pending]) -> list[AppendResult | BaseException]:
        ids = [p.request_id for p in batch if p.request_id]
        earlier = await self.store.requests(ids) if ids else {}
        results: dict[int, AppendResult | BaseException] = {}
        fresh: list[_Pending] = []
        claimed: dict[str, _Pending] = {}
        for position, item in enumerate(batch):
            if item.request_id in earlier:
                first, count = earlier[item.request_id]
                results[position] = await self._replay(first, count)
            elif item.request_id in claimed:
                item.replay_of = claimed[item.request_id]
            else:
                if item.request_id:
                    claimed[item.request_id] = item
                fresh.append(item)
        if fresh:
            await self._write(fresh)
        for position, item in enumerate(batch):
            if position in results:
                continue
            origin = item.replay_of
            if origin is None:
                results[position] = AppendResult(
                    item.first_index, [row.leaf_hash for row in item.rows], self.size
                )
            else:
                results[position] = await self._replay(origin.first_index, len(origin.rows))
        return [results[position] for position in range(len(batch))]

    async def _write(self, fresh: list[_Pending]) -> None:
        """Appends the fresh items' rows, the nodes they complete, their request ids and the
        new signed head in one transaction; the frontier moves on only once it is durable."""
        start = self.size
        rows: list[NewRow] = []
        request_rows: list[tuple[str, int, int]] = []
        for item in fresh:
            item.first_index = start + len(rows)
            if item.request_id:
                request_rows.append((item.request_id, item.first_index, len(item.rows)))
            rows.extend(item.rows)
        frontier = self._frontier.copy()
        completed = frontier.extend(row.leaf_hash for row in rows)
        size, root = frontier.size, frontier.root()
        note = self._sign(size, root)
        await self.store.commit(start, rows, request_rows, Head(size, root, note), completed)
        self._frontier, self._latest = frontier, note

    async def _replay(self, first: int, count: int) -> AppendResult:
        size = self.size
        hashes = await self.store.leaf_hash_range(first, min(first + count, size))
        return AppendResult(first, hashes, size, replayed=True)

    # Reads -----------------------------------------------------------------------------

    async def entries(
        self, start: int, end: int, size: int, token: str
    ) -> tuple[list[StoredView], str]:
        """A page of entries in [start, end) (end 0 = current size) and the next token."""
        position = pagination.decode_token(token)
        if position is not None:
            start = int(position.get("next", start))
        if start < 0:
            raise InvalidArgument("start", "must not be negative")
        stop = min(end or self.size, self.size)
        if end < 0:
            raise InvalidArgument("end", "must not be negative")
        limit = pagination.page_size(size)
        upto = min(stop, start + limit)
        rows = await self.store.entries(start, upto) if start < upto else []
        # A served entry carries its leaf bytes and their decoded form: twice the bytes.
        views, cut = pagination.take_page(
            [self._view(r) for r in rows],
            limit,
            lambda view: 2 * len(view.leaf_data) + 96,
        )
        resume = views[-1].index + 1 if cut else upto
        next_token = pagination.encode_token({"next": resume}) if resume < stop else ""
        return views, next_token

    @staticmethod
    def _view(row: StoredEntry) -> StoredView:
        try:
            decoded: pb.EntryData | None = pb.EntryData.FromString(row.leaf_data)
        except DecodeError:
            decoded = None
        return StoredView(row.index, row.leaf_data, row.leaf_hash, decoded)

    async def checkpoint(self, size: int = 0) -> tuple[str, int, bytes]:
        """(signed note, size, root) for `size` (0 = current)."""
        size = self._checked_size("tree_size", size)
        frontier, latest = self._frontier, self._latest
        if size == frontier.size:
            return latest, size, frontier.root()
        [root] = await self._hashes([(0, size)], frontier)
        return self._sign(size, root), size, root

    async def _hashes(self, ranges: list[Range], frontier: MerkleFrontier) -> list[bytes]:
        """The hashes of `ranges` (all within the committed tree): the frontier's nodes
        from memory, every other one from the store in one query."""
        known = frontier.nodes()
        wanted = nodes_of(ranges) - known.keys()
        if wanted:
            known.update(await self.store.hashes(wanted))
        missing: list[Node] = sorted(wanted - known.keys())
        if missing:
            level, index = missing[0]
            raise FailedPrecondition(f"tree node {index} of level {level} is missing from storage")
        return range_hashes(ranges, known.__getitem__)

    def _checked_size(self, field_name: str, size: int) -> int:
        if size < 0:
            raise InvalidArgument(field_name, "must not be negative")
        if size > self.size:
            raise InvalidArgument(field_name, f"is beyond the tree size {self.size}")
        return size or self.size

    async def inclusion_proof(
        self, index: int | None, leaf: bytes | None, size: int
    ) -> tuple[int, int, list[bytes], StoredView, str]:
        """(index, size, audit path, entry, checkpoint) for an entry by index or leaf hash."""
        size = self._checked_size("tree_size", size)
        if leaf is not None:
            found = await self.store.index_of(leaf)
            if found is None or found >= self.size:
                raise NotFound("leaf", leaf.hex())
            index = found
        if index is None or not 0 <= index < size:
            raise InvalidArgument("index", f"must be in [0, {size}) for tree size {size}")
        frontier, latest = self._frontier, self._latest
        ranges = inclusion_ranges(index, size)
        if size != frontier.size:
            ranges.append((0, size))  # the root of an earlier size comes in the same query
        # The entry and the hashes are two reads on two connections: side by side, the
        # proof waits for one round trip, not two.
        rows, hashes = await asyncio.gather(
            self.store.entries(index, index + 1), self._hashes(ranges, frontier)
        )
        if not rows:
            raise FailedPrecondition(f"entry {index} is missing from storage")
        if size == frontier.size:
            path, note = hashes, latest
        else:
            *path, root = hashes
            note = self._sign(size, root)
        return index, size, path, self._view(rows[0]), note

    async def consistency_proof(self, first: int, second: int) -> tuple[int, int, list[bytes]]:
        """(first, second, proof) that tree `first` is a prefix of tree `second`."""
        second = self._checked_size("second_size", second)
        if not 0 < first <= second:
            raise InvalidArgument("first_size", f"must be in [1, {second}]")
        return first, second, await self._hashes(consistency_ranges(first, second), self._frontier)

    async def verify_integrity(self) -> IntegrityReport:
        """Recomputes every leaf hash, the tree and the root from storage and compares them
        with the signed heads and the stored nodes (see `integrity`)."""
        size = self.size
        check = IntegrityScan(self.store, SCAN_CHUNK)
        try:
            async for row in self.store.scan(SCAN_CHUNK):
                if row.index >= size or not await check.add(row):
                    break
            await check.finish(size)
        finally:
            await check.close()
        return check.report()
