"""The librarian's tables and how rows map to documents.

`librarian_documents` holds each document (on PostgreSQL with the tsvector of the
full-text index, fields weighted A title, B text, C metadata), `librarian_metadata` the
filterable metadata entries, plus the outbox. SQLite's full-text index is the FTS5 table
`librarian_search` (see `store.py`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import TSVECTOR

from services.common.outbox import outbox_table
from services.kernels.librarian.model import Document

metadata = MetaData()

# SQLite only makes INTEGER PRIMARY KEY an alias of the rowid (which FTS5 rows point at).
_SEQ = BigInteger().with_variant(Integer(), "sqlite")

documents = Table(
    "librarian_documents",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("document_id", String(128), nullable=False, unique=True),
    Column("source", String(128), nullable=False),
    Column("title", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("words", Integer, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # PostgreSQL's full-text index; always NULL on SQLite.
    Column("search", Text().with_variant(TSVECTOR(), "postgresql"), nullable=True),
    # Ranking order on PostgreSQL (fewest words, then newest); SQLite's FTS5 keys carry it.
    Index("librarian_documents_length", "words", text("seq DESC")),
    Index("librarian_documents_source", "source", "seq"),
    Index("librarian_documents_search", "search", postgresql_using="gin").ddl_if(
        dialect="postgresql"
    ),
)

metadata_entries = Table(
    "librarian_metadata",
    metadata,
    Column("seq", _SEQ, nullable=False),
    Column("key", String(64), nullable=False),
    Column("value", String(256), nullable=False),
    Index("librarian_metadata_entry", "key", "value", "seq"),
    Index("librarian_metadata_seq", "seq"),
)

outbox = outbox_table(metadata, "librarian")


def document_from_row(row: Any) -> Document:
    """A documents row as a Document."""
    return Document(
        document_id=row.document_id,
        text=row.text,
        title=row.title,
        source=row.source,
        metadata=dict(row.metadata or {}),
        words=int(row.words),
        created_at=float(row.created_at),
        updated_at=float(row.updated_at),
    )
