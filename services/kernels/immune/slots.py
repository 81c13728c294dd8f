"""The traffic of the retention, slot by slot, kept compactly.

`TrafficWindow` keeps one `Slot` per `slot_s` of time that had traffic, and a window is the
sum of the slots it covers. With the default settings (10 s slots kept for an hour) that is
360 slots of every edge with traffic, and the hour fills up during the first hour of any
run, so what one slot-edge costs is what the kernel's heap grows by. As Python objects
(an `EdgeTally`, its `LatencyHistogram` with a list of 20 ints and two floats, and a key
tuple holding that report's own copies of the names) a slot-edge took about 640 bytes of
Python heap: 7.5 MB after an hour of a 34-edge topology. A `Slot` keeps the same numbers
in flat arrays instead, about 85 bytes a slot-edge (under 1 MB for that hour):

- per edge a row of integers, its errors then its bucket counts, in the narrowest array
  type that holds them: two bytes a value (ten seconds of one edge rarely reach 65,535 in
  one bucket), four or eight when a value needs them;
- per edge its latency sum and maximum, as doubles (exact, as before);
- the edges' keys, one shared copy of each for all slots (`SharedKeys`), and a key -> row
  lookup only for the slot being written (a slot whose time is over is only read).

Nothing is rounded or rolled up: a window's tallies are exactly those the objects gave,
so its figures, p99 (exact up to its bucket) and graph are unchanged. The only limit is
the wire's: a value of one slot that would pass 2**63 - 1 (the int64 the counts travel
in) stays at that maximum.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Mapping

from services.common.call_metrics import EdgeTally, TrafficKey
from services.common.latency_histogram import BUCKETS, LatencyHistogram
from services.kernels.immune.telemetry import TelemetrySettings

ROW = 1 + BUCKETS
"""Integers per edge in a slot: its errors, then its bucket counts."""

MAX_VALUE = 2**63 - 1
"""The largest count or error total a slot keeps (the wire's int64)."""

# Integer array types from the narrowest up, with the largest value each holds.
_INTEGER_TYPES = tuple(
    (code, min(MAX_VALUE, 2 ** (8 * array(code).itemsize) - 1)) for code in ("H", "I", "q")
)


def _integer_type(largest: int) -> str:
    """The narrowest array type holding `largest` (which is at most MAX_VALUE)."""
    return next(code for code, limit in _INTEGER_TYPES if largest <= limit)


class SharedKeys:
    """One copy of each edge key for every slot that holds the edge.

    The names of a reported edge are new string objects in each report, so without this
    every slot would keep its own copies. A key is forgotten with the last slot holding it,
    so the table holds only the edges of the retention.
    """

    def __init__(self) -> None:
        self._keys: dict[TrafficKey, TrafficKey] = {}
        self._holders: dict[TrafficKey, int] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def take(self, key: TrafficKey) -> TrafficKey:
        """The shared copy of `key`, for one more slot that holds it."""
        shared = self._keys.setdefault(key, key)
        self._holders[shared] = self._holders.get(shared, 0) + 1
        return shared

    def release(self, keys: Iterable[TrafficKey]) -> None:
        """A slot holding `keys` is gone."""
        for key in keys:
            holders = self._holders[key] - 1
            if holders:
                self._holders[key] = holders
            else:
                del self._holders[key]
                del self._keys[key]


class Slot:
    """The tallies of the edges with traffic in one slot (see the module's docstring)."""

    __slots__ = ("_counts", "_keys", "_latency", "_rows")

    def __init__(self) -> None:
        self._keys: list[TrafficKey] = []
        self._counts = array(_INTEGER_TYPES[0][0])
        """Row i at [i * ROW, (i + 1) * ROW): errors, then the bucket counts."""
        self._latency = array("d")
        """Row i at [2 * i, 2 * i + 2): latency sum and maximum in milliseconds."""
        self._rows: dict[TrafficKey, int] | None = {}
        """Row of each key; None once sealed (built again if the slot is written again)."""

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._lookup()

    @property
    def keys(self) -> list[TrafficKey]:
        """The slot's edges, in the order they came."""
        return self._keys

    @property
    def itemsize(self) -> int:
        """Bytes per count as kept now (2, 4 or 8)."""
        return self._counts.itemsize

    def _lookup(self) -> dict[TrafficKey, int]:
        if self._rows is None:
            self._rows = {key: row for row, key in enumerate(self._keys)}
        return self._rows

    def seal(self) -> None:
        """Drops the key lookup: the slot's time is over, it is only read from now on (a
        late write, after the clock stepped back, builds it again)."""
        self._rows = None

    def add(self, key: TrafficKey, tally: EdgeTally) -> EdgeTally:
        """Adds a tally to its edge's row (a new row for a new edge: pass the shared copy
        of its key); returns the edge's new total in the slot."""
        rows = self._lookup()
        row = rows.get(key)
        if row is None:
            row = rows[key] = len(self._keys)
            self._keys.append(key)
            self._counts.frombytes(bytes(self._counts.itemsize * ROW))
            self._latency.extend((0.0, 0.0))
        start = row * ROW
        latency = tally.latency
        totals = [
            old + new
            for old, new in zip(
                self._counts[start : start + ROW], (tally.errors, *latency.counts), strict=True
            )
        ]
        self._put(start, totals)
        self._latency[2 * row] += latency.sum_ms
        self._latency[2 * row + 1] = max(self._latency[2 * row + 1], latency.max_ms)
        return self.tally(row)

    def _put(self, start: int, values: list[int]) -> None:
        """Writes one row's integers, moving the slot to a wider array type first when
        one of them does not fit."""
        try:
            row = array(self._counts.typecode, values)
        except OverflowError:
            values = [min(v, MAX_VALUE) for v in values]
            self._counts = array(_integer_type(max(values)), self._counts)
            row = array(self._counts.typecode, values)
        self._counts[start : start + ROW] = row

    def tally(self, row: int) -> EdgeTally:
        """The tally of one row, as a new object."""
        start = row * ROW
        values = self._counts[start : start + ROW].tolist()
        return EdgeTally(
            values[0],
            LatencyHistogram(values[1:], self._latency[2 * row], self._latency[2 * row + 1]),
        )

    def add_into(self, total: dict[TrafficKey, EdgeTally]) -> None:
        """Adds the slot's tallies into `total`, edge by edge (new objects for new edges:
        `total` never shares anything with the slot)."""
        counts, latency = self._counts, self._latency
        for row, key in enumerate(self._keys):
            mine = total.get(key)
            if mine is None:
                total[key] = self.tally(row)
                continue
            start = row * ROW
            mine.errors += counts[start]
            buckets = mine.latency.counts
            for i, count in enumerate(counts[start + 1 : start + ROW]):
                buckets[i] += count
            mine.latency.sum_ms += latency[2 * row]
            mine.latency.max_ms = max(mine.latency.max_ms, latency[2 * row + 1])


class TrafficWindow:
    """The traffic of the last `retention_s`, in slots of `slot_s` (in memory; the kernel
    persists the slots `add` touches and `load`s them back after a restart).

    Args:
        settings: Slot width, retention and limits.
    """

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.slots: dict[float, Slot] = {}
        self.keys = SharedKeys()
        self.dropped = 0
        self._writing = -math.inf

    def slot_of(self, when: float) -> float:
        """Start of the slot holding `when`."""
        return math.floor(when / self.settings.slot_s) * self.settings.slot_s

    def _slot(self, start: float) -> Slot:
        """The slot starting at `start`, to write to; the one written before is sealed."""
        if start != self._writing:
            previous = self.slots.get(self._writing)
            if previous is not None:
                previous.seal()
            self._writing = start
        slot = self.slots.get(start)
        if slot is None:
            slot = self.slots[start] = Slot()
        return slot

    def add(
        self, traffic: Mapping[TrafficKey, EdgeTally], now: float
    ) -> tuple[float, dict[TrafficKey, EdgeTally]]:
        """Adds a report to the slot of `now`; returns that slot and the new totals of the
        edges it touched (what to persist). Edges beyond the slot's limit are dropped."""
        start = self.slot_of(now)
        slot = self._slot(start)
        touched: dict[TrafficKey, EdgeTally] = {}
        for key, tally in traffic.items():
            if key not in slot:
                if len(slot) >= self.settings.max_edges_per_slot:
                    self.dropped += 1
                    continue
                key = self.keys.take(key)
            touched[key] = slot.add(key, tally)
        return start, touched

    def load(self, start: float, key: TrafficKey, tally: EdgeTally) -> None:
        """Puts back one stored edge of one slot (each once, slot after slot)."""
        slot = self._slot(start)
        if key not in slot:
            key = self.keys.take(key)
        slot.add(key, tally)

    def prune(self, now: float) -> float:
        """Forgets the slots older than the retention; returns the cut-off."""
        cutoff = self.slot_of(now - self.settings.retention_s)
        for start in [s for s in self.slots if s < cutoff]:
            self.keys.release(self.slots.pop(start).keys)
        return cutoff

    def window(self, seconds: float, now: float) -> tuple[float, dict[TrafficKey, EdgeTally]]:
        """(start, merged traffic) of the window ending now: every slot that overlaps
        the last `seconds`, so the start is rounded down to a slot boundary."""
        start = self.slot_of(now - seconds)
        total: dict[TrafficKey, EdgeTally] = {}
        for s, slot in sorted(self.slots.items()):
            if start <= s <= now:
                slot.add_into(total)
        return start, total
