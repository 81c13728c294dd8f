"""The immutable log core: group-committed appends, reads, checkpoints, proofs, integrity.

The log's group committer owns the write path: concurrent `append` calls queue their
entries and it takes everything waiting (up to `max_batch_entries`) into one transaction,
which holds the rows, their request ids and the signed tree head of the new size. Only
then do the callers get their indexes. The in-memory `MerkleTree` mirrors the committed
leaf hashes and answers roots and proofs; it is rebuilt from storage at start and checked
against the last signed head.
"""

from __future__ import annotations

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
from services.kernels.immutable_log.merkle import MerkleTree, leaf_hash
from services.kernels.immutable_log.store import Head, LogStore, NewRow

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("immutable_log")

Clock = Callable[[], float]
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
MAX_BATCH = 10_000


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
    """An entry as served: exact leaf bytes, the committed leaf hash, the decoded data."""

    index: int
    leaf_data: bytes
    leaf_hash: bytes
    data: pb.EntryData | None


@dataclass(frozen=True)
class IntegrityReport:
    """Result of recomputing the log from storage."""

    valid: bool
    checked: int
    first_bad_index: int
    reason: str
    root_hash: bytes


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
        self._tree = MerkleTree()
        self._size = 0  # committed size; the tree may briefly hold more during a commit
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
        return self._size

    async def open(self) -> None:
        """Opens storage, rebuilds the tree and checks it against the last signed head."""
        await self.store.open()
        async for index, leaf in self.store.leaf_hashes():
            if index != self._tree.size:
                self.startup_problem = f"entry {self._tree.size} is missing from storage"
                log.error("immutable log: %s", self.startup_problem)
                break
            self._tree.append(leaf)
        self._size = self._tree.size
        head = await self.store.head(self._size)
        if self._size and (head is None or head.root_hash != self._tree.root()):
            self.startup_problem = self.startup_problem or (
                f"stored entries do not match the signed tree head of size {self._size}"
            )
            log.error("immutable log: %s; run VerifyIntegrity", self.startup_problem)
        self._latest = head.checkpoint if head else self._sign(self._size)
        self._committer.start()
        log.info("immutable log open: %d entries, origin %s", self._size, self.settings.origin)

    async def close(self, drain_timeout_s: float = 10.0) -> None:
        """Commits what is queued (for at most `drain_timeout_s`), stops the committer and
        closes storage."""
        await self._committer.close(drain_timeout_s)
        await self.store.close()

    def _sign(self, size: int) -> str:
        return sign_checkpoint(
            self.settings.origin, size, self._tree.root(size), self._key.private_key
        )

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
                results[position] = self._replay(first, count)
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
                    item.first_index, [row.leaf_hash for row in item.rows], self._size
                )
            else:
                results[position] = self._replay(origin.first_index, len(origin.rows))
        return [results[position] for position in range(len(batch))]

    async def _write(self, fresh: list[_Pending]) -> None:
        """Appends the fresh items' rows, their request ids and the new signed head in one
        transaction; the in-memory tree is rolled back when that fails."""
        start = self._size
        rows: list[NewRow] = []
        request_rows: list[tuple[str, int, int]] = []
        for item in fresh:
            item.first_index = start + len(rows)
            if item.request_id:
                request_rows.append((item.request_id, item.first_index, len(item.rows)))
            rows.extend(item.rows)
        self._tree.extend(row.leaf_hash for row in rows)
        size = self._tree.size
        try:
            note = self._sign(size)
            await self.store.commit(
                start, rows, request_rows, Head(size, self._tree.root(size), note)
            )
        except BaseException:
            self._tree.truncate(start)
            raise
        self._size, self._latest = size, note

    def _replay(self, first: int, count: int) -> AppendResult:
        hashes = [self._tree.leaf(i) for i in range(first, min(first + count, self._size))]
        return AppendResult(first, hashes, self._size, replayed=True)

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
        stop = min(end or self._size, self._size)
        if end < 0:
            raise InvalidArgument("end", "must not be negative")
        limit = pagination.page_size(size)
        upto = min(stop, start + limit)
        rows = await self.store.entries(start, upto) if start < upto else []
        # A served entry carries its leaf bytes and their decoded form: twice the bytes.
        views, cut = pagination.take_page(
            [self._view(r.index, r.leaf_data) for r in rows],
            limit,
            lambda view: 2 * len(view.leaf_data) + 96,
        )
        resume = views[-1].index + 1 if cut else upto
        next_token = pagination.encode_token({"next": resume}) if resume < stop else ""
        return views, next_token

    def _view(self, index: int, data: bytes) -> StoredView:
        try:
            decoded: pb.EntryData | None = pb.EntryData.FromString(data)
        except DecodeError:
            decoded = None
        return StoredView(index, data, self._tree.leaf(index), decoded)

    def checkpoint(self, size: int = 0) -> tuple[str, int, bytes]:
        """(signed note, size, root) for `size` (0 = current)."""
        size = self._checked_size("tree_size", size)
        note = self._latest if size == self._size else self._sign(size)
        return note, size, self._tree.root(size)

    def _checked_size(self, field_name: str, size: int) -> int:
        if size < 0:
            raise InvalidArgument(field_name, "must not be negative")
        if size > self._size:
            raise InvalidArgument(field_name, f"is beyond the tree size {self._size}")
        return size or self._size

    async def inclusion_proof(
        self, index: int | None, leaf: bytes | None, size: int
    ) -> tuple[int, int, list[bytes], StoredView, str]:
        """(index, size, audit path, entry, checkpoint) for an entry by index or leaf hash."""
        size = self._checked_size("tree_size", size)
        if leaf is not None:
            found = await self.store.index_of(leaf)
            if found is None or found >= self._size:
                raise NotFound("leaf", leaf.hex())
            index = found
        if index is None or not 0 <= index < size:
            raise InvalidArgument("index", f"must be in [0, {size}) for tree size {size}")
        rows = await self.store.entries(index, index + 1)
        if not rows:
            raise FailedPrecondition(f"entry {index} is missing from storage")
        path = self._tree.inclusion_proof(index, size)
        note = self.checkpoint(size)[0]
        return index, size, path, self._view(index, rows[0].leaf_data), note

    def consistency_proof(self, first: int, second: int) -> tuple[int, int, list[bytes]]:
        """(first, second, proof) that tree `first` is a prefix of tree `second`."""
        second = self._checked_size("second_size", second)
        if not 0 < first <= second:
            raise InvalidArgument("first_size", f"must be in [1, {second}]")
        return first, second, self._tree.consistency_proof(first, second)

    async def verify_integrity(self) -> IntegrityReport:
        """Recomputes every leaf hash and the root from storage (see the module docs)."""
        size, expected = self._size, 0
        fresh = MerkleTree()
        bad, reason = -1, ""
        async for row in self.store.scan():
            if row.index >= size:
                break
            if row.index != expected:
                bad, reason = expected, f"entry {expected} is missing from storage"
                break
            recomputed = leaf_hash(row.leaf_data)
            if recomputed != row.leaf_hash:
                bad, reason = row.index, "leaf data does not match its stored leaf hash"
                break
            if recomputed != self._tree.leaf(row.index):
                bad, reason = row.index, "leaf data does not match the hash committed at append"
                break
            fresh.append(recomputed)
            expected += 1
        if bad < 0 and expected < size:
            bad, reason = expected, f"entry {expected} is missing from storage"
        if bad < 0:
            bad, reason = await self._check_heads(fresh)
        root = fresh.root() if bad < 0 else b""
        return IntegrityReport(bad < 0, expected, bad, reason, root)

    async def _check_heads(self, fresh: MerkleTree) -> tuple[int, str]:
        # Rows rewritten together with their hash column still disagree with the signed
        # heads: the first head that does not match bounds where the rewrite starts.
        latest = await self.store.head(fresh.size)
        if fresh.size == 0 or (latest is not None and latest.root_hash == fresh.root()):
            return -1, ""
        previous = 0
        for head in await self.store.heads():
            if head.tree_size > fresh.size:
                break
            if head.root_hash != fresh.root(head.tree_size):
                return previous, (
                    f"entries [{previous}, {head.tree_size}) do not match the signed tree head "
                    f"of size {head.tree_size}"
                )
            previous = head.tree_size
        return previous, f"no signed tree head matches size {fresh.size}"
