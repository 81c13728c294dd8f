"""Durable state of the trust kernel: keys and certifications."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    select,
    update,
)

from services.common.storage import Database
from services.kernels.trust.model import Certification, KeyRecord, KeyState, Level

metadata = MetaData()

keys = Table(
    "trust_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("domain_id", String(128), nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retired_at", Float, nullable=False),
    Column("revocation_reason", String(256), nullable=False),
    Index("trust_keys_domain", "domain_id"),
)

certifications = Table(
    "trust_certifications",
    metadata,
    Column("issuer", String(128), primary_key=True),
    Column("subject", String(128), primary_key=True),
    Column("level", String(16), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("key_id", String(16), nullable=False),
    Column("signature", LargeBinary, nullable=False),
)


@dataclass(frozen=True)
class Loaded:
    """Everything the kernel keeps in memory."""

    keys: list[KeyRecord]
    certifications: list[Certification]


class TrustStore:
    """Reads and writes trust state; every write is one transaction.

    Args:
        db: The database to use.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def open(self) -> None:
        """Creates the tables if missing."""
        await self.db.create_tables(metadata)

    async def close(self) -> None:
        """Closes the database."""
        await self.db.close()

    async def load(self) -> Loaded:
        """Every key and certification."""
        async with self.db.read() as conn:
            key_rows = await conn.execute(select(keys).order_by(keys.c.created_at))
            loaded_keys = [
                KeyRecord(
                    r.key_id,
                    r.domain_id,
                    bytes(r.public_key),
                    KeyState(r.state),
                    r.created_at,
                    r.retired_at,
                    r.revocation_reason,
                )
                for r in key_rows
            ]
            cert_rows = await conn.execute(select(certifications))
            loaded_certs = [
                Certification(
                    r.issuer,
                    r.subject,
                    Level(r.level),
                    int(r.issued_at),
                    r.key_id,
                    bytes(r.signature),
                )
                for r in cert_rows
            ]
        return Loaded(loaded_keys, loaded_certs)

    async def save_keys(self, changed: list[KeyRecord], created: list[KeyRecord]) -> None:
        """Updates the state of changed keys and inserts new ones, atomically."""
        async with self.db.transaction() as conn:
            for key in changed:
                await conn.execute(
                    update(keys)
                    .where(keys.c.key_id == key.key_id)
                    .values(
                        state=key.state.value,
                        retired_at=key.retired_at,
                        revocation_reason=key.revocation_reason,
                    )
                )
            for key in created:
                await conn.execute(
                    keys.insert().values(
                        key_id=key.key_id,
                        domain_id=key.domain_id,
                        public_key=key.public_key,
                        state=key.state.value,
                        created_at=key.created_at,
                        retired_at=key.retired_at,
                        revocation_reason=key.revocation_reason,
                    )
                )

    async def save_certification(self, cert: Certification) -> None:
        """Inserts or replaces the certification of (issuer, subject)."""
        row = {
            "issuer": cert.issuer,
            "subject": cert.subject,
            "level": cert.level.value,
            "issued_at": cert.issued_at,
            "key_id": cert.key_id,
            "signature": cert.signature,
        }
        stmt = self.db.insert(certifications).values(**row)
        stmt = stmt.on_conflict_do_update(
            index_elements=[certifications.c.issuer, certifications.c.subject],
            set_={k: v for k, v in row.items() if k not in ("issuer", "subject")},
        )
        async with self.db.transaction() as conn:
            await conn.execute(stmt)
