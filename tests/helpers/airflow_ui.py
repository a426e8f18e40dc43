"""Playwright helpers driving Airflow 3's React UI in Debian's Chromium (not a test module).

Playwright never downloads a browser here: it launches /usr/bin/chromium (``apt-get install
chromium``). Every step saves a full-page screenshot ``<screenshots>/<nn>-<step>.png``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from playwright.sync_api import BrowserContext, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.helpers.waiting import WaitTimeout, wait_until

CHROMIUM = Path("/usr/bin/chromium")
# the closed network refuses Chromium's background connections: switch them off
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1400, "height": 900}
TIMEOUT_MS = 120_000  # a ceiling per action: a loaded machine renders slowly
# The context's default timeout covers actions only; `expect` has its own (5 s), which a run's
# page still loading its details panel on a slow machine once overran.
expect.set_options(timeout=TIMEOUT_MS)
REPORT_LINK = "Open the Evidently drift report"
REVIEW_TASK = "drift_review"

_shots: dict[BrowserContext, list] = {}  # context -> [directory, screenshots taken]


@contextmanager
def browser(screenshots: Path) -> Iterator[Page]:
    """A page of headless Debian Chromium (1400x900); everything is closed afterwards."""
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = chromium.new_context(viewport=VIEWPORT)
            context.set_default_timeout(TIMEOUT_MS)
            _shots[context] = [screenshots, 0]
            try:
                yield context.new_page()
            finally:
                _shots.pop(context, None)
                context.close()
        finally:
            chromium.close()


def screenshot(page: Page, step: str) -> Path:
    """Save a full-page screenshot ``<nn>-<step>.png``; returns its path."""
    state = _shots[page.context]
    state[1] += 1
    path = state[0] / f"{state[1]:02d}-{step}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _fail(page: Page, step: str, message: str) -> AssertionError:
    """An AssertionError naming a screenshot of the page as it is now."""
    return AssertionError(f"{message} (screenshot: {screenshot(page, step)}; page: {page.url})")


def _settle(page: Page) -> None:
    """Wait until the UI stopped fetching (it polls, so not forever)."""
    try:
        page.wait_for_load_state("networkidle", timeout=10_000)
    except PlaywrightTimeout:
        pass


def log_in(page: Page, url: str, username: str, password: str) -> None:
    """Sign in on the simple auth manager's login form."""
    page.goto(f"{url}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    screenshot(page, "login")
    page.get_by_role("button", name="Sign in").click()
    try:
        page.wait_for_url(lambda u: "/auth/login" not in u)
    except PlaywrightTimeout:
        raise _fail(page, "login-failed", f"still on the login page as {username!r}") from None
    _settle(page)
    screenshot(page, "logged-in")


def trigger_with_defaults(page: Page, url: str, dag_id: str, *, submit: bool = True) -> str:
    """Trigger a run from the DAG page's form, every param at its default; returns its run_id.
    With ``submit=False`` only check that the form accepts its defaults, then close it ("")."""
    page.goto(f"{url}/dags/{dag_id}")
    trigger = page.get_by_role("button", name="Trigger Dag")
    expect(trigger).to_be_enabled()
    _settle(page)
    screenshot(page, "dag")
    trigger.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Run Parameters")).to_be_visible()
    button = dialog.get_by_test_id("trigger-dag-submit")
    page.wait_for_timeout(500)  # the form validates its defaults once rendered
    screenshot(page, "trigger-form")
    flagged = dialog.locator(
        '[data-invalid], [aria-invalid="true"], [data-part="error-text"]'
    ).all_inner_texts()
    if flagged:
        raise _fail(page, "trigger-form-invalid", f"fields flagged invalid: {flagged}")
    empty = [
        dialog.locator(f'label[for="{field.get_attribute("id")}"]').inner_text().strip(" *\n")
        for field in dialog.locator("input[required]").all()
        if not field.input_value()
    ]
    if empty:
        raise _fail(page, "trigger-form-empty", f"required fields without a default: {empty}")
    if not button.is_enabled():
        raise _fail(page, "trigger-disabled", "the Trigger button is disabled")
    if not submit:
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        return ""
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith(f"/dags/{dag_id}/dagRuns")
    ) as posted:
        button.click()
    response = posted.value
    if not response.ok:
        raise _fail(page, "trigger-refused", f"POST dagRuns: {response.status} {response.text()}")
    run_id = response.json()["dag_run_id"]
    page.wait_for_url(re.compile(rf"/dags/{re.escape(dag_id)}/runs/"))
    shown = unquote(urlsplit(page.url).path).split("/runs/", 1)[1].split("/")[0]
    if shown != run_id:
        raise _fail(page, "triggered-elsewhere", f"triggered {run_id} but the UI shows {shown}")
    expect(page.get_by_text("Dag Run Triggered")).to_be_visible()
    expect(page.get_by_role("heading", name=run_id)).to_be_visible()  # the run's page
    _settle(page)
    screenshot(page, "triggered")
    return run_id


def _open_required_action(page: Page, url: str, dag_id: str, run_id: str) -> None:
    """The task instance's Required Actions tab of the run's drift_review."""
    page.goto(f"{url}/dags/{dag_id}/runs/{run_id}/tasks/{REVIEW_TASK}/required_actions")
    _settle(page)


