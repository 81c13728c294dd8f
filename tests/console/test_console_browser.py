"""The console in a real headless Chromium against a secure `grace up --with-examples`.

Each page shows the running platform's data; a workflow started from the console runs and
its DAG reaches SUCCEEDED on screen (from the watch stream); an approval clicked in the
console releases its request; every call carries the signed-in token; the page is usable at
1280x800, at 375 pixels wide and from the keyboard.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from typing import Any, TypeVar, cast

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.console.conftest import sign_in
from tests.grace_up import RunningGrace

pytestmark = pytest.mark.slow

WAIT_S = 60.0
T = TypeVar("T")


def _wait(driver: WebDriver, condition: Callable[[WebDriver], T | bool | None], what: str) -> T:
    """What `condition` returns once it is truthy, waiting up to WAIT_S."""
    result = WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(
        lambda d: condition(d) or None, message=f"waiting for {what}"
    )
    return cast("T", result)


def _browser_log(driver: WebDriver, kind: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = driver.get_log(kind)  # type: ignore[no-untyped-call]
    return entries


def _text(driver: WebDriver, css: str) -> str:
    elements = driver.find_elements(By.CSS_SELECTOR, css)
    return " ".join(e.text for e in elements)


def _shows(driver: WebDriver, css: str, *words: str) -> Callable[[WebDriver], bool]:
    return lambda d: all(w in _text(d, css) for w in words)


def _open(driver: WebDriver, grace: RunningGrace, page: str) -> None:
    driver.get(f"{grace.gateway_url}/ui/#/{page}")
    _wait(driver, lambda d: d.find_element(By.ID, "main").get_attribute("data-page") == page, page)


def _element(driver: WebDriver, css: str) -> WebElement:
    return _wait(driver, lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, css)), None), css)


async def _in_thread(fn: Callable[..., None], *args: Any) -> None:
    """Selenium blocks; the platform's fixture keeps running on the event loop meanwhile."""
    await asyncio.to_thread(fn, *args)


# ---- each page renders the running platform's data -----------------------------------


def _every_page_renders(driver: WebDriver, grace: RunningGrace) -> None:
    _open(driver, grace, "map")
    _element(driver, '#domain-map g[data-domain="ai_domain"]')
    _wait(driver, _shows(driver, "#domains-table", "data_domain", "memory_domain"), "domains")
    _wait(driver, _shows(driver, ".live", "live"), "the registry's watch stream")
    _wait(driver, _shows(driver, ".tiles", "services up"), "the overview")

    _open(driver, grace, "health")
    _wait(driver, _shows(driver, "#health-table", "orchestrator", "SERVING"), "components")
    _wait(driver, _shows(driver, "main", "Port probes"), "the port probes")

    _open(driver, grace, "events")
    _wait(driver, _shows(driver, "#history-table", "domain.registered"), "the history")
    _wait(driver, lambda d: "live" in d.find_element(By.CSS_SELECTOR, "form.row span").text, "tail")
    assert grace.security is not None
    published = httpx.post(
        f"{grace.gateway_url}/domains/events/publish",
        json={"event_type": "console.check", "source_domain": "operator", "data": {"n": 7}},
        timeout=30,
        verify=ssl.create_default_context(cafile=str(grace.security.ca_file)),
        headers={"authorization": f"Bearer {grace.token}"},
    )
    assert published.status_code == 200, published.text
    _wait(driver, _shows(driver, "#tail", "console.check", "operator"), "the live tail")

    _open(driver, grace, "governance")
    _wait(driver, _shows(driver, "#policies", "tasks-approval"), "the policies")
    _wait(driver, _shows(driver, "#governance-mode", "LOG_ONLY"), "the mode")

    _open(driver, grace, "log")
    size = _element(driver, "#tree-size")
    assert int(size.text) >= 1
    driver.find_element(By.ID, "verify-log").click()
    _wait(driver, _shows(driver, "#log-verdict", "valid:"), "the log's verdict")

    _open(driver, grace, "memory")
    _element(driver, "#memory-results")
    _element(driver, "#library-results")
    _wait(driver, _shows(driver, "main", "Statistics", "{"), "memory statistics")

    _open(driver, grace, "approvals")
    _element(driver, "#approvals")
    _element(driver, "#tasks")

    _open(driver, grace, "performance")
    _wait(driver, _shows(driver, "#perf-table", "eventbus", "orchestrator"), "figures")
    _wait(
        driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts polyline")) >= 3, "charts"
    )
    errors = [e for e in _browser_log(driver, "browser") if e["level"] == "SEVERE"]
    assert errors == []


