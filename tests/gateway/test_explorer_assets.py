"""The /docs explorer's committed files are those of the swagger-ui-dist version the lock pins."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gateway.explorer import ASSETS

EXPLORER = ASSETS.parent
PROJECT_ROOT = EXPLORER.parents[1]


def _makefile_files() -> list[str]:
    text = (PROJECT_ROOT / "Makefile").read_text()
    match = re.search(r"^EXPLORER_FILES := ((?:.*\\\n)*.*)$", text, re.MULTILINE)
    assert match, "EXPLORER_FILES is missing from the Makefile"
    return match.group(1).replace("\\\n", " ").split()


def test_every_vendored_file_is_listed_and_the_page_needs_nothing_else() -> None:
    vendored = set(_makefile_files())
    assert {p.name for p in ASSETS.iterdir()} == vendored | {"init.js"}


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_the_vendored_files_match_the_locked_swagger_ui_dist(tmp_path: Path) -> None:
    for name in ("package.json", "package-lock.json"):
        shutil.copy(EXPLORER / name, tmp_path / name)
    subprocess.run(
        ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--silent"],
        cwd=tmp_path,
        check=True,
        timeout=300,
    )
    package = tmp_path / "node_modules" / "swagger-ui-dist"
    stale = [
        name
        for name in _makefile_files()
        if (package / name).read_bytes() != (ASSETS / name).read_bytes()
    ]
    assert stale == [], f"run `make explorer-assets`: {stale} differ from the locked package"
