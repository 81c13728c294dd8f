"""Configuration of the event bus server.

Besides the common server settings (see `services.common.config`):

- `GRACE_EVENTBUS_RETENTION_MAX_AGE_S`: events older than this are deleted (604800 = 7
  days; 0 keeps them forever).
- `GRACE_EVENTBUS_RETENTION_MAX_COUNT`: at most this many events are kept (1000000; 0 means
  no limit).
- `GRACE_EVENTBUS_MAX_BATCH`: most events per PublishBatch (1000).
- `GRACE_EVENTBUS_MAX_DATA_BYTES`: largest serialized `data` of one event (1048576).
- `GRACE_EVENTBUS_READER_QUEUE`: events buffered per live subscriber before it falls back
  to reading the log (10000).
- `GRACE_EVENTBUS_READER_QUEUE_BYTES`: the same bound in bytes of the events as stored
  (67108864 = 64 MiB).
- `GRACE_EVENTBUS_PUSH_MAX_ATTEMPTS`: default attempts per pushed event before it becomes
  a dead letter (5).
- `GRACE_EVENTBUS_PUSH_INITIAL_BACKOFF_S` / `GRACE_EVENTBUS_PUSH_MAX_BACKOFF_S`: first
  and longest wait between push attempts (0.5 doubling to 30).
- `GRACE_EVENTBUS_PUSH_TIMEOUT_S`: deadline of one DeliverEvent(s) call (10).
- `GRACE_EVENTBUS_PUSH_BATCH`: most events pushed to a domain in one DeliverEvents call
  when several are waiting (100; 1 sends one event per DeliverEvent call).
- `GRACE_REGISTRY_ADDR`: where push delivery resolves domains (127.0.0.1:8102).
- `GRACE_IMMUNE_ADDR`: when set (as `grace up` does), publishes and push deliveries are
  reported to the immune kernel's telemetry every `GRACE_EVENTBUS_METRICS_INTERVAL_S` (5).
- `GRACE_EVENTBUS_VERIFY_SIGNATURES`: `reject` (the default: an unsigned or forged event
  claiming a source that has a registered identity is refused with PERMISSION_DENIED;
  unsigned events from sources without an identity are still accepted), `flag` (log and
  count such events, accept them) or `off`. Keys come from the trust kernel at `GRACE_TRUST_ADDR`
  (127.0.0.1:8112), cached `GRACE_EVENTBUS_KEY_CACHE_TTL_S` seconds (30).

Where events live (see docs/eventbus.md, "Backends"):

- `GRACE_EVENTBUS_BACKEND`: `sql` (the default: the bus's own tables in its database) or
  NATS JetStream as one or more comma-separated URLs (`nats://host:4222`,
  `tls://host:4222`; user and password may be in the URL). On NATS, durable consumers,
  push subscriptions and dead letters live in JetStream too, and the bus uses no database.
- `GRACE_EVENTBUS_NATS_STREAM` (`GRACE_EVENTS`) and `GRACE_EVENTBUS_NATS_SUBJECT_PREFIX`
  (`grace.events`): the stream and its subjects.
- `GRACE_EVENTBUS_NATS_CREDS`: a NATS credentials file (JWT and NKey seed).
- `GRACE_EVENTBUS_NATS_TLS`: use TLS (false; implied by the next three).
  `GRACE_EVENTBUS_NATS_TLS_CA`, `GRACE_EVENTBUS_NATS_TLS_CERT`, `GRACE_EVENTBUS_NATS_TLS_KEY`:
  the CA that verifies the server, and a client certificate and key.
- `GRACE_EVENTBUS_NATS_DUPLICATE_WINDOW_S`: how long JetStream suppresses a repeated event
  id (120).
- `GRACE_EVENTBUS_NATS_REPLICAS`: stream replicas (1).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import (
    DEFAULT_PORTS,
    ConfigError,
    EnvReader,
    ServerConfig,
    peer_address,
    reporting_address,
)
from services.common.event_delivery import MAX_DELIVER_EVENTS
from services.common.event_verification import MODES
from services.eventbus.jetstream import JetStreamOptions
from services.eventbus.model import DEFAULT_READER_QUEUE_BYTES, BusSettings

SERVICE = "eventbus"


@dataclass(frozen=True)
class EventBusConfig:
    """Everything the event bus server reads at start-up."""

    server: ServerConfig
    settings: BusSettings
    registry_address: str
    verify_signatures: str = "reject"
    trust_address: str = "127.0.0.1:8112"
    key_cache_ttl_s: float = 30.0
    jetstream: JetStreamOptions | None = None
    immune_address: str = ""
    metrics_interval_s: float = 5.0

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, flags: argparse.Namespace | None = None
    ) -> EventBusConfig:
        """Reads the config from `env` (default os.environ) and parsed flags."""
        env = dict(os.environ if env is None else env)
        r = EnvReader(env)
        p = "GRACE_EVENTBUS_"
        initial = r.number(f"{p}PUSH_INITIAL_BACKOFF_S", 0.5, minimum=0.001, maximum=3600)
        return cls(
            server=ServerConfig.from_env(SERVICE, DEFAULT_PORTS[SERVICE], env, flags),
            settings=BusSettings(
                retention_max_age_s=r.number(
                    f"{p}RETENTION_MAX_AGE_S", 7 * 86400.0, minimum=0, maximum=10 * 365 * 86400
                ),
                retention_max_count=r.integer(
                    f"{p}RETENTION_MAX_COUNT", 1_000_000, minimum=0, maximum=10**12
                ),
                max_batch=r.integer(f"{p}MAX_BATCH", 1000, minimum=1, maximum=10_000),
                max_data_bytes=r.integer(
                    f"{p}MAX_DATA_BYTES", 1024 * 1024, minimum=1024, maximum=64 * 1024 * 1024
                ),
                reader_queue_limit=r.integer(
                    f"{p}READER_QUEUE", 10_000, minimum=10, maximum=10_000_000
                ),
                reader_queue_bytes=r.integer(
                    f"{p}READER_QUEUE_BYTES",
                    DEFAULT_READER_QUEUE_BYTES,
                    minimum=1024 * 1024,
                    maximum=64 * 1024 * 1024 * 1024,
                ),
                push_max_attempts=r.integer(f"{p}PUSH_MAX_ATTEMPTS", 5, minimum=1, maximum=100),
                push_initial_backoff_s=initial,
                push_max_backoff_s=r.number(
                    f"{p}PUSH_MAX_BACKOFF_S", 30.0, minimum=initial, maximum=86400
                ),
                push_timeout_s=r.number(f"{p}PUSH_TIMEOUT_S", 10.0, minimum=0.01, maximum=600),
                push_batch=r.integer(f"{p}PUSH_BATCH", 100, minimum=1, maximum=MAX_DELIVER_EVENTS),
            ),
            registry_address=peer_address(env, "registry"),
            verify_signatures=r.choice(f"{p}VERIFY_SIGNATURES", "reject", MODES),
            trust_address=peer_address(env, "trust"),
            key_cache_ttl_s=r.number(f"{p}KEY_CACHE_TTL_S", 30.0, minimum=0.1, maximum=86400),
            jetstream=_jetstream(r),
            immune_address=reporting_address(env, "immune"),
            metrics_interval_s=r.number(f"{p}METRICS_INTERVAL_S", 5.0, minimum=0.1, maximum=3600),
        )


def _jetstream(r: EnvReader) -> JetStreamOptions | None:
    """The JetStream options when `GRACE_EVENTBUS_BACKEND` names NATS servers."""
    name = "GRACE_EVENTBUS_BACKEND"
    backend = r.text(name, "sql").strip()
    if backend == "sql":
        return None
    servers = tuple(url.strip() for url in backend.split(",") if url.strip())
    if not servers or not all(url.startswith(("nats://", "tls://")) for url in servers):
        raise ConfigError(f"{name}={backend!r}: expected sql or nats:// (or tls://) URLs")
    p = "GRACE_EVENTBUS_NATS_"
    prefix = r.text(f"{p}SUBJECT_PREFIX", "grace.events")
    if not prefix or any(not part or part in ("*", ">") for part in prefix.split(".")):
        raise ConfigError(f"{p}SUBJECT_PREFIX={prefix!r}: expected dot-separated names")
    return JetStreamOptions(
        servers=servers,
        stream=r.text(f"{p}STREAM", "GRACE_EVENTS"),
        subject_prefix=prefix,
        creds_file=r.text(f"{p}CREDS", ""),
        tls=r.flag(f"{p}TLS", any(url.startswith("tls://") for url in servers)),
        tls_ca=r.text(f"{p}TLS_CA", ""),
        tls_cert=r.text(f"{p}TLS_CERT", ""),
        tls_key=r.text(f"{p}TLS_KEY", ""),
        duplicate_window_s=r.number(f"{p}DUPLICATE_WINDOW_S", 120.0, minimum=1, maximum=7 * 86400),
        replicas=r.integer(f"{p}REPLICAS", 1, minimum=1, maximum=5),
    )
