"""The console in a real browser: Debian's Chromium driven by Playwright, against the real
uvicorn server on loopback, a real worker delivering to a real aiosmtpd server, real Redis and
the SQLite record.

The tests sign in, preview, send an outcome and watch its progress reach 100% without a
reload, record a response, download the evidence, and run axe-core on every page (WCAG 2.2 AA:
zero violations); they go through the pages by keyboard alone too. Each page is captured at
1280 and 320 pixels wide into ``var/screenshots/`` (see the README's Console section).

Chromium is ``/usr/bin/chromium`` (``apt-get install -y chromium``, done here when missing and
running as root); the tests are skipped, saying why, only when it cannot be had.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect, sync_playwright

from notifier.config import Settings
from notifier.service import Service
from notifier.store import Store
from notifier.users import ROLES, add_user
from notifier.web import bound_port, make_server
from tests.conftest import Project, SmtpServer

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SCREENSHOTS = ROOT / "var" / "screenshots"
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
WIDTHS = (1280, 320)
SOC = "soc-strategy-2019"
# A page that renders every template for the whole audience (a send's confirmation) can take
# seconds on a loaded machine: a condition gets this long before it fails.
expect.set_options(timeout=30_000)
#: The first of the outcome's audience: refused by the SMTP server until the retry.
REFUSED = "richard.hollis@westmercia-police.example"
FUTURE = """\
title: A consultation still to open
url: https://www.pcc.example/consultations/future
summary: A draft plan, to be consulted on.
opens: 2030-01-07 09:00
closes: 2030-02-28 23:59
audience: [csp]
channels: [email]
"""
PASSWORD = "correct horse battery staple"


def _chromium() -> Path:
    """Debian's Chromium, installed now if missing and we may; skip (saying why) if not."""
    if not CHROMIUM.exists() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=900)
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing and could not be installed (apt-get install -y chromium needs root)")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the module."""
    path = _chromium()
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=str(path), args=FLAGS)
        yield found
        found.close()


@dataclass
class Console:
    """The running service: its base URL, its settings and the SMTP server its e-mail goes to."""

    base: str
    settings: Settings
    smtp: SmtpServer


@pytest.fixture
def console(project: Project, redis_url: str, smtp_server: SmtpServer) -> Iterator[Console]:
    """``notifier web`` (uvicorn on a loopback port) and a worker, on a copy of the example."""
    env = {
        **project.env,
        "NOTIFIER_REDIS_URL": redis_url,
        "NOTIFIER_SMTP_URL": smtp_server.url,
        "NOTIFIER_WEB_BIND": "127.0.0.1:0",
        "NOTIFIER_PUBLIC_URL": "http://localhost:8080",
    }
    project.write("config/consultations/future-plan.yaml", FUTURE)
    settings = Settings.from_env(env)
    record = Store.open(settings)
    try:
        for role in ROLES:
            add_user(record, f"{role}@pcc.example", role, PASSWORD)
    finally:
        record.close()
    server = make_server(settings)
    thread = threading.Thread(target=server.run, name="console-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the web server did not start"
        time.sleep(0.02)
    service = Service(settings)
    try:
        with service.worker(threads=4):
            yield Console(f"http://127.0.0.1:{bound_port(server)}", settings, smtp_server)
    finally:
        service.close()
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) and page."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    found = context.new_page()
    yield found
    context.close()


def sign_in_as(page: Page, console: Console, role: str) -> None:
    """Sign in on the sign-in page as the user with ``role``; it leads to the consultations."""
    page.goto(f"{console.base}/admin/sign-in")
    check(page, "sign-in")
    page.get_by_label("Email address").fill(f"{role}@pcc.example")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Consultations")


