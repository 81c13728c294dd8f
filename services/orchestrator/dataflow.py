"""Data flow between steps: a small reference syntax, resolved without eval.

A step's `data` may contain, anywhere inside it:

- `{"$ref": "PATH"}`: an object whose only key is `$ref` is replaced by the value at PATH
  (any JSON type).
- `"${PATH}"` inside a string: a string that is exactly one `${PATH}` becomes the value
  (any JSON type); otherwise each `${PATH}` is replaced by the value as text (strings as
  they are, whole numbers without a fraction, anything else as compact JSON). `$${`
  writes a literal `${`.

PATH is dot-separated: `input.<key>...` (the execution input), `steps.<step id>.output...`
or `steps.<step id>.input...` (a dependency's resolved input or output),
`execution.id`, `workflow.id`, `workflow.name`. A numeric segment indexes a list
(`steps.step_1.output.items.0`). Only steps among the step's (transitive) dependencies may
be referenced; that is checked when the workflow is created.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from services.common.errors import InvalidArgument

REF_KEY = "$ref"
MAX_PATH_LENGTH = 512
_TEMPLATE = re.compile(r"\$?\$\{([^}]*)\}")
_ROOTS = ("input", "steps", "execution", "workflow")


class DataReferenceError(LookupError):
    """A reference points at nothing at run time; the message names the path."""


def _paths(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        if set(value) == {REF_KEY} and isinstance(value[REF_KEY], str):
            yield value[REF_KEY]
            return
        for item in value.values():
            yield from _paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item)
    elif isinstance(value, str) and "${" in value:
        for match in _TEMPLATE.finditer(value):
            if not match.group(0).startswith("$$"):
                yield match.group(1)


def check_references(field: str, data: Any, allowed_steps: set[str]) -> None:
    """Checks every reference in `data` for syntax and reachability.

    Raises:
        InvalidArgument: A path is malformed, has an unknown root, or names a step that is
            not among `allowed_steps` (the step's transitive dependencies).
    """
    for path in _paths(data):
        parts = split_path(field, path)
        if parts[0] == "steps":
            if len(parts) < 3 or parts[2] not in ("input", "output"):
                raise InvalidArgument(
                    field, f"reference {path!r}: expected steps.<step id>.output[.key...]"
                )
            if parts[1] not in allowed_steps:
                raise InvalidArgument(
                    field,
                    f"reference {path!r}: step {parts[1]!r} is not among this step's "
                    "dependencies (add it to depends_on)",
                )


def split_path(field: str, path: str) -> list[str]:
    """The segments of a reference path, checked for shape."""
    if not path or len(path) > MAX_PATH_LENGTH:
        raise InvalidArgument(field, f"reference path must be 1-{MAX_PATH_LENGTH} characters")
    parts = path.strip().split(".")
    if any(not p for p in parts):
        raise InvalidArgument(field, f"reference {path!r}: empty path segment")
    if parts[0] not in _ROOTS:
        raise InvalidArgument(
            field, f"reference {path!r}: must start with one of {', '.join(_ROOTS)}"
        )
    return parts


def has_references(data: Any) -> bool:
    """True when `data` contains at least one reference."""
    return next(_paths(data), None) is not None


def _lookup(context: Mapping[str, Any], path: str) -> Any:
    value: Any = context
    for part in path.strip().split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise DataReferenceError(f"reference {path!r}: {part!r} not found")
    return value


def _render(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        # Struct numbers are doubles: 3.0 came in as 3, so it reads as 3 in text too.
        return str(int(value))
    return json.dumps(value, separators=(",", ":"))


def _resolve_string(text: str, context: Mapping[str, Any]) -> Any:
    whole = _TEMPLATE.fullmatch(text)
    if whole and not text.startswith("$$"):
        return _lookup(context, whole.group(1))

    def replace(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        return _render(_lookup(context, match.group(1)))

    return _TEMPLATE.sub(replace, text)


def resolve(data: Any, context: Mapping[str, Any]) -> Any:
    """`data` with every reference replaced by its value from `context`.

    Args:
        data: A step's `data`.
        context: {"input": ..., "steps": {id: {"input": ..., "output": ...}},
            "execution": {"id": ...}, "workflow": {"id": ..., "name": ...}}.

    Raises:
        DataReferenceError: A path points at nothing.
    """
    if isinstance(data, Mapping):
        if set(data) == {REF_KEY} and isinstance(data[REF_KEY], str):
            return _lookup(context, data[REF_KEY])
        return {key: resolve(value, context) for key, value in data.items()}
    if isinstance(data, list):
        return [resolve(item, context) for item in data]
    if isinstance(data, str) and "${" in data:
        return _resolve_string(data, context)
    return data
