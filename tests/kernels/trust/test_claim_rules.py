"""The claim rules as a pure function: who may register which key for which id."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.access import COMPONENT, Principal
from services.common.components import component_key_path
from services.common.errors import PermissionDenied
from services.common.signing import load_or_create_key
from services.kernels.trust.claims import Claimant, ClaimRules

IDS = st.sampled_from(["ai_domain", "data_domain", "orchestrator", "weather", "evil"])
KEYS = st.binary(min_size=32, max_size=32)
RULES = ClaimRules(frozenset({"orchestrator", "ai_domain"}))


def domain(name: str, bound: bytes | None = None) -> Claimant:
    """A domain calling with its certificate (binding `bound`)."""
    principal = Principal(f"domain:{name}", frozenset({f"domain:{name}"}), "certificate")
    return Claimant(principal, name, bound)


def component(name: str, bound: bytes | None = None) -> Claimant:
    """A component calling with its certificate (binding `bound`)."""
    return Claimant(
        Principal(f"component:{name}", frozenset({COMPONENT}), "certificate"), name, bound
    )


ADMIN = Claimant(Principal("alice", frozenset({"admin"})))


def allowed(rules: ClaimRules, domain_id: str, key: bytes, claimant: Claimant | None) -> bool:
    try:
        rules.check(domain_id, key, claimant)
    except PermissionDenied:
        return False
    return True


@given(IDS, IDS, KEYS, st.one_of(st.none(), KEYS), st.booleans())
def test_a_workload_registers_only_its_own_id(
    caller: str, claimed: str, key: bytes, bound: bytes | None, is_component: bool
) -> None:
    claimant = (component if is_component else domain)(caller, bound)
    if caller != claimed:
        assert not allowed(RULES, claimed, key, claimant)


@given(IDS, KEYS, KEYS, st.booleans())
def test_a_workload_registers_its_own_id_exactly_with_the_key_its_certificate_binds(
    name: str, key: bytes, bound: bytes, is_component: bool
) -> None:
    claimant = (component if is_component else domain)(name, bound)
    assert allowed(RULES, name, key, claimant) == (key == bound)
    assert allowed(RULES, name, bound, claimant)


@given(IDS, KEYS)
def test_a_certificate_without_a_bound_key_leaves_the_key_to_proof_of_possession(
    name: str, key: bytes
) -> None:
    assert allowed(RULES, name, key, domain(name))


@given(IDS, KEYS)
def test_a_join_token_for_a_domain_may_register_its_key(name: str, key: bytes) -> None:
    token = Claimant(Principal(f"join:{name}", frozenset({f"domain:{name}"})))
    assert allowed(RULES, name, key, token)


@given(IDS, KEYS)
def test_an_admin_registers_ordinary_ids_but_not_reserved_ones_with_a_stranger_key(
    name: str, key: bytes
) -> None:
    assert allowed(RULES, name, key, ADMIN) == (name not in RULES.reserved)


def test_an_admin_registers_a_reserved_id_with_the_key_grace_provisioned(tmp_path: Path) -> None:
    rules = ClaimRules(frozenset({"orchestrator"}), tmp_path)
    own = load_or_create_key(component_key_path(tmp_path, "orchestrator"))
    assert allowed(rules, "orchestrator", own.public_key, ADMIN)


def test_a_certificate_binding_holds_for_an_admin_token_presented_beside_it() -> None:
    bound, other = b"\x01" * 32, b"\x02" * 32
    admin_over_certificate = Claimant(ADMIN.principal, "weather", bound)
    assert not allowed(RULES, "weather", other, admin_over_certificate)
    assert allowed(RULES, "weather", bound, admin_over_certificate)


def test_each_refusal_names_its_rule() -> None:
    with pytest.raises(PermissionDenied) as other_id:
        RULES.check("ai_domain", b"\x01" * 32, domain("evil"))
    assert other_id.value.reason == "NOT_THE_CALLERS_IDENTITY"
    assert "only 'ai_domain' itself" in str(other_id.value)
    with pytest.raises(PermissionDenied) as other_key:
        RULES.check("ai_domain", b"\x01" * 32, domain("ai_domain", b"\x02" * 32))
    assert other_key.value.reason == "KEY_NOT_CERTIFIED"
    with pytest.raises(PermissionDenied) as reserved:
        RULES.check("orchestrator", b"\x01" * 32, ADMIN)
    assert reserved.value.reason == "RESERVED_IDENTITY"