async def test_each_page_renders_real_data_from_a_running_grace(
    grace: RunningGrace, browser: WebDriver
) -> None:
    await _in_thread(_every_page_renders, browser, grace)


# ---- a workflow started from the console -------------------------------------------------


def _run_a_workflow(driver: WebDriver, grace: RunningGrace) -> None:
    _open(driver, grace, "workflows")
    _element(driver, "#create-example").click()
    _element(driver, "#definitions button.run").click()
    for step in ("step_1", "step_2", "step_3"):
        _element(driver, f'#dag g[data-step="{step}"][data-state="SUCCEEDED"]')
    _wait(driver, _shows(driver, "#execution-state", "SUCCEEDED"), "the execution's state")
    _wait(driver, _shows(driver, "#execution", "document_id", "contribution_id"), "the output")
    driver.find_element(By.ID, "verify-proof").click()
    _wait(driver, _shows(driver, "#proof-verdict", "valid"), "the proof's verdict")
    assert "invalid" not in _text(driver, "#proof-verdict")
    _wait(driver, _shows(driver, "#executions", "SUCCEEDED"), "the executions table")
    # What the workflow stored is found from the memory page (its query is "timeout").
    _open(driver, grace, "memory")
    _wait(driver, _shows(driver, "#memory-results", "memory_domain"), "the stored insight")
    _wait(driver, _shows(driver, "#library-results", "port timeout"), "the indexed document")


async def test_a_workflow_started_from_the_console_reaches_succeeded_on_its_dag(
    grace: RunningGrace, browser: WebDriver
) -> None:
    await _in_thread(_run_a_workflow, browser, grace)


# ---- an approval clicked in the console ------------------------------------------------


async def _known_token(grace: RunningGrace, principal: str, *roles: str) -> str:
    """A new token, once the gateway knows it (servers re-read the token file at most once
    per GRACE_TOKEN_REFRESH_S)."""
    token = grace.new_token(principal, *roles)
    async with grace.http(timeout=30, token=token) as http:
        for _ in range(100):
            if (await http.get("/domains/list")).status_code == 200:
                return token
            await asyncio.sleep(0.1)
    raise AssertionError(f"the gateway does not know the token of {principal}")


def _approve(driver: WebDriver, grace: RunningGrace, approval_id: str, token: str) -> None:
    # A secure Grace records who signed in as the approver: alice, an operator.
    sign_in(driver, grace, token)
    _open(driver, grace, "approvals")
    row = _element(driver, f'[data-approval="{approval_id}"]')
    driver.find_element(By.ID, "approver").send_keys("alice")
    row.find_element(By.CSS_SELECTOR, "input.reason").send_keys("checked from the console")
    row.find_element(By.CSS_SELECTOR, "button.approve").click()
    _wait(
        driver,
        lambda d: not d.find_elements(By.CSS_SELECTOR, f'[data-approval="{approval_id}"]'),
        "the approval to leave the pending list",
    )


async def test_an_approval_clicked_in_the_console_releases_its_request(
    grace: RunningGrace, browser: WebDriver
) -> None:
    async with grace.http(timeout=30) as http:
        held = await http.post(
            "/kernels/governance/evaluate",
            json={
                "actor": "tasks",
                "action": "restart",
                "resource": "component:ai_domain",
                "risk_level": "RISK_LEVEL_MEDIUM",
            },
        )
        decision = held.json()["decision"]
        assert decision["verdict"] == "VERDICT_PENDING_APPROVAL"
        alice = await _known_token(grace, "alice", "operator")
        await _in_thread(_approve, browser, grace, decision["approval_id"], alice)
        approval = (
            await http.get(f"/kernels/governance/approvals/{decision['approval_id']}")
        ).json()
    approval = approval.get("approval", approval)
    assert approval["status"] == "APPROVAL_STATUS_APPROVED"
    assert approval["decision_reason"] == "checked from the console"
    assert approval["decided_by"] == "alice"


