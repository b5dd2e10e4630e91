"""The console and the portal in a real browser: Chromium headless, driven by Playwright.

Each test signs in as a person would, clicks what a person would click, and keeps a
screenshot of each page it visits (`tests.browser`). No test may leave a console error
(a Content-Security-Policy violation is one), an uncaught script error or a dialog.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask

from app.portal_links import PortalLinks
from callbacks.breaker import CircuitBreaker
from postback.settings import Settings
from tests.browser import (
    CHROMIUM_FLAGS,
    Answering,
    LiveServer,
    Shots,
    Watched,
    chromium_path,
    served,
)
from tests.conftest import ADMIN_TOKEN
from tests.receiver import Receiver, Reply
from worker.process import dispatcher

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


XSS_SCRIPT = "<script>window.__xss = 'script'</script>"
XSS_IMG = '"><img src=x onerror="window.__xss = \'img\'">'


def submit(client: Any, partner: dict[str, Any], url: str, payload: Any = None) -> str:
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": payload or {"n": 1}, "callback_url": url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


@pytest.fixture
def work(work: Any, settings: Settings, redis_client: Any) -> Any:
    """The suite's `work`, its deliveries drained on a thread of their own: Playwright's event
    loop runs on this one (and RQ's worker needs it, for its signal handlers)."""

    def run() -> None:
        work(deliveries=False)
        failed: list[BaseException] = []

        def drain() -> None:
            try:
                dispatcher(settings, redis_client).drain()
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=drain)
        thread.start()
        thread.join(timeout=120)
        assert not thread.is_alive() and not failed, failed

    return run


