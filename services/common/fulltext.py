"""Full-text search shared by every service that ranks text: one tokenizer, one BM25
ranking, and the two backends' indexes (SQLite FTS5, PostgreSQL tsvector).

Both backends receive text this module already split and normalized (lower case, accents
removed, words of letters and digits only, '_' and every other character a separator), so
FTS5 (`unicode61`) and PostgreSQL's `simple` configuration see the same words and match the
same rows: "port timeout" finds `{"issue": "port_timeout"}`. The index only decides which
rows match (every query word present, in the fields asked); the ranking is the same SQL
arithmetic on both backends:

    idf(w)    = ln(1 + (N - n(w) + 0.5) / (n(w) + 0.5))           (BM25's idf)
    r         = boost * sum of idf(w) over the query words
                * (k1 + 1) / (1 + k1 * (1 - b + b * words / avg_words))
    relevance = r / (1 + r)                                          (in (0, 1))

with k1 = 1.2 and b = 0.75: BM25 with every term counted once per document (a word's
repetition says little about short texts, and counting it would need per-row auxiliary
functions, FTS5 bm25 or ts_rank, which on a common word cost more than the whole rest of
the query), N documents, n(w) of them holding word w, `words` the row's word count, and
`boost` a per-row factor a caller may use to weigh fields (1 when it does not).
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Text, bindparam, func, literal_column, text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.common.errors import InvalidArgument

K1 = 1.2
B = 0.75

MAX_QUERY_LENGTH = 1024
MAX_QUERY_WORDS = 32
# A word longer than this is cut: neither index gains from megabyte-long tokens, and
# PostgreSQL refuses lexemes over 2 KiB.
MAX_WORD_LENGTH = 64
# Only this much of a text is indexed: PostgreSQL caps a tsvector at 1 MB, and the words
# that matter for finding a text come long before that.
MAX_DOCUMENT_CHARS = 200_000

_WORD = re.compile(r"[^\W_]+")
_LONG_WORD = re.compile(rf"[^\W_]{{{MAX_WORD_LENGTH + 1}}}")


# -- words ----------------------------------------------------------------------------------


def words(value: str) -> list[str]:
    """The normalized words of `value`, in order (duplicates kept)."""
    if value.isascii():
        # ASCII has nothing to decompose or strip, and casefold is lower: the same words,
        # several times faster.
        found = _WORD.findall(value.lower())
        if _LONG_WORD.search(value) is None:
            return found
        return [w[:MAX_WORD_LENGTH] for w in found]
    folded = unicodedata.normalize("NFKD", value.casefold())
    stripped = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [w[:MAX_WORD_LENGTH] for w in _WORD.findall(stripped)]


def word_spans(value: str) -> Iterator[tuple[int, int, str]]:
    """Each word of `value` as (start, end, normalized word), offsets into `value`."""
    if value.isascii():
        for match in _WORD.finditer(value.lower()):
            yield match.start(), match.end(), match.group()[:MAX_WORD_LENGTH]
        return
    # Fold character by character, remembering which character of `value` each folded
    # character came from: folding a whole text equals folding its characters one by one
    # (the only reordering NFKD does is among combining marks, which are all dropped), so
    # the words found here are exactly `words(value)`, even where folding turns a symbol
    # into a letter ('⼀' becomes '一') or one character into several words ('¼').
    folded: list[str] = []
    origin: list[int] = []
    for index, ch in enumerate(value):
        for part in unicodedata.normalize("NFKD", ch.casefold()):
            if not unicodedata.combining(part):
                folded.append(part)
                origin.append(index)
    for match in _WORD.finditer("".join(folded)):
        start, end = origin[match.start()], origin[match.end() - 1] + 1
        yield start, end, match.group()[:MAX_WORD_LENGTH]


def indexed_text(*parts: str) -> str:
    """The words of `parts` joined by spaces, cut at a word boundary to MAX_DOCUMENT_CHARS:
    the text an index receives, and the text it must be given again to forget a row."""
    joined = " ".join(w for part in parts for w in words(part))
    if len(joined) > MAX_DOCUMENT_CHARS:
        return joined[:MAX_DOCUMENT_CHARS].rsplit(" ", 1)[0]
    return joined


def query_words(query: str, *, field: str = "query") -> list[str]:
    """The distinct words of a search, or InvalidArgument when there are none or too many."""
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_QUERY_LENGTH} characters")
    distinct = list(dict.fromkeys(words(query)))
    if not distinct:
        raise InvalidArgument(field, "must contain at least one word of letters or digits")
    if len(distinct) > MAX_QUERY_WORDS:
        raise InvalidArgument(field, f"must have at most {MAX_QUERY_WORDS} distinct words")
    return distinct


# -- ranking --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Corpus:
    """Size of the collection, for idf and length normalization."""

    documents: int
    words: int

    @property
    def average_words(self) -> float:
        """Mean words per document (at least 1)."""
        return max(1.0, self.words / self.documents) if self.documents else 1.0

    def plus(self, documents: int, words: int) -> Corpus:
        """The corpus after adding (or, with negative counts, removing) documents."""
        return Corpus(max(0, self.documents + documents), max(0, self.words + words))


def idf(documents: int, matching: int) -> float:
    """BM25's inverse document frequency, always positive."""
    return math.log(1 + (documents - matching + 0.5) / (matching + 0.5))


