"""The canonical form of a request path, which routing and governance both use.

A policy names a path as a person writes it (`/domains/invoke/data_domain/*`), so the
gateway must ask governance about the path the upstream will act on, not about the bytes
the client sent: `/domains/invoke/%64ata_domain/ingest` reaches `data_domain` and must be
judged as `/domains/invoke/data_domain/ingest`. Routing and the governance question are
therefore both derived from one canonical path:

- every segment is percent-decoded (escapes of any case: `%2f` and `%2F` alike) and must be
  valid UTF-8;
- a trailing slash is dropped (`/a/b/` is `/a/b`);
- what has no single meaning is refused with 400 rather than guessed: malformed escapes
  (`%zz`, a lone `%`), an encoded slash (`%2F`, which would make one segment look like two),
  empty segments (`//`), dot segments (`.`, `..`, also encoded as `%2E`), and control
  characters.

`CanonicalPath.decoded` is what governance is asked about; `CanonicalPath.encoded` (each
decoded segment encoded again in one fixed way) is what the route table matches, so a
literal segment sent encoded (`/domains/%69nvoke/...`) routes exactly like the plain one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote_to_bytes

from gateway.errors import HttpError, bad_request

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Characters a segment keeps unencoded: RFC 3986 unreserved, sub-delims, ':' and '@'.
_SEGMENT_SAFE = "!$&'()*+,;=:@-._~"
# A path that is already canonical: segments of characters that need no escaping, none of
# them empty, "." or "..", no trailing slash. Most requests; they skip the decoding.
_CANONICAL = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9!$&'()*+,;=:@\-._~]+)+")
MAX_PATH_CHARS = 8192


@dataclass(frozen=True)
class CanonicalPath:
    """A request path in canonical form.

    Attributes:
        decoded: Segments percent-decoded, joined with '/' (governance's resource).
        encoded: The same segments encoded again canonically (what routes are matched on).
    """

    decoded: str
    encoded: str


def canonical_path(raw_path: str) -> CanonicalPath:
    """The canonical form of a raw (still percent-encoded) request path.

    Raises:
        HttpError: 400 naming `path` and the rule broken, for a path with no single meaning.
    """
    if len(raw_path) > MAX_PATH_CHARS:
        raise HttpError(414, f"the request path is longer than {MAX_PATH_CHARS} characters")
    if _CANONICAL.fullmatch(raw_path):
        return CanonicalPath(raw_path, raw_path)
    if not raw_path.startswith("/"):
        raise bad_request("path", "must start with '/'")
    if _ESCAPE.search(raw_path):
        raise bad_request("path", "has a '%' not followed by two hexadecimal digits")
    parts = raw_path[1:].split("/")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # one trailing slash names the same resource
    if parts == [""]:
        return CanonicalPath("/", "/")
    segments = [_segment(part) for part in parts]
    return CanonicalPath(
        "/" + "/".join(segments),
        "/" + "/".join(quote(s, safe=_SEGMENT_SAFE) for s in segments),
    )


def _segment(part: str) -> str:
    if part == "":
        raise bad_request("path", "has an empty segment ('//')")
    try:
        decoded = _unquote_strict(part)
    except UnicodeError:
        raise bad_request("path", "is not UTF-8 once percent-decoded") from None
    if "/" in decoded or "\\" in decoded:
        raise bad_request("path", "has an encoded slash in a segment (%2F or %5C)")
    if decoded in (".", ".."):
        raise bad_request("path", "has a '.' or '..' segment")
    if _CONTROL.search(decoded):
        raise bad_request("path", "has a control character")
    return decoded


def _unquote_strict(part: str) -> str:
    """Percent-decodes one segment of a path read as latin-1 (as ASGI's raw path is);
    bytes that are not UTF-8 raise instead of being replaced."""
    return unquote_to_bytes(part.encode("latin-1")).decode("utf-8", errors="strict")
