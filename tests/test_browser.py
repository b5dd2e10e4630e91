"""The console and the portal in a real browser: Chromium headless, driven by Playwright.

Each test signs in as a person would, clicks what a person would click, and keeps a
screenshot of each page it visits (`tests.browser`). No test may leave a console error
(a Content-Security-Policy violation is one), an uncaught script error or a dialog.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from tests.browser import CHROMIUM_FLAGS, LiveServer, Shots, Watched, chromium_path, served
from tests.conftest import ADMIN_TOKEN

playwright = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium found: apt-get install -y chromium to run browser tests"
)
expect = playwright.expect


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, args=list(CHROMIUM_FLAGS), headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def live(app: Flask) -> Iterator[LiveServer]:
    yield from served(app)


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    opened.watched = Watched()
    opened.watched.attach(opened)
    opened.shots = Shots(request.node.name)
    try:
        yield opened
    finally:
        context.close()


def sign_in(page: Any, live: LiveServer) -> None:
    """Sign in to the console through its form."""
    page.goto(f"{live.url}/console")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.shots.take(page, "sign-in")
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("navigation", name="Console")).to_be_visible()


def test_sign_in_and_out(page: Any, live: LiveServer) -> None:
    """An admin signs in with the token, sees the console's navigation, and signs out."""
    page.goto(f"{live.url}/console")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the admin token")
    sign_in(page, live)
    nav = page.get_by_role("navigation", name="Console")
    for label in ("Overview", "Jobs", "Dead letters", "Circuits", "Partners"):
        expect(nav.get_by_role("link", name=label)).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "pb_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.shots.take(page, "overview")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_contain_text("signed out")
    page.goto(f"{live.url}/console/partners")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    page.watched.clean()


def test_a_change_without_the_csrf_token_is_refused(page: Any, live: LiveServer) -> None:
    """A POST from the signed-in browser without the page's CSRF token is refused with 403."""
    sign_in(page, live)
    status = page.evaluate(
        """async () => (await fetch("/console/sign-out", {method: "POST"})).status"""
    )
    assert status == 403
    page.goto(f"{live.url}/console")
    expect(page.get_by_role("navigation", name="Console")).to_be_visible()
    page.watched.clean()
