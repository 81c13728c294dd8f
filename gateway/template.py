"""Path templates of `google.api.http` rules: parsing, matching and precedence.

The grammar is the one documented in `google/api/http.proto`:

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

`{x}` is short for `{x=*}`. `*` matches exactly one segment, `**` zero or more (so it may only
be the last segment). When several templates match a path, the most specific wins: segments
are compared left to right, a literal beats `*`, which beats `**`; a template with a verb beats
one without. That is how `/domains/workflows/list` wins over `/domains/workflows/{id}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}*:=]+")


class TemplateError(ValueError):
    """A path template does not follow the google.api.http grammar."""


class SegmentKind(IntEnum):
    """Kinds of template segments, ordered by specificity (higher wins)."""

    DOUBLE_WILDCARD = 0
    WILDCARD = 1
    LITERAL = 2


@dataclass(frozen=True)
class Segment:
    """One segment of a parsed template."""

    kind: SegmentKind
    literal: str = ""


@dataclass(frozen=True)
class Variable:
    """A variable spanning segments [start, end) of the template (end None: to the path end).

    Attributes:
        field_path: Dotted proto field names the captured text is assigned to.
        start: Index of its first segment.
        end: Index after its last segment; None when it ends with `**`.
    """

    field_path: str
    start: int
    end: int | None


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template.

    Attributes:
        text: The template as written in the proto.
        segments: Its segments, variables flattened into the segments they match.
        variables: The variables, in order.
        verb: The custom verb after ':' or "".
    """

    text: str
    segments: tuple[Segment, ...]
    variables: tuple[Variable, ...]
    verb: str

    @property
    def specificity(self) -> tuple[tuple[int, ...], int, int]:
        """Sort key: higher is more specific (see the module docstring)."""
        return (tuple(s.kind for s in self.segments), int(bool(self.verb)), len(self.segments))

    @property
    def open_ended(self) -> bool:
        """True when the template ends with `**` and so matches paths of any length."""
        return bool(self.segments) and self.segments[-1].kind is SegmentKind.DOUBLE_WILDCARD

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Matches a raw (still percent-encoded) request path.

        Returns:
            The variables' values (percent-decoded) by field path, or None when the path
            does not match.
        """
        if not raw_path.startswith("/"):
            return None
        return self.match_parts(split_path(raw_path))

    def match_parts(self, parts: list[str]) -> dict[str, str] | None:
        """Like `match`, for a path already split by `split_path` (split once per request)."""
        segments = self.segments
        if self.verb:
            if not parts:
                return None
            suffix = ":" + self.verb
            last = parts[-1]
            if not last.endswith(suffix):
                return None
            parts = [*parts[:-1], last[: -len(suffix)]]
            if parts == [""]:
                parts = []
        if self.open_ended:
            if len(parts) < len(segments) - 1:
                return None
        elif len(parts) != len(segments):
            return None
        for index, segment in enumerate(segments):
            if segment.kind is SegmentKind.LITERAL:
                if parts[index] != segment.literal:
                    return None
            elif segment.kind is SegmentKind.WILDCARD and parts[index] == "":
                return None
        bindings: dict[str, str] = {}
        for variable in self.variables:
            end = len(parts) if variable.end is None else variable.end
            captured = parts[variable.start : end]
            if variable.end is not None and end - variable.start == 1:
                bindings[variable.field_path] = unquote(captured[0])
            else:
                # Multi-segment variables keep their slashes (reserved expansion).
                bindings[variable.field_path] = "/".join(unquote(p) for p in captured)
        return bindings

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: variables become `{field.path}`.

        Bare wildcards outside variables, which OpenAPI cannot express, become
        `{_wildcard<n>}` parameters.
        """
        out: list[str] = []
        covered: dict[int, Variable] = {}
        for variable in self.variables:
            stop = len(self.segments) if variable.end is None else variable.end
            for index in range(variable.start, stop):
                covered[index] = variable
        emitted: set[str] = set()
        wildcard = 0
        for index, segment in enumerate(self.segments):
            owner = covered.get(index)
            if owner is not None:
                if owner.field_path not in emitted:
                    emitted.add(owner.field_path)
                    out.append("{" + owner.field_path + "}")
            elif segment.kind is SegmentKind.LITERAL:
                out.append(segment.literal)
            else:
                wildcard += 1
                out.append(f"{{_wildcard{wildcard}}}")
        return "/" + "/".join(out) + (":" + self.verb if self.verb else "")

    def wildcard_count(self) -> int:
        """Number of bare wildcard segments outside variables."""
        inside: set[int] = set()
        for variable in self.variables:
            stop = len(self.segments) if variable.end is None else variable.end
            inside.update(range(variable.start, stop))
        return sum(
            1
            for index, segment in enumerate(self.segments)
            if segment.kind is not SegmentKind.LITERAL and index not in inside
        )


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[Segment] = []
        self.variables: list[Variable] = []

    def fail(self, why: str) -> TemplateError:
        return TemplateError(f"path template {self.text!r}: {why} at position {self.pos}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> PathTemplate:
        if self.peek() != "/":
            raise self.fail("must start with '/'")
        self.pos += 1
        self.parse_segments(in_variable=False)
        verb = ""
        if self.peek() == ":":
            self.pos += 1
            match = _LITERAL.match(self.text, self.pos)
            if not match:
                raise self.fail("expected a verb after ':'")
            verb = match.group()
            self.pos = match.end()
        if self.pos != len(self.text):
            raise self.fail("unexpected character")
        for index, segment in enumerate(self.segments):
            if segment.kind is SegmentKind.DOUBLE_WILDCARD and index != len(self.segments) - 1:
                raise self.fail("'**' must be the last segment")
        names = [v.field_path for v in self.variables]
        if len(names) != len(set(names)):
            raise self.fail("a field is bound twice")
        return PathTemplate(self.text, tuple(self.segments), tuple(self.variables), verb)

    def parse_segments(self, *, in_variable: bool) -> None:
        while True:
            self.parse_segment(in_variable=in_variable)
            if self.peek() != "/":
                return
            self.pos += 1

    def parse_segment(self, *, in_variable: bool) -> None:
        if self.text.startswith("**", self.pos):
            self.pos += 2
            self.segments.append(Segment(SegmentKind.DOUBLE_WILDCARD))
        elif self.peek() == "*":
            self.pos += 1
            self.segments.append(Segment(SegmentKind.WILDCARD))
        elif self.peek() == "{":
            if in_variable:
                raise self.fail("variables cannot nest")
            self.parse_variable()
        else:
            match = _LITERAL.match(self.text, self.pos)
            if not match:
                raise self.fail("expected a segment")
            self.pos = match.end()
            self.segments.append(Segment(SegmentKind.LITERAL, match.group()))

    def parse_variable(self) -> None:
        self.pos += 1  # "{"
        names: list[str] = []
        while True:
            match = _IDENT.match(self.text, self.pos)
            if not match:
                raise self.fail("expected a field name")
            names.append(match.group())
            self.pos = match.end()
            if self.peek() != ".":
                break
            self.pos += 1
        start = len(self.segments)
        if self.peek() == "=":
            self.pos += 1
            self.parse_segments(in_variable=True)
        else:
            self.segments.append(Segment(SegmentKind.WILDCARD))
        if self.peek() != "}":
            raise self.fail("expected '}'")
        self.pos += 1
        open_ended = self.segments[-1].kind is SegmentKind.DOUBLE_WILDCARD
        self.variables.append(
            Variable(".".join(names), start, None if open_ended else len(self.segments))
        )


def split_path(raw_path: str) -> list[str]:
    """The segments of a raw path that starts with '/' ("/" alone has none)."""
    path = raw_path[1:]
    return path.split("/") if path else []


def parse_template(text: str) -> PathTemplate:
    """Parses a google.api.http path template.

    Raises:
        TemplateError: The template does not follow the grammar.
    """
    return _Parser(text).parse()
