"""Canonical request paths: one meaning per path, the same for routing and governance."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import HttpError
from gateway.paths import canonical_path


def test_escapes_of_either_case_and_a_trailing_slash_give_the_plain_path() -> None:
    for raw in ("/domains/invoke/%64ata_domain/ingest", "/domains/invoke/%64%61ta_domain/ingest/"):
        path = canonical_path(raw)
        assert path.decoded == "/domains/invoke/data_domain/ingest"
        assert path.encoded == "/domains/invoke/data_domain/ingest"


def test_escaped_characters_are_decoded_for_governance_and_reencoded_for_routing() -> None:
    path = canonical_path("/memory/a%20b/%C3%A9:verb")
    assert path.decoded == "/memory/a b/é:verb"
    assert path.encoded == "/memory/a%20b/%C3%A9:verb"


def test_the_root_path_is_itself() -> None:
    assert canonical_path("/").decoded == "/"


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("/a/b%2Fc", "encoded slash"),
        ("/a/b%5cc", "encoded slash"),
        ("/a/../b", "'..'"),
        ("/a/%2e/b", "'..'"),
        ("/a//b", "empty segment"),
        ("/a/%", "'%'"),
        ("/a/%4", "'%'"),
        ("/a/%g1", "'%'"),
        ("/a/%ff", "UTF-8"),
        ("/a/%00", "control"),
        ("a/b", "start with"),
    ],
)
def test_a_path_with_no_single_meaning_is_a_400_naming_the_rule(raw: str, rule: str) -> None:
    with pytest.raises(HttpError) as refused:
        canonical_path(raw)
    assert refused.value.http_status == 400
    assert rule in refused.value.message


segment = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"), min_size=1
).filter(lambda s: s not in (".", ".."))


@given(st.lists(segment, min_size=1, max_size=6))
def test_any_encoding_of_a_path_has_the_same_canonical_form(segments: list[str]) -> None:
    decoded = "/" + "/".join(segments)
    plain = canonical_path("/" + "/".join(quote(s, safe="") for s in segments))
    assert plain.decoded == decoded
    assert canonical_path(plain.encoded) == plain
    lowered = re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), plain.encoded)
    lower = canonical_path(lowered)
    assert lower.decoded == decoded


@given(st.text(alphabet="/ab.~:%2Ef", max_size=16).map(lambda s: "/" + s))
def test_every_accepted_path_is_stable_and_decodes_to_its_governed_form(raw: str) -> None:
    try:
        path = canonical_path(raw)
    except HttpError as refused:
        status = refused.http_status
        assert status == 400, refused.message  # noqa: PT017 - a property over any input
        return
    assert canonical_path(path.encoded) == path
    assert unquote(path.encoded) == path.decoded
    assert unquote(raw).rstrip("/") == path.decoded.rstrip("/")