def another_partner(client: Any) -> dict[str, Any]:
    """A second partner, made through the admin API, with `headers` to act as it."""
    made = client.post(
        "/v1/admin/partners",
        json={"name": "Other"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ).json
    return {**made, "headers": {"Authorization": f"Bearer {made['api_key']}"}}


def no_script_ran(page: Any) -> None:
    """Nothing an injected script would have done happened in `page`."""
    assert page.evaluate("() => window.__xss === undefined")
    page.watched.clean()


def test_replay_a_dead_letter_to_a_corrected_url(
    page: Any, live: LiveServer, client: Any, partner: dict[str, Any], work: Any
) -> None:
    """A webhook a failing receiver killed is found, replayed to a corrected URL, delivered."""
    with Receiver(Reply(410)) as failing, Receiver(Reply(200)) as fixed:
        job_id = submit(client, partner, failing.url)
        work()
        sign_in(page, live)
        page.get_by_role("navigation", name="Console").get_by_role(
            "link", name="Dead letters"
        ).click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Dead letters")
        row = page.get_by_role("row").filter(has_text=job_id)
        expect(row).to_contain_text("HTTP 410")
        page.shots.take(page, "dead-letters")
        row.get_by_role("link").first.click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("Dead letter")
        expect(page.get_by_role("cell", name="410", exact=True)).to_be_visible()
        page.shots.take(page, "dead-letter")
        page.get_by_label("Corrected callback URL").fill(fixed.url)
        page.get_by_role("button", name="Replay", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Replayed")
        work()
        assert len(fixed.received) == 1
        page.goto(f"{live.url}/console/jobs/{job_id}")
        expect(page.locator("main")).to_contain_text("delivered")
        page.shots.take(page, "job-delivered")
    page.watched.clean()


def test_replay_all_that_match_after_seeing_the_count(
    page: Any, live: LiveServer, client: Any, partner: dict[str, Any], work: Any
) -> None:
    """Bulk replay shows how many letters match before it replays exactly those."""
    other = another_partner(client)
    with Receiver(Reply(410)) as failing:
        for _ in range(3):
            submit(client, partner, failing.url)
        submit(client, other, failing.url)
        work()
        sign_in(page, live)
        page.goto(f"{live.url}/console/dead-letters")
        page.locator("select[name=partner_id]").select_option(partner["id"])
        page.get_by_role("button", name="Filter").click()
        expect(page.get_by_role("row")).to_have_count(4)  # a header and three letters
        page.get_by_role("link", name="Replay all that match").click()
        expect(page.locator("main")).to_contain_text("3 dead letters")
        page.shots.take(page, "replay-confirmation")
        page.get_by_role("button", name="Replay").click()
        expect(page.get_by_role("status")).to_contain_text("Replayed 3 dead letters")
        page.shots.take(page, "replayed")
    page.watched.clean()


def test_reset_an_open_circuit(page: Any, live: LiveServer, redis_client: Any) -> None:
    """An open circuit is listed with its state and closed by its Reset button."""
    breaker = CircuitBreaker(redis_client)
    for _ in range(5):
        breaker.record("ptn_browser", "https://hooks.example.com:443", healthy=False)
    sign_in(page, live)
    page.goto(f"{live.url}/console/circuits")
    row = page.get_by_role("row").filter(has_text="ptn_browser")
    expect(row).to_contain_text("open")
    page.shots.take(page, "circuits")
    row.get_by_role("button", name="Reset").click()
    expect(page.get_by_role("status")).to_contain_text("Reset the circuit")
    assert breaker.state("ptn_browser", "https://hooks.example.com:443")["state"] == "closed"
    page.watched.clean()


def test_create_a_partner_and_use_its_key(page: Any, live: LiveServer, client: Any) -> None:
    """A partner made on the Partners page shows its key once, and the key works on the API."""
    sign_in(page, live)
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Partners").click()
    page.get_by_label("Name").fill("Browser Partner")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("created")
    api_key = page.locator("#api-key").inner_text().strip()
    assert api_key.startswith("pbk_")
    expect(page.get_by_role("button", name="Copy").first).to_be_visible()
    page.shots.take(page, "partner-created")
    reply = client.get("/v1/jobs", headers={"Authorization": f"Bearer {api_key}"})
    assert reply.status_code == 200
    page.goto(f"{live.url}/console/partners")
    expect(page.locator("main")).to_contain_text("Browser Partner")
    expect(page.locator("main")).not_to_contain_text(api_key)
    page.shots.take(page, "partners")
    page.watched.clean()


def test_overview_and_jobs_pages(
    page: Any, live: LiveServer, client: Any, partner: dict[str, Any], work: Any
) -> None:
    """The overview shows the system's counts and charts; Jobs finds a partner's job."""
    with Receiver(Reply(200)) as fine:
        job_id = submit(client, partner, fine.url)
        work()
    sign_in(page, live)
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")
    expect(page.locator("svg").first).to_be_visible()
    page.shots.take(page, "overview")
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Jobs").click()
    page.locator("select[name=partner_id]").select_option(partner["id"])
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=job_id).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(job_id)
    expect(page.locator("main")).to_contain_text("completed")
    page.shots.take(page, "job")
    page.watched.clean()


def test_a_hostile_job_input_renders_as_text(
    page: Any, live: LiveServer, client: Any, partner: dict[str, Any], work: Any
) -> None:
    """Script and markup in a job's input show as text on the job's page and run nothing."""
    with Receiver(Reply(200)) as fine:
        job_id = submit(
            client,
            partner,
            fine.url,
            {"a": XSS_SCRIPT, "b": XSS_IMG, "c": "javascript:window.__xss='url'"},
        )
        work()
    sign_in(page, live)
    page.goto(f"{live.url}/console/jobs/{job_id}")
    expect(page.locator("main")).to_contain_text("window.__xss = 'script'")
    expect(page.locator("main")).to_contain_text("onerror=")
    page.shots.take(page, "hostile-input")
    no_script_ran(page)


def open_portal(page: Any, live: LiveServer, partner: dict[str, Any]) -> None:
    """Ask for the partner's portal link over HTTP as an admin would, and open it."""
    reply = requests.post(
        f"{live.url}/v1/admin/partners/{partner['id']}/portal-link",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    page.goto(reply.json()["url"])
    expect(page.get_by_role("heading", level=1)).to_contain_text(partner["name"])
    page.shots.take(page, "portal-entry")
    page.get_by_role("button", name="Open the portal").click()
    expect(page.get_by_role("navigation", name="Portal")).to_be_visible()


def test_the_portal_shows_one_partner_and_its_tools(
    page: Any, live: LiveServer, client: Any, partner: dict[str, Any], work: Any
) -> None:
    """Through its link a partner sees only its own jobs, sends a test webhook, replays its dead
    letter and rotates its secret; a receiver's hostile answer shows as text."""
    other = another_partner(client)
    hostile_body = f"{XSS_SCRIPT}{XSS_IMG}".encode()
    with (
        Receiver(Reply(410)) as failing,
        Receiver(Reply(200)) as fixed,
        Answering(500, hostile_body) as hostile,
    ):
        own_job = submit(client, partner, failing.url)
        other_job = submit(client, other, fixed.url)
        work()
        open_portal(page, live, partner)
        expect(page.get_by_role("heading", level=1)).to_have_text("Jobs")
        expect(page.locator("main")).to_contain_text(own_job)
        expect(page.locator("main")).not_to_contain_text(other_job)
        page.shots.take(page, "portal-jobs")
        answer = page.goto(f"{live.url}/portal/jobs/{other_job}")
        assert answer is not None and answer.status == 404
        page.shots.take(page, "portal-other-job")

        nav = page.get_by_role("navigation", name="Portal")
        nav.get_by_role("link", name="Test webhook").click()
        page.get_by_label("Callback URL").fill(hostile.url)
        page.get_by_role("button", name="Send").click()
        expect(page.locator("main")).to_contain_text("500")
        expect(page.locator("main")).to_contain_text("window.__xss = 'script'")
        assert len(hostile.received) == 1
        page.shots.take(page, "portal-test-webhook")
        no_script_ran(page)

        nav.get_by_role("link", name="Dead letters").click()
        page.get_by_role("row").filter(has_text=own_job).get_by_role("link").first.click()
        page.get_by_label("Corrected callback URL").fill(fixed.url)
        page.shots.take(page, "portal-dead-letter")
        page.get_by_role("button", name="Replay").click()
        expect(page.get_by_role("status")).to_contain_text("Replayed")
        work()
        assert [r.path for r in fixed.received].count("/hook") == 2

        nav.get_by_role("link", name="Signing secret").click()
        page.shots.take(page, "portal-signing-secret")
        page.get_by_role("button", name="Rotate secret").click()
        new_secret = page.locator("#new-secret").inner_text().strip()
        assert new_secret.startswith("whsec_") and new_secret != partner["signing_secret"]
        assert page.watched.confirmed  # the page asked before rotating
        page.shots.take(page, "portal-secret-rotated")
    page.watched.clean()


def test_an_expired_portal_link_is_refused(
    page: Any, live: LiveServer, partner: dict[str, Any], redis_client: Any
) -> None:
    """A portal link past its expiry answers 410 and opens no session."""
    token = PortalLinks(redis_client, ttl_seconds=3600).token(
        partner["id"], expires_at=time.time() - 1
    )
    answer = page.goto(f"{live.url}/portal/enter?token={token}")
    assert answer is not None and answer.status == 410
    expect(page.get_by_role("heading", level=1)).to_contain_text("expired")
    page.shots.take(page, "portal-link-expired")
    assert not [c for c in page.context.cookies() if c["name"] == "pb_portal"]
    answer = page.goto(f"{live.url}/portal/jobs")
    assert answer is not None and answer.status == 401
    page.watched.clean()