def relevance_sql(words_column: str, boost: str = "1") -> str:
    """The SQL of `relevance` for a row whose word count is `words_column`.

    Takes the parameters `ranking_params` returns; `boost` is an SQL expression.
    """
    # Explicit casts: PostgreSQL would otherwise type the parameters after the word count
    # (an integer) and truncate them.
    weight, k1, b, avg = (
        f"CAST(:bm25_{name} AS DOUBLE PRECISION)" for name in ("weight", "k1", "b", "avg")
    )
    raw = f"(({boost}) * {weight} / (1 + {k1} * (1 - {b} + {b} * {words_column} / {avg})))"
    return f"({raw} / (1 + {raw}))"


def relevance(weight: float, words: int, corpus: Corpus, boost: float = 1.0) -> float:
    """`relevance_sql` in Python, for rankings computed outside the database."""
    raw = boost * weight * (K1 + 1) / (1 + K1 * (1 - B + B * words / corpus.average_words))
    return raw / (1 + raw)


def ranking_params(weight: float, corpus: Corpus) -> dict[str, Any]:
    """Parameters of `relevance_sql` for a query whose idf sum is `weight`."""
    return {
        "bm25_weight": weight * (K1 + 1),
        "bm25_k1": K1,
        "bm25_b": B,
        "bm25_avg": corpus.average_words,
    }


# -- indexes --------------------------------------------------------------------------------


