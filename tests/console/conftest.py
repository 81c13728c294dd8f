"""Browser fixtures: Debian's Chromium driven by Selenium, against `grace up --with-examples`.

Chromium and chromedriver come from the system (`apt-get install chromium chromium-driver`,
done here when they are absent and the tests run as root); no browser is downloaded. Without
them the browser tests skip. A test that fails leaves a screenshot of the page in its tmp
directory (`failure.png`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.grace_up import RunningGrace, running_grace

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _browser_binaries() -> tuple[str, str] | None:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def _install_chromium() -> tuple[str, str] | None:
    """The system's Chromium and chromedriver, installed with apt-get when possible."""
    if (found := _browser_binaries()) is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
        capture_output=True,
        check=False,
        timeout=1200,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return _browser_binaries()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keeps each phase's report on the test item, so `browser` knows whether it failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    binaries = _install_chromium()
    if binaries is None:
        pytest.skip("chromium and chromium-driver are not installed (apt-get needs root)")
    return binaries


@pytest.fixture(scope="package")
async def grace(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningGrace]:
    """One `grace up --with-examples` for the console's browser tests.

    Plain HTTP (`--insecure`): the headless browser would have to trust the Grace CA to
    load an HTTPS page. The console signs in and sends its bearer token all the same
    (test_console_browser checks the header on every call); the gateway's authentication
    of those calls is covered by tests/security.
    """
    async with running_grace(tmp_path_factory.mktemp("grace-up"), args=["--insecure"]) as platform:
        yield platform


@pytest.fixture
def browser(
    chromium: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[WebDriver]:
    """A headless Chromium at 1280x800 with a fresh profile; the page is saved on failure."""
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(driver.page_source)
        driver.quit()
