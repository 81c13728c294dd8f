"""The ids of Grace's own components, and where the key Grace provisions for each one lives.

These ids are reserved: an event whose `source_domain` is `orchestrator` is believed
because it is signed by the orchestrator's key, so no caller may register a key under such
an id (see `services.kernels.trust.claims`). A component's key lives in the data dir that
only Grace's user can open (mode 0700): `<data dir>/<id>.key` (PEM, 0600), with its public
half published beside it as `<data dir>/<id>.pub`. Guardian creates it before it issues
the component's certificate, which binds it (`services.guardian.credentials`); a component
started alone creates it at its first start. The example domains of the default topology
follow the same convention through the SDK, so they are reserved too.
"""

from __future__ import annotations

from pathlib import Path

from services.common import signing

# The core components, the kernels (those that run today and those being added), and the
# example domains of the default topology (services/guardian/default.toml; a test keeps
# this list and the topology in step).
COMPONENT_IDS: frozenset[str] = frozenset(
    {
        "registry",
        "eventbus",
        "memory",
        "orchestrator",
        "guardian",
        "gateway",
        "governance",
        "immutable_log",
        "trust",
        "immune",
        "scheduler",
        "tasks",
        "triggers",
        "librarian",
        "learning",
        "data_domain",
        "memory_domain",
        "ai_domain",
        "governance_domain",
    }
)


def component_key_path(data_dir: Path, component: str) -> Path:
    """The private key Grace provisions for `component`: `<data dir>/<component>.key`."""
    return data_dir / f"{component}.key"


def provisioned_public_key(data_dir: Path, component: str) -> bytes | None:
    """The raw public key of the key provisioned for `component`, or None when the
    component has not started yet (no `<data dir>/<component>.pub`)."""
    return signing.read_public_key(signing.public_key_path(component_key_path(data_dir, component)))