def open_review_report(page: Page, url: str, dag_id: str, run_id: str) -> tuple[str, bytes]:
    """Follow the review body's drift report link; returns (report URL, its content)."""
    _open_required_action(page, url, dag_id, run_id)
    link = page.get_by_role("link", name=REPORT_LINK)
    try:
        expect(link).to_be_visible()
    except AssertionError:
        raise _fail(page, "review-without-report", f"no {REPORT_LINK!r} link") from None
    link.scroll_into_view_if_needed()  # the details panel scrolls, not the page
    screenshot(page, "required-action")
    href = link.get_attribute("href") or ""

    def is_report(response) -> bool:
        return response.url.split("#")[0] == href.split("#")[0] or response.url.endswith(href)

    with page.context.expect_event("response", predicate=is_report) as loaded:
        if link.get_attribute("target") == "_blank":
            with page.context.expect_page() as opened:
                link.click()
            report = opened.value
        else:
            link.click()
            report = page
    response = loaded.value
    report.wait_for_load_state("load")
    if not response.ok:
        raise _fail(report, "drift-report-failed", f"GET {response.url}: {response.status}")
    screenshot(report, "drift-report")
    body = response.body()
    # an unknown path gets the UI's own page (200) that says 404: the plugin is not serving
    try:  # Evidently renders its report in the page; the UI's 404 page would say so instead
        expect(report.get_by_text("Dataset Drift", exact=True)).to_be_visible()
    except AssertionError:
        raise _fail(report, "drift-report-missing",
                    f"{response.url} is no Evidently drift report") from None
    report_url = report.url
    if report is page:
        page.go_back()
    else:
        report.close()
    return report_url, body


def approve_review(page: Page, url: str, dag_id: str, run_id: str) -> None:
    """Answer the run's drift_review with Approve in its Required Actions form."""
    _open_required_action(page, url, dag_id, run_id)
    approve = page.get_by_role("button", name="Approve", exact=True)
    try:
        expect(approve).to_be_enabled()
    except AssertionError:
        raise _fail(page, "approve-unavailable", "no enabled Approve button") from None
    approve.scroll_into_view_if_needed()
    screenshot(page, "approve")
    approve.click()
    try:
        expect(page.get_by_text(f"{REVIEW_TASK} response successful")).to_be_visible()
    except AssertionError:
        raise _fail(page, "approve-failed", "the UI did not confirm the response") from None
    screenshot(page, "approved")


def _run_state_in_grid(page: Page, dag_id: str, run_id: str) -> str:
    """The state the grid's tooltip gives the run's bar ('' when the bar is not shown)."""
    bar = page.locator(f'a[href="/dags/{dag_id}/runs/{run_id}/"]')
    try:
        bar.hover(timeout=10_000)
        tip = page.get_by_text(f"Run ID: {run_id}").last
        tip.wait_for(timeout=5_000)
    except PlaywrightTimeout:
        return ""
    text = tip.evaluate("e => (e.innerText.includes('State:') ? e : e.parentElement).innerText")
    found = re.search(r"State:\s*(\w+)", text)
    return found.group(1).lower() if found else ""


def see_run_succeeded_in_grid(
    page: Page, url: str, dag_id: str, run_id: str, timeout_s: float = 300
) -> None:
    """Reload the DAG's grid until the run's bar says success (``timeout_s``: how long the UI
    may take to show it); AssertionError otherwise, with a screenshot."""
    page.goto(f"{url}/dags/{dag_id}")
    page.get_by_role("button", name=re.compile(r"^Show Grid")).click()  # the view is remembered
    seen = {"state": ""}

    def success() -> bool:
        seen["state"] = state = _run_state_in_grid(page, dag_id, run_id)
        if state == "failed":
            raise _fail(page, "grid-not-success", f"run {run_id} shows failed")
        if state != "success":
            page.wait_for_timeout(5_000)
            page.reload()
        return state == "success"

    try:
        wait_until(success, timeout_s, f"the grid showing run {run_id} green", interval=0)
    except WaitTimeout:
        raise _fail(page, "grid-not-success",
                    f"run {run_id} shows {seen['state'] or 'nothing'}") from None
    screenshot(page, "grid-success")


REPORTS_ENTRY = "K-means reports"


def open_reports_from_nav(page: Page, url: str) -> Page:
    """Click "K-means reports" in the UI's navigation, as a person would; returns the page
    once it shows the reports index (the UI embeds the plugin's page under
    ``/plugin/kmeans-reports``). A click that goes nowhere fails, with a screenshot."""
    page.goto(f"{url}/")
    _settle(page)
    entry = page.get_by_role("link", name=REPORTS_ENTRY)
    try:
        expect(entry.first).to_be_visible()
    except AssertionError:
        raise _fail(page, "reports-entry-missing", f"no {REPORTS_ENTRY!r} link in the "
                                                   "navigation") from None
    screenshot(page, "reports-entry")
    before = page.url
    entry.first.click()
    try:
        page.wait_for_url(lambda u: u != before)
    except PlaywrightTimeout:
        raise _fail(page, "reports-entry-dead", f"a click on {REPORTS_ENTRY!r} went nowhere") \
            from None
    _settle(page)
    # The UI embeds the plugin's page in an iframe, which may not be attached yet when the
    # network settles (a first, cold load): wait for it or for the page's own heading before
    # choosing where to look (counting iframes at once chose the page and waited in vain).
    heading = page.get_by_role("heading", name=REPORTS_ENTRY)
    try:
        expect(page.locator("iframe").or_(heading).first).to_be_visible()
    except AssertionError:
        raise _fail(page, "reports-not-rendered", "neither the embedded page nor the reports "
                                                  "index appeared") from None
    frame = page.frame_locator("iframe").first if page.locator("iframe").count() else page
    try:
        expect(frame.get_by_role("heading", name=REPORTS_ENTRY)).to_be_visible()
        expect(frame.get_by_text(re.compile(r"^\d+ reports in "))).to_be_visible()
    except AssertionError:
        raise _fail(page, "reports-not-rendered", "the reports index is not shown") from None
    screenshot(page, "reports-index")
    return page
