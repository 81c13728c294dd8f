"""The data-flow reference syntax, resolved without eval."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.orchestrator.dataflow import DataReferenceError, check_references, resolve

CONTEXT = {
    "input": {"doc": "hello", "n": 3.0},
    "steps": {"s1": {"input": {}, "output": {"items": [{"k": "v"}], "score": 0.5}}},
    "execution": {"id": "ex_1"},
    "workflow": {"id": "wf_1", "name": "w"},
}


def test_whole_value_references_keep_their_type_and_templates_render_text() -> None:
    data = {
        "a": {"$ref": "steps.s1.output.items"},
        "b": "${input.n}",
        "c": "n=${input.n} score=${steps.s1.output.score} first=${steps.s1.output.items.0.k}",
        "d": ["${execution.id}", "$${input.doc}"],
    }
    assert resolve(data, CONTEXT) == {
        "a": [{"k": "v"}],
        "b": 3.0,
        "c": "n=3 score=0.5 first=v",
        "d": ["ex_1", "${input.doc}"],
    }


def test_a_path_that_points_at_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(DataReferenceError, match="missing"):
        resolve({"x": "${input.missing}"}, CONTEXT)


@pytest.mark.parametrize(
    ("data", "rule"),
    [
        ({"x": "${nowhere.a}"}, "must start with"),
        ({"x": {"$ref": "steps.s2.output"}}, "not among this step's dependencies"),
        ({"x": "${steps.s1}"}, "expected steps.<step id>.output"),
        ({"x": "${input..a}"}, "empty path segment"),
    ],
)
def test_malformed_or_unreachable_references_are_rejected(data: object, rule: str) -> None:
    with pytest.raises(InvalidArgument, match=rule):
        check_references("steps[1].data", data, {"s1"})
