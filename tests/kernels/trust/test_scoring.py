"""Properties of the trust score and of trust paths, with hypothesis."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from services.kernels.trust.model import Level
from services.kernels.trust.scoring import (
    Behaviour,
    Weights,
    behaviour_components,
    certification_component,
    composite,
)
from services.kernels.trust.web import find_path

levels = st.lists(st.sampled_from(list(Level)), max_size=30)
behaviours = st.one_of(
    st.none(),
    st.builds(
        Behaviour,
        st.sampled_from(["HEALTHY", "DEGRADED", "UNHEALTHY"]),
        st.floats(0, 1),
    ),
)


def score(certs: list[Level], behaviour: Behaviour | None, has_key: bool = True) -> float:
    weights = Weights()
    parts = [certification_component(certs, weights.certifications)]
    parts += behaviour_components(behaviour, "", weights)
    return composite(parts, has_key)


@given(levels, behaviours, st.booleans())
def test_the_score_is_always_within_zero_and_one(
    certs: list[Level], behaviour: Behaviour | None, has_key: bool
) -> None:
    assert 0.0 <= score(certs, behaviour, has_key) <= 1.0


@given(levels, behaviours)
def test_a_full_certification_never_lowers_the_score(
    certs: list[Level], behaviour: Behaviour | None
) -> None:
    assert score([*certs, Level.FULL], behaviour) >= score(certs, behaviour) - 1e-12


@given(levels, behaviours)
def test_an_explicit_distrust_never_raises_the_score(
    certs: list[Level], behaviour: Behaviour | None
) -> None:
    assert score([*certs, Level.NONE], behaviour) <= score(certs, behaviour) + 1e-12


@given(levels, st.floats(0, 1))
def test_a_healthier_lease_never_lowers_the_score(certs: list[Level], rate: float) -> None:
    ranks = [score(certs, Behaviour(s, rate)) for s in ("UNHEALTHY", "DEGRADED", "HEALTHY")]
    assert ranks == sorted(ranks)


@given(levels, behaviours)
def test_a_domain_without_an_active_key_scores_zero(
    certs: list[Level], behaviour: Behaviour | None
) -> None:
    assert score(certs, behaviour, has_key=False) == 0.0


graphs = st.dictionaries(
    st.sampled_from("abcdef"),
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(list(Level)), max_size=4),
    max_size=6,
)


@given(graphs, st.sampled_from("abcdef"), st.integers(1, 6))
def test_found_paths_are_short_enough_and_pass_only_through_full_hops(
    edges: dict[str, dict[str, Level]], target: str, depth: int
) -> None:
    found = find_path(edges, ["a"], target, depth)
    if found is None or target == "a":
        return
    path, level = found
    assert path[0] == "a"
    assert path[-1] == target
    assert len(path) - 1 <= depth
    hops = list(itertools.pairwise(path))
    assert all(edges[x][y] is Level.FULL for x, y in hops[:-1])
    last = edges[hops[-1][0]][hops[-1][1]]
    assert last in (Level.FULL, Level.PARTIAL)
    assert level is last


@given(graphs, st.sampled_from("abcdef"), st.integers(1, 5))
def test_a_larger_depth_limit_never_loses_a_path(
    edges: dict[str, dict[str, Level]], target: str, depth: int
) -> None:
    if find_path(edges, ["a"], target, depth) is not None:
        assert find_path(edges, ["a"], target, depth + 1) is not None
