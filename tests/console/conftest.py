"""Browser fixtures: Debian's Chromium driven by Selenium, against `grace up --with-examples`.

Grace runs in its secure default: the gateway speaks HTTPS with a certificate from the
Grace CA. Chromium trusts exactly that certificate's key, pinned with
`--ignore-certificate-errors-spki-list` (the SHA-256 of the gateway certificate's
SubjectPublicKeyInfo), and no other; the console is signed in with the admin token `grace
up` wrote, as a person would paste it.

Chromium and chromedriver come from the system (`apt-get install chromium chromium-driver`,
done here when they are absent and the tests run as root); no browser is downloaded. Without
them the browser tests skip. A test that fails leaves a screenshot of the page in its tmp
directory (`failure.png`).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
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
    """One secure `grace up --with-examples` for the console's browser tests."""
    async with running_grace(tmp_path_factory.mktemp("grace-up")) as platform:
        yield platform


def gateway_spki_hash(grace: RunningGrace) -> str:
    """Base64 SHA-256 of the gateway certificate's SubjectPublicKeyInfo: what Chromium's
    `--ignore-certificate-errors-spki-list` pins. (A renewal brings a new key; the
    certificates live 24 hours, far longer than these tests.)"""
    cert = x509.load_pem_x509_certificate(
        (grace.data_dir / "pki" / "component" / "gateway.crt").read_bytes()
    )
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def sign_in(driver: WebDriver, grace: RunningGrace, token: str) -> None:
    """Signs the console in with `token` (kept in the tab's sessionStorage, as the
    console's sign-in form keeps it). The token is set from `/healthz`, a page of the same
    origin that calls nothing, so no call leaves unsigned."""
    driver.get(f"{grace.gateway_url}/healthz")
    driver.execute_script("sessionStorage.setItem('grace.token', arguments[0])", token)
    # Chromium asked that page's /favicon.ico, without a token (401): not the console's.
    driver.get_log("browser")  # type: ignore[no-untyped-call]


@pytest.fixture
def browser(
    chromium: tuple[str, str],
    grace: RunningGrace,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[WebDriver]:
    """A headless Chromium at 1280x800 with a fresh profile, trusting the gateway's
    certificate and signed in as admin; the page is saved on failure."""
    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (
        *CHROMIUM_FLAGS,
        # Honoured only with a user data dir of its own, which the profile is.
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--ignore-certificate-errors-spki-list={gateway_spki_hash(grace)}",
    ):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,800")
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    try:
        sign_in(driver, grace, grace.token)
        yield driver
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            driver.save_screenshot(str(tmp_path / "failure.png"))
            (tmp_path / "failure.html").write_text(driver.page_source)
        driver.quit()
