"""Interop fixtures: one `grace up --with-examples` shared by the package, and the registry's.

Clients in other languages (Node.js, grpcurl) are tested against Grace as users run it: every
component in its own process under Guardian, on free ports, with reflection and health on.
The platform starts once for the whole package (about 5 s) and its process group is killed
after the last interop test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.grace_up import RunningGrace, running_grace
from tests.registry.conftest import clock, registry_server

__all__ = ["clock", "grace_platform", "registry_server"]


@pytest.fixture(scope="package")
async def grace_platform(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    """Boots every component and the example domains on free ports; kills them at the end."""
    async with running_grace(tmp_path_factory.mktemp("grace-up")) as platform:
        yield platform
