"""Who may claim an identity: reserved ids belong to Grace's own components.

Proof of possession shows that a caller holds the key it registers, not that it is who it
says. For an ordinary domain id the first key proven wins (and only that key can rotate or
revoke it afterwards). The ids of Grace's components (`services.common.components`) are
different: the bus believes an event from `orchestrator` because it verifies with the key
registered for `orchestrator`, so a stranger who claimed that id first could forge system
events and get the real ones refused. A claim on a reserved id is accepted only when:

1. the caller's authenticated principal is known (a peer certificate or token, once the
   server authenticates callers; the trust server's `principal_of` hook gives the id the
   caller stands for, such as `registry` for the workload `.../component/registry`) and
   names that very id; a known principal naming anything else is refused; or
2. no principal is known and the key is the one Grace provisioned for the component: the
   public key published as `<keys dir>/<id>.pub` beside the component's private key, in the
   data dir only Grace's user can open.

Anything else is PERMISSION_DENIED naming the id and the rule. The decision is one small
function, so the authentication layer only has to supply the principal.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.components import provisioned_public_key
from services.common.errors import PermissionDenied


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

    def check(self, domain_id: str, public_key: bytes, principal: str | None) -> None:
        """Returns when `principal` (None: not authenticated) may register `public_key` as
        `domain_id`.

        Raises:
            PermissionDenied: the id is reserved and the claim is neither by its principal
                nor with its provisioned key.
        """
        if domain_id not in self.reserved:
            return
        if principal is not None:
            if principal == domain_id:
                return
            raise PermissionDenied(
                f"domain_id: {domain_id!r} is reserved for the Grace component of that name; "
                f"the caller is authenticated as {principal!r}",
                reason="RESERVED_IDENTITY",
                metadata={"domain_id": domain_id, "principal": principal},
            )
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
