"""Conversions between epoch seconds (how cores keep time) and protobuf time types."""

from __future__ import annotations

from google.protobuf import duration_pb2, timestamp_pb2


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    """A Timestamp for epoch seconds; 0 stays the unset zero Timestamp."""
    stamp = timestamp_pb2.Timestamp()
    if seconds:
        stamp.seconds, stamp.nanos = divmod(round(seconds * 1e9), 1_000_000_000)
    return stamp


def from_timestamp(stamp: timestamp_pb2.Timestamp) -> float:
    """Epoch seconds of a Timestamp (0 when unset)."""
    return stamp.seconds + stamp.nanos / 1e9


def to_duration(seconds: float) -> duration_pb2.Duration:
    """A Duration of `seconds`."""
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


def from_duration(duration: duration_pb2.Duration) -> float:
    """Seconds of a Duration."""
    return duration.seconds + duration.nanos / 1e9
