"""Reading an action's input: typed fields, or INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, overload

from services.common.errors import InvalidArgument

_T = TypeVar("_T")
_MISSING: Any = object()
_TYPE_NAMES = {
    str: "a string",
    float: "a number",
    bool: "a boolean",
    dict: "an object",
    list: "a list",
}


@overload
def field(data: Mapping[str, Any], name: str, kind: type[_T]) -> _T: ...
@overload
def field(data: Mapping[str, Any], name: str, kind: type[_T], default: _T) -> _T: ...
def field(data: Mapping[str, Any], name: str, kind: type[_T], default: _T = _MISSING) -> _T:
    """`data[name]` checked to be of `kind`; `default` when absent (required without one).

    JSON numbers arrive as floats: ask for `float` (an int default is accepted too).

    Raises:
        InvalidArgument: naming `input.<name>`, when it is missing or of another type.
    """
    value = data.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise InvalidArgument(f"input.{name}", "is required")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # type: ignore[return-value]  # _T is float here
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        expected = _TYPE_NAMES.get(kind, kind.__name__)
        raise InvalidArgument(f"input.{name}", f"must be {expected}")
    return value
