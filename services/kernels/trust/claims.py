"""Who may register a key for an identity: the identity itself, with its certified key.

Proof of possession shows that a caller holds the key it registers, not that it is who it
says. The trust kernel's identities are the workload identities of the Grace CA: the bus
believes an event from `ai_domain` or `orchestrator` because it verifies with the key
registered for that id, so whoever registers the key for an id speaks as it. A key for id
X (RegisterIdentity, and the new key of RotateKey) is therefore accepted when:

1. the caller is authenticated as X (`domain:X` through its certificate or a join token
   for X, `component:X` through its certificate), and, when the certificate the caller
   presented names X and binds an Ed25519 signing key (`services.common.pki`,
   `SIGNING_KEY_ATTRIBUTE`), the key is that bound key: the CA already checked that X holds
   it, and no other key of X's can be slipped in beside the certificate;
2. or the caller is an admin, for an id that is not reserved, or for a reserved one with
   the key Grace provisioned for it. The admin holds the CA and can mint a join token for
   any domain anyway, so refusing it would protect nothing; allowing it keeps an
   operator able to enrol a domain that does not run the SDK (grpcurl with the admin
   token) and keeps in-process tools, which call as admin, working. Still, the
   certificate binding of rule 1 holds for an admin too.
3. On a server that does not authenticate callers (`--insecure`, no claimant), the rule
   of old: an ordinary id goes to the first key proven (only that key can rotate or
   revoke it afterwards); a reserved id (Grace's components,
   `services.common.components`) only with the key Grace provisioned for it, the public
   key published as `<keys dir>/<id>.pub` in the data dir only Grace's user can open.

Anything else, such as a component or another domain registering a key for `ai_domain`,
is PERMISSION_DENIED naming the id and the rule broken. The decision is this one pure
function; the servicer only gathers the claimant from the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common import signing
from services.common.access import Principal
from services.common.components import provisioned_public_key
from services.common.errors import PermissionDenied


@dataclass(frozen=True)
class Claimant:
    """Who asks to register or rotate a key, as authentication established it.

    Attributes:
        principal: The authenticated caller (its token's principal, else its certificate's).
        certified_id: The component or domain the caller's certificate names, or None.
        bound_key: The raw Ed25519 key that certificate binds, or None.
    """

    principal: Principal
    certified_id: str | None = None
    bound_key: bytes | None = None


@dataclass(frozen=True)
class ClaimRules:
    """The reserved ids and where their provisioned keys are.

    Attributes:
        reserved: Ids no caller may claim (Grace's components).
        keys_dir: The data dir holding `<id>.pub`; None: reserved ids are claimable only
            by an authenticated principal of the same name.
    """

    reserved: frozenset[str] = frozenset()
    keys_dir: Path | None = None

    def check(self, domain_id: str, public_key: bytes, claimant: Claimant | None) -> None:
        """Returns when `claimant` (None: the server does not authenticate) may register
        `public_key` as `domain_id` (see the module docstring).

        Raises:
            PermissionDenied: the claim breaks the rules; the message names the one.
        """
        if claimant is not None and claimant.certified_id == domain_id:
            bound = claimant.bound_key
            if bound is not None and bound != public_key:
                raise PermissionDenied(
                    f"public_key: key {signing.key_id(public_key)} is not the signing key "
                    f"{signing.key_id(bound)} that the caller's certificate binds for "
                    f"{domain_id!r}; rejoin with the new key before registering or rotating "
                    "to it",
                    reason="KEY_NOT_CERTIFIED",
                    metadata={"domain_id": domain_id, "principal": claimant.principal.name},
                )
        if claimant is not None and claimant.principal.acts_as(domain_id):
            return
        if claimant is not None and not claimant.principal.is_admin:
            raise PermissionDenied(
                f"domain_id: only {domain_id!r} itself (domain:{domain_id} or "
                f"component:{domain_id}) may register its key; the caller is authenticated "
                f"as {claimant.principal.name!r}",
                reason="NOT_THE_CALLERS_IDENTITY",
                metadata={"domain_id": domain_id, "principal": claimant.principal.name},
            )
        if domain_id not in self.reserved:
            return
        provisioned = (
            provisioned_public_key(self.keys_dir, domain_id) if self.keys_dir is not None else None
        )
        if provisioned is not None and provisioned == public_key:
            return
        raise PermissionDenied(
            f"domain_id: {domain_id!r} is reserved for the Grace component of that name; only "
            "the component itself may register it (with the key Grace provisioned for it)",
            reason="RESERVED_IDENTITY",
            metadata={"domain_id": domain_id},
        )