class Fts5Table:
    """A contentless SQLite FTS5 table whose rowid is the owner's row key.

    Args:
        name: Table name.
        columns: Indexed fields, in order; a table with one column stores no column
            information (`detail=none`), one with several can match within fields.
    """

    def __init__(self, name: str, columns: Sequence[str] = ("body",)) -> None:
        self.name = name
        self.columns = tuple(columns)
        self._detail = "none" if len(self.columns) == 1 else "column"

    async def create(self, conn: AsyncConnection) -> None:
        """Creates the table if it is missing."""
        await conn.execute(
            text(
                f"CREATE VIRTUAL TABLE IF NOT EXISTS {self.name} USING fts5("
                f"{', '.join(self.columns)}, content='', detail={self._detail},"
                " tokenize='unicode61 remove_diacritics 0')"
            )
        )

    async def add(self, conn: AsyncConnection, rows: Sequence[tuple[int, Sequence[str]]]) -> None:
        """Indexes rows: (rowid, the `indexed_text` of each column)."""
        if rows:
            names = ", ".join(self.columns)
            values = ", ".join(f":c{i}" for i in range(len(self.columns)))
            await conn.execute(
                text(f"INSERT INTO {self.name} (rowid, {names}) VALUES (:rowid, {values})"),
                [
                    {"rowid": rowid, **{f"c{i}": v for i, v in enumerate(texts)}}
                    for rowid, texts in rows
                ],
            )

    async def remove(self, conn: AsyncConnection, rowid: int, texts: Sequence[str]) -> None:
        """Forgets a row; `texts` are exactly what `add` indexed for it."""
        # A contentless table forgets a row through the 'delete' command, given the very
        # text it indexed.
        names = ", ".join(self.columns)
        values = ", ".join(f":c{i}" for i in range(len(self.columns)))
        await conn.execute(
            text(
                f"INSERT INTO {self.name} ({self.name}, rowid, {names})"
                f" VALUES ('delete', :rowid, {values})"
            ),
            {"rowid": rowid, **{f"c{i}": v for i, v in enumerate(texts)}},
        )

    def match(self, terms: Sequence[str], fields: Sequence[str] = ()) -> str:
        """The MATCH expression for rows holding every term (within `fields`, if any)."""
        conjunction = " AND ".join(f'"{t}"' for t in terms)
        if not fields or tuple(fields) == self.columns:
            return conjunction
        return f"{{{' '.join(fields)}}} : ({conjunction})"

    async def weight(
        self,
        conn: AsyncConnection,
        terms: Sequence[str],
        corpus: Corpus,
        fields: Sequence[str] = (),
    ) -> float:
        """The sum of the terms' idf (document frequencies counted within `fields`)."""
        total = 0.0
        for term in terms:
            total += idf(corpus.documents, await self.frequency(conn, term, fields))
        return total

    async def frequency(self, conn: AsyncConnection, term: str, fields: Sequence[str] = ()) -> int:
        """How many rows hold `term` (within `fields`)."""
        matching = await conn.execute(
            text(f"SELECT count(*) FROM {self.name} WHERE {self.name} MATCH :m"),
            {"m": self.match([term], fields)},
        )
        return int(matching.scalar_one())


class TsvectorColumn:
    """A PostgreSQL tsvector column (GIN-indexed by its table's DDL), fields as weights.

    Args:
        table: The table holding the column.
        column: The tsvector column.
        fields: Field name -> tsvector weight letter ('A'..'D'); empty for one field.
    """

    def __init__(self, table: str, column: str, fields: Mapping[str, str] | None = None) -> None:
        self.table = table
        self.column = column
        self.fields = dict(fields or {})

    def vector(self, params: Mapping[str, str]) -> ColumnElement[Any]:
        """The column's value built from bound text parameters (field -> parameter name),
        for an INSERT or UPDATE."""
        if not self.fields:
            (param,) = params.values()
            return func.to_tsvector("simple", bindparam(param, type_=Text()))
        parts = [
            func.setweight(
                func.to_tsvector("simple", bindparam(params[f], type_=Text())),
                # setweight takes a "char", which a bound VARCHAR is not; letters are
                # this class's constructor arguments, not input.
                literal_column(f"'{letter}'::\"char\""),
            )
            for f, letter in self.fields.items()
        ]
        value: ColumnElement[Any] = parts[0]
        for part in parts[1:]:
            value = value.op("||")(part)
        return value

    def tsquery(self, terms: Sequence[str], fields: Sequence[str] = ()) -> str:
        """The `to_tsquery('simple', ...)` text for rows holding every term."""
        letters = "".join(self.fields[f] for f in fields) if fields else ""
        suffix = f":{letters}" if letters and len(fields) < len(self.fields) else ""
        # Terms are normalized words (letters and digits), safe inside a tsquery.
        return " & ".join(f"{t}{suffix}" for t in terms)

    async def weight(
        self,
        conn: AsyncConnection,
        terms: Sequence[str],
        corpus: Corpus,
        fields: Sequence[str] = (),
    ) -> float:
        """The sum of the terms' idf (document frequencies counted within `fields`)."""
        total = 0.0
        for term in terms:
            total += idf(corpus.documents, await self.frequency(conn, term, fields))
        return total

    async def frequency(self, conn: AsyncConnection, term: str, fields: Sequence[str] = ()) -> int:
        """How many rows hold `term` (within `fields`)."""
        matching = await conn.execute(
            text(
                f"SELECT count(*) FROM {self.table} WHERE {self.column} @@ to_tsquery('simple', :t)"
            ),
            {"t": self.tsquery([term], fields)},
        )
        return int(matching.scalar_one())
