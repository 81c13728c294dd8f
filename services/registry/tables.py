"""The registry's tables: one `MetaData` for the domains, the change log, the revision
counter, the federation's suspicions and the outbox, created together by `RegistryStore`."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

from services.common.outbox import outbox_table

metadata = MetaData()

domains = Table(
    "registry_domains",
    metadata,
    Column("domain_id", String(128), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("capabilities", JSON, nullable=False),
    Column("version", String(64), nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("lease_ttl_s", Float, nullable=False),
    Column("status", String(16), nullable=False),
    Column("load", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("success_rate", Float, nullable=False),
    Column("registered_at", Float, nullable=False),
    Column("last_heartbeat_at", Float, nullable=False),
    Column("lease_expires_at", Float, nullable=False),
    Column("revision", BigInteger, nullable=False),
    # The domain's instances, each with its lease (model.Instance.to_json). Both columns
    # came after the table: NULL in rows written before (see RegistryStore.open).
    Column("instances", JSON, nullable=True),
    # When the lease sweep next has work on the row (DomainRecord.sweep_due_at).
    Column("sweep_due_at", Float, nullable=True, index=True),
)

# Columns added to existing tables after their first release: `RegistryStore.open` adds
# them where a database lacks them.
ADDED_COLUMNS = {domains: ("instances", "sweep_due_at")}

changes = Table(
    "registry_changes",
    metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), nullable=False),
    Column("domain_id", String(128), nullable=False),
    Column("record", JSON, nullable=False),
)

state = Table(
    "registry_state",
    metadata,
    Column("key", String(32), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# The health federation's suspicions (see suspicions.py), shared by every instance so that
# reports reaching different instances count toward one quorum.
suspicions = Table(
    "registry_suspicions",
    metadata,
    Column("suspect_id", String(128), primary_key=True),
    Column("incarnation", BigInteger, nullable=False),
    Column("state", String(16), nullable=False),
    Column("suspecting", JSON, nullable=False),
    Column("confirming", JSON, nullable=False),
    Column("observers", JSON, nullable=False),
    Column("quorum", Integer, nullable=False),
    Column("suspected_at", Float, nullable=False),
    Column("confirmed_at", Float, nullable=False),
)

# The highest incarnation each federation member refuted with.
incarnations = Table(
    "registry_incarnations",
    metadata,
    Column("domain_id", String(128), primary_key=True),
    Column("incarnation", BigInteger, nullable=False),
)

# Lifecycle events for the bus, written in the same transaction as the change they announce.
outbox = outbox_table(metadata, "registry")
