"""What the shared memory accepts: limits on client input and the checks that apply them.

Each check raises `InvalidArgument` naming the field and the rule.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

from services.common.validation import require_id, require_text, require_unique_ids

MAX_TYPE_LENGTH = 64
MAX_TAGS = 32
MAX_TAG_LENGTH = 64
TAG_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
MAX_REASON_LENGTH = 1024
MAX_DETAIL_LENGTH = 4096
MAX_REQUEST_ID_LENGTH = 128
MAX_CONTRIBUTION_ID_LENGTH = 64
# Deep pages of a ranked search cost a full sort each; past this many results a client
# should narrow the query instead (Elasticsearch's max_result_window does the same).
MAX_SEARCH_RESULTS = 10_000
RECENT_APPLICATIONS = 100
DEFAULT_TOP_CONTRIBUTORS = 10


def content_size(content: dict[str, Any]) -> int:
    """Bytes of the content as compact JSON."""
    return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())


def digest(*parts: Any) -> str:
    """A stable SHA-256 of JSON-able parts (for idempotent retries and page tokens)."""
    raw = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def require_contribution_id(value: str) -> str:
    """A contribution id that is present and not too long (unknown ids are NOT_FOUND)."""
    return require_text(
        "contribution_id", value, max_length=MAX_CONTRIBUTION_ID_LENGTH, required=True
    )


def require_type(field: str, value: str) -> str:
    """A contribution type: an id of at most 64 characters."""
    return require_id(field, value, max_length=MAX_TYPE_LENGTH)


def require_tags(values: Sequence[str]) -> tuple[str, ...]:
    """At most 32 tags, each valid, duplicates dropped."""
    return tuple(
        require_unique_ids(
            "tags", values, max_count=MAX_TAGS, max_length=MAX_TAG_LENGTH, pattern=TAG_PATTERN
        )
    )
