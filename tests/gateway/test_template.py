"""Path templates: the google.api.http grammar, matching, and which route wins."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.template import TemplateError, parse_template


def test_a_simple_variable_matches_one_segment_and_is_percent_decoded() -> None:
    template = parse_template("/domains/domain/{domain_id}")
    assert template.match("/domains/domain/ai_domain") == {"domain_id": "ai_domain"}
    assert template.match("/domains/domain/a%20b") == {"domain_id": "a b"}
    assert template.match("/domains/domain/a%2Fb") == {"domain_id": "a/b"}
    assert template.match("/domains/domain/a/b") is None
    assert template.match("/domains/domain/") is None
    assert template.match("/domains/domain") is None


def test_nested_field_paths_and_multi_segment_variables_capture_their_segments() -> None:
    template = parse_template("/v1/{name=shelves/*/books/*}")
    assert template.match("/v1/shelves/s1/books/b2") == {"name": "shelves/s1/books/b2"}
    assert template.match("/v1/shelves/s1/magazines/b2") is None
    nested = parse_template("/v1/books/{book.id}")
    assert nested.match("/v1/books/42") == {"book.id": "42"}


def test_double_wildcard_matches_zero_or_more_segments() -> None:
    template = parse_template("/v1/files/{path=**}")
    assert template.match("/v1/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert template.match("/v1/files/one") == {"path": "one"}
    assert template.match("/v1/files") == {"path": ""}
    assert template.match("/v2/files/a") is None


def test_a_custom_verb_must_be_present() -> None:
    template = parse_template("/v1/books/{book.id}:cancel")
    assert template.match("/v1/books/7:cancel") == {"book.id": "7"}
    assert template.match("/v1/books/7") is None
    assert template.verb == "cancel"


def test_bare_wildcards_match_without_binding() -> None:
    template = parse_template("/v1/*/items/**")
    assert template.match("/v1/x/items/a/b") == {}
    assert template.openapi_path() == "/v1/{_wildcard1}/items/{_wildcard2}"


@pytest.mark.parametrize(
    "text",
    [
        "no-leading-slash",
        "/v1/{unclosed",
        "/v1/**/tail",
        "/v1/{a}/{a}",
        "/v1/{a={b}}",
        "/v1/{1bad}",
        "/v1/x:",
        "/v1//x",
    ],
)
def test_malformed_templates_are_rejected(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(text)


def test_literals_beat_variables_which_beat_double_wildcards() -> None:
    literal = parse_template("/domains/workflows/list")
    variable = parse_template("/domains/workflows/{id}")
    catch_all = parse_template("/domains/{rest=**}")
    ordered = sorted([catch_all, variable, literal], key=lambda t: t.specificity, reverse=True)
    assert ordered == [literal, variable, catch_all]
    assert parse_template("/a/{x}:verb").specificity > parse_template("/a/{x}").specificity


def test_openapi_paths_name_each_variable_once() -> None:
    assert parse_template("/v1/{name=shelves/*/books/*}").openapi_path() == "/v1/{name}"
    assert (
        parse_template("/v1/books/{book.id}:cancel").openapi_path() == "/v1/books/{book.id}:cancel"
    )


_segment = st.text(alphabet="abcxyz019_-.~", min_size=1, max_size=8)


@given(st.lists(_segment, min_size=1, max_size=6))
def test_a_template_of_literals_matches_exactly_its_own_path(parts: list[str]) -> None:
    path = "/" + "/".join(parts)
    template = parse_template(path)
    assert template.match(path) == {}
    assert template.match(path + "/more") is None


@given(st.lists(_segment, min_size=0, max_size=6))
def test_double_wildcard_captures_any_tail_verbatim(parts: list[str]) -> None:
    template = parse_template("/root/{rest=**}")
    assert template.match("/root/" + "/".join(parts) if parts else "/root") == {
        "rest": "/".join(parts)
    }