# ---- sign-in, layout, keyboard ----------------------------------------------------------


def _sign_in(driver: WebDriver, grace: RunningGrace, token: str) -> list[str]:
    _open(driver, grace, "map")
    driver.find_element(By.ID, "signout").click()
    field = _element(driver, "#token")
    assert driver.find_element(By.ID, "main").get_attribute("hidden") is not None
    field.send_keys(token, Keys.ENTER)
    _element(driver, '#domain-map g[data-domain="ai_domain"]')
    stored = driver.execute_script("return sessionStorage.getItem('grace.token')")
    assert stored == token
    sent = []
    for entry in _browser_log(driver, "performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.requestWillBeSent":
            continue
        request = message["params"]["request"]
        if "/domains/" in request["url"]:
            sent.append(request["headers"].get("Authorization", ""))
    return sent


async def test_the_signed_in_token_is_kept_in_the_tab_and_sent_on_every_call(
    grace: RunningGrace, browser: WebDriver
) -> None:
    token = await _known_token(grace, "console-tester", "reader")
    sent = await asyncio.to_thread(_sign_in, browser, grace, token)
    bearer = f"Bearer {token}"
    after = sent[sent.index(bearer) :] if bearer in sent else []
    assert len(after) >= 2, sent  # the list and the registry's stream at least
    assert set(after) == {bearer}


def _narrow(driver: WebDriver, grace: RunningGrace) -> None:
    # A headless window is at least 500 pixels wide: emulate the phone's screen instead.
    metrics = {"width": 375, "height": 800, "deviceScaleFactor": 1, "mobile": True}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    for page in ("map", "health", "workflows"):
        _open(driver, grace, page)
        _element(driver, "main table")
        width = driver.execute_script("return document.documentElement.scrollWidth")
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert viewport == 375
        assert width <= viewport, f"{page} scrolls sideways: {width} > {viewport}"
    menu = driver.find_element(By.ID, "menu")
    assert menu.is_displayed()
    assert not driver.find_element(By.ID, "nav-events").is_displayed()
    menu.click()
    driver.find_element(By.ID, "nav-events").click()
    _wait(
        driver, lambda d: d.find_element(By.ID, "main").get_attribute("data-page") == "events", ""
    )


async def test_the_console_fits_a_narrow_screen_with_a_menu(
    grace: RunningGrace, browser: WebDriver
) -> None:
    await _in_thread(_narrow, browser, grace)


def _keyboard(driver: WebDriver, grace: RunningGrace) -> None:
    _open(driver, grace, "map")
    _element(driver, "#domains-table")
    driver.execute_script("document.activeElement.blur(); window.focus()")
    reached = []
    keys = ActionChains(driver)
    for _ in range(15):
        keys.send_keys(Keys.TAB).perform()
        reached.append(driver.switch_to.active_element.get_attribute("id"))
    navs = [i for i in reached if i and i.startswith("nav-")]
    expected = [
        "nav-map",
        "nav-health",
        "nav-events",
        "nav-workflows",
        "nav-approvals",
        "nav-memory",
        "nav-governance",
        "nav-log",
        "nav-performance",
    ]
    assert navs[: len(expected)] == expected, reached  # in order, before the tab order wraps
    driver.find_element(By.ID, "nav-governance").send_keys(Keys.ENTER)
    _wait(
        driver,
        lambda d: d.find_element(By.ID, "main").get_attribute("data-page") == "governance",
        "",
    )


async def test_the_tab_order_reaches_every_page_and_enter_opens_it(
    grace: RunningGrace, browser: WebDriver
) -> None:
    await _in_thread(_keyboard, browser, grace)