def check(page: Page, name: str) -> None:
    """Axe finds nothing at WCAG 2.2 AA on the page; it is captured at each width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{name} scrolls sideways at {width}px ({overflow}px too wide)"
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG}})
    assert results.violations_count == 0, f"{name}: {results.generate_report()}"


def test_a_sender_previews_sends_an_outcome_and_watches_it_reach_100_percent(page: Page, console: Console) -> None:
    sign_in_as(page, console, "sender")
    check(page, "consultations")
    page.get_by_role("link", name="Serious and Organised Crime Strategy").click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    check(page, "consultation")
    page.get_by_role("link", name="outcome", exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Preview: outcome")
    frame = page.frame_locator("iframe.email-html")
    expect(frame.locator("body")).to_contain_text("Serious and Organised Crime Strategy")
    check(page, "preview")
    page.get_by_role("button", name="Send outcome…").click()
    expect(page.locator(".reach")).to_contain_text("e-mails and 4 posts")
    check(page, "send-confirm")
    console.smtp.handler.always[REFUSED] = "550 5.1.1 no such mailbox"
    page.get_by_role("button", name="Yes, send").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("outcome #1")
    expect(page.locator("#progress-text")).to_contain_text("100% done", timeout=60_000)  # live, no reload
    assert console.smtp.handler.count() == 35
    check(page, "progress")
    _deliveries_shown(page)
    check(page, "deliveries")
    page.get_by_label("Status", exact=True).select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.deliveries tbody tr")).to_have_count(1)
    expect(page.locator("table.deliveries")).to_contain_text(REFUSED)
    check(page, "deliveries-failed")
    del console.smtp.handler.always[REFUSED]
    page.get_by_role("button", name="Retry the failed ones").click()
    expect(page.get_by_role("status")).to_contain_text("1 failed delivery put back")
    expect(page.locator("#progress-text")).to_contain_text("100% done", timeout=60_000)
    check(page, "retried")
    page.reload()
    expect(page.locator("#progress-text")).to_contain_text("Finished")
    expect(page.get_by_role("button", name="Retry the failed ones")).to_have_count(0)  # nothing failed now


def _deliveries_shown(page: Page) -> None:
    """Follow the page's refresh link until the record lists the deliveries (the workers
    archive final outcomes in batches, a moment after they are final)."""
    deadline = time.monotonic() + 60
    while True:
        page.locator("#progress-refresh a").click()
        if page.locator("table.deliveries").count():
            return
        assert time.monotonic() < deadline, "the deliveries never reached the record"
        page.wait_for_load_state()


def test_sending_again_or_early_asks_again_and_says_what_follows(page: Page, console: Console) -> None:
    sign_in_as(page, console, "sender")
    page.goto(f"{console.base}/admin/consultations/future-plan/events/opened")
    page.get_by_role("button", name="Send opened…").click()
    page.get_by_role("button", name="Yes, send").click()
    expect(page.locator(".warning")).to_contain_text("it will then not be sent at its scheduled time")
    check(page, "send-early")
    page.get_by_role("button", name="Yes, send it now").click()
    expect(page.locator("#progress-text")).to_contain_text("100% done", timeout=60_000)
    page.goto(f"{console.base}/admin/consultations/future-plan/events/opened")
    page.get_by_role("button", name="Send again…").click()
    expect(page.locator(".warning")).to_contain_text("was already sent")
    expect(page.get_by_role("button")).to_have_text(["Sign out", "Send again"])
    check(page, "send-again")
    page.goto(f"{console.base}/admin/consultations/future-plan")
    page.get_by_role("button", name="Continue").click()
    expect(page.locator(".error-summary")).to_contain_text("Enter the name of the event")
    check(page, "send-choose-error")
    page.get_by_role("link", name="Enter the name of the event to send, such as outcome").click()
    expect(page.get_by_label("Event name")).to_be_focused()
    page.goto(f"{console.base}/admin/consultations/no-such-consultation")
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    check(page, "not-found")


def test_a_sender_records_a_response_and_downloads_the_evidence(page: Page, console: Console) -> None:
    sign_in_as(page, console, "sender")
    page.goto(f"{console.base}/admin/consultations/{SOC}/responses")
    check(page, "responses")
    page.get_by_role("button", name="Record the response").click()
    expect(page.locator(".error-summary")).to_be_visible()
    check(page, "responses-error")
    page.get_by_role("link", name="Enter the e-mail address").click()
    expect(page.locator("#email")).to_be_focused()
    page.locator("#email").fill("cgg@telford-ccg.example")
    page.get_by_label("Organisation (optional)").fill("Telford and Wrekin CCG")
    page.get_by_label("Reference (optional)").fill("SOC-0001")
    page.get_by_role("button", name="Record the response").click()
    expect(page.get_by_role("status")).to_contain_text("recorded")
    expect(page.locator("table")).to_contain_text("cgg@telford-ccg.example")
    page.goto(f"{console.base}/admin/consultations/{SOC}/evidence")
    check(page, "evidence")
    with page.expect_download() as download:
        page.get_by_role("link", name="evidence.json").click()
    saved = Path(download.value.path())
    assert '"responses"' in saved.read_text(encoding="utf-8")


def test_an_admin_sees_and_changes_suppressions(page: Page, console: Console) -> None:
    sign_in_as(page, console, "admin")
    page.goto(f"{console.base}/admin/suppressions")
    check(page, "suppressions")
    page.get_by_label("E-mail address").first.fill("someone@example.org")
    page.get_by_label("Reason").first.fill("asked by phone")
    page.get_by_role("button", name="Suppress", exact=True).click()
    expect(page.locator("table")).to_contain_text("someone@example.org")
    check(page, "suppressions-added")


def test_the_console_works_by_keyboard_alone(page: Page, console: Console) -> None:
    sign_in_as(page, console, "admin")
    page.goto(f"{console.base}/admin/suppressions")
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_be_focused()
    email = page.locator("#email")
    for _ in range(20):
        page.keyboard.press("Tab")
        if email.evaluate("e => e === document.activeElement"):
            break
    expect(email).to_be_focused()
    page.keyboard.type("by.keyboard@example.org")
    page.keyboard.press("Tab")
    page.keyboard.type("typed without a mouse")
    page.keyboard.press("Enter")
    expect(page.locator("table")).to_contain_text("by.keyboard@example.org")


def test_an_admin_adds_a_console_user_and_a_wrong_password_is_told_plainly(page: Page, console: Console) -> None:
    page.goto(f"{console.base}/admin/sign-in")
    page.get_by_label("Email address").fill("admin@pcc.example")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".error-summary")).to_be_visible()
    check(page, "sign-in-error")
    sign_in_as(page, console, "admin")
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Console users")
    check(page, "users")
    page.get_by_label("Email address").fill("new.officer@pcc.example")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_label("First password").fill("a long enough password")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator("table")).to_contain_text("new.officer@pcc.example")
    check(page, "users-added")
