"""The partner portal's tools: test webhook, own dead letters, signing secret."""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, replace
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from standardwebhooks.webhooks import Webhook

from app import create_app
from app.console.portal_tools import human_seconds
from app.console.sessions import Kind, Sessions
from callbacks.secrets import MAX_SECRETS
from postback.settings import Settings
from tests.browser import Answering
from tests.console import csrf_of
from tests.hostile import Hostile
from tests.receiver import Receiver, Reply

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")


def open_portal(client: FlaskClient, redis_client: redis.Redis, partner_id: str) -> str:
    """A portal session for the partner on `client`; returns its CSRF token."""
    token = Sessions(redis_client, ttl_seconds=3600).open(Kind.PORTAL, partner_id=partner_id)
    client.set_cookie("pb_portal", token, path="/portal")
    return csrf_of(client.get("/portal/signing-secret").get_data(as_text=True))


def app_with(settings: Settings, redis_client: redis.Redis, **changes: Any) -> Flask:
    return create_app(asdict(replace(settings, **changes)), client=redis_client)


@pytest.fixture
def csrf(client: FlaskClient, redis_client: redis.Redis, partner: dict[str, Any]) -> str:
    """The partner signed in to the portal on `client`."""
    return open_portal(client, redis_client, partner["id"])


def make_partner(client: FlaskClient, admin_headers: dict[str, str], name: str) -> dict[str, Any]:
    reply = client.post("/v1/admin/partners", json={"name": name}, headers=admin_headers)
    assert reply.status_code == 201
    return {**reply.json, "headers": {"Authorization": f"Bearer {reply.json['api_key']}"}}


def text(reply: Any) -> str:
    return reply.get_data(as_text=True)


def send(client: FlaskClient, csrf: str, url: str, **form: str) -> Any:
    return client.post(
        "/portal/test-webhook", data={"csrf_token": csrf, "callback_url": url, **form}
    )


# --- Pages ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/portal/test-webhook", "/portal/dead-letters", "/portal/signing-secret"]
)
def test_each_tool_page_renders_with_one_heading(client, csrf, path):
    """Each tool's page renders for a portal session, with one <h1> and labelled inputs."""
    reply = client.get(path)
    page = text(reply)
    assert reply.status_code == 200 and page.count("<h1") == 1
    for input_id in re.findall(r'<input type="(?:url|text)" id="([^"]+)"', page):
        assert f'for="{input_id}"' in page


def test_the_tools_need_a_portal_session(client, partner):
    """Without a session the pages and their actions are 401s."""
    assert client.get("/portal/dead-letters").status_code == 401
    assert client.post("/portal/signing-secret/rotate").status_code == 401


# --- Test webhook -----------------------------------------------------------------------------


def test_a_test_webhook_arrives_signed_and_the_page_shows_the_answer(
    client, csrf, partner, receiver: Receiver
):
    """The webhook verifies with the partner's secret; the page shows 200, its id and headers."""
    reply = send(client, csrf, receiver.url)
    page = text(reply)
    (hook,) = receiver.wait_for(1)
    payload = Webhook(partner["signing_secret"]).verify(hook.body, hook.headers)
    assert payload["type"] == "postback.test" and payload["data"]["message"]
    assert hook.headers["webhook-id"].startswith("msg_")
    assert reply.status_code == 200
    assert "HTTP 200" in page and hook.headers["webhook-id"] in page
    assert hook.headers["webhook-signature"] in page
    assert partner["signing_secret"] not in page


def test_the_event_type_is_the_one_asked_for(client, csrf, partner, receiver):
    """A chosen event type is the message's type."""
    send(client, csrf, receiver.url, event_type="invoice.paid")
    (hook,) = receiver.wait_for(1)
    assert Webhook(partner["signing_secret"]).verify(hook.body, hook.headers)["type"] == (
        "invoice.paid"
    )


def test_the_answer_body_is_shown_escaped(client, csrf):
    """A receiver's body with markup appears on the page only as text."""
    with Answering(200, b"<script>alert(1)</script>") as answering:
        page = text(send(client, csrf, answering.url))
    assert len(answering.received) == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert(1)" not in page


def test_a_failing_answer_is_shown_and_nothing_is_stored(client, csrf, admin_headers):
    """A 500 is reported with its body; no delivery or dead letter is kept."""
    with Answering(500, b"database is down") as answering:
        page = text(send(client, csrf, answering.url))
    assert "HTTP 500" in page and "database is down" in page
    assert client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"] == []
    webhook_id = re.search(r"msg_[0-9A-Z]{26}", page).group(0)
    assert client.application.extensions["postback"].jobs.outbox.get(webhook_id) is None


def test_a_large_answer_body_is_truncated(client, csrf):
    """Only the first few KiB of an answer are read and shown."""
    with Answering(200, b"x" * 100_000) as answering:
        page = text(send(client, csrf, answering.url))
    assert "(first 4096 bytes)" in page and "x" * 4097 not in page


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("{loopback}", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("ftp://example.com/", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
    ],
)
def test_forbidden_urls_are_refused_and_nothing_is_sent(
    settings, redis_client, partner, receiver, url, reason
):
    """Without allowed CIDRs, loopback and metadata URLs are a 422 naming the rule; none sent."""
    strict = app_with(settings, redis_client, callback_allow_cidrs=()).test_client()
    token = open_portal(strict, redis_client, partner["id"])
    reply = send(strict, token, url.format(loopback=receiver.url))
    assert reply.status_code == 422 and reason in text(reply)
    assert receiver.received == []


def test_https_only_refuses_http(settings, redis_client, partner, receiver):
    """With POSTBACK_CALLBACK_REQUIRE_HTTPS an http URL is refused and nothing is sent."""
    strict = app_with(settings, redis_client, callback_require_https=True).test_client()
    token = open_portal(strict, redis_client, partner["id"])
    reply = send(strict, token, receiver.url)
    assert reply.status_code == 422 and "only https" in text(reply)
    assert receiver.received == []


@pytest.mark.parametrize("url", XSS)
def test_a_refused_url_is_echoed_escaped(client, csrf, url):
    """A hostile URL comes back in the form only escaped."""
    page = text(send(client, csrf, url))
    assert "<script>alert(1)" not in page and "<img src=x" not in page
    assert 'href="javascript:' not in page


@pytest.mark.parametrize("mode", ["trickle_status", "trickle_body", "continue_forever", "hang"])
def test_a_slow_receiver_is_cut_at_the_deadline(settings, redis_client, partner, mode):
    """A receiver that trickles or withholds its answer is cut off; the page says it timed out."""
    quick = app_with(settings, redis_client, delivery_timeout_seconds=0.5).test_client()
    token = open_portal(quick, redis_client, partner["id"])
    with Hostile(mode, interval_seconds=0.05, max_seconds=30) as hostile:
        page = text(send(quick, token, hostile.url))
        (seen,) = hostile.wait_closed(1)
    assert "Timed out" in page
    assert Webhook(partner["signing_secret"]).verify(seen.body, seen.headers)


def test_a_refused_connection_is_reported(client, csrf):
    """A port nobody listens on is reported as a refused connection."""
    with Answering(200, b"") as answering:
        url = answering.url
    assert "connection refused" in text(send(client, csrf, url))


def test_a_redirect_is_not_followed(client, csrf, receiver):
    """A 302 is the answer shown; the URL it points to gets nothing."""
    with Receiver() as elsewhere:
        receiver.reply(Reply(302, headers=(("Location", elsewhere.url),)))
        page = text(send(client, csrf, receiver.url))
        assert "HTTP 302" in page
        assert len(receiver.received) == 1 and elsewhere.received == []


def test_an_answer_cut_short_is_reported(client, csrf):
    """A receiver that closes the connection mid-body is reported as a closed connection."""
    with Hostile("close_mid_answer", max_seconds=30) as hostile:
        page = text(send(client, csrf, hostile.url))
        hostile.wait_for(1)
    assert "connection closed" in page


def test_a_test_webhook_holds_a_place_among_the_partners_waits(
    settings, redis_client, partner, receiver
):
    """When the partner holds all its waits, a test webhook is a 429 and nothing is sent."""
    app = app_with(settings, redis_client, partner_max_waits=2)
    client = app.test_client()
    token = open_portal(client, redis_client, partner["id"])
    waits = app.extensions["postback"].waits
    with contextlib.ExitStack() as held:
        for _ in range(2):
            held.enter_context(waits.hold(partner["id"], 30))
        reply = send(client, token, receiver.url)
    assert reply.status_code == 429 and "test webhook" in text(reply)
    assert receiver.received == []
    assert send(client, token, receiver.url).status_code == 200


def test_portal_pages_count_against_the_partners_rate_limit(
    settings, redis_client, partner, admin_headers
):
    """A portal page is one of its partner's requests: past POSTBACK_RATE_LIMIT, shared with
    the partner's API key, it is a 429 page saying when to retry; another partner is not
    held back."""
    app = app_with(settings, redis_client, rate_limit="4/minute")
    client = app.test_client()
    open_portal(client, redis_client, partner["id"])  # one page: the secret's
    pages = [client.get("/portal/jobs") for _ in range(2)]
    assert [r.headers["RateLimit-Remaining"] for r in pages] == ["2", "1"]
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 200
    limited = client.get("/portal/jobs")
    assert limited.status_code == 429 and limited.mimetype == "text/html"
    assert "Too many requests" in text(limited)
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert "unsafe-inline" not in limited.headers["Content-Security-Policy"]
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 429
    other = make_partner(app.test_client(), admin_headers, "Other")
    assert app.test_client().get("/v1/jobs", headers=other["headers"]).status_code == 200


def test_a_test_webhook_without_csrf_is_refused_and_not_sent(client, csrf, receiver):
    """A POST without the CSRF token is a 403 and nothing is sent."""
    reply = client.post("/portal/test-webhook", data={"callback_url": receiver.url})
    assert reply.status_code == 403
    assert receiver.received == []


# --- Dead letters -----------------------------------------------------------------------------


def submit(client, partner, url, job_input=None):
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": job_input or {"n": 1}, "callback_url": url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202
    return reply.json["id"]


def dead_letters_of(client, admin_headers, partner_id):
    query = {"partner_id": partner_id}
    return client.get("/v1/admin/dead-letters", query_string=query, headers=admin_headers).json[
        "items"
    ]


@pytest.fixture
def letters(client, partner, admin_headers, receiver, work):
    """One dead letter of the partner's and one of another partner's (each died on a 410)."""
    other = make_partner(client, admin_headers, "Other")
    receiver.reply(Reply(410), Reply(410))
    submit(client, partner, receiver.url)
    submit(client, other, receiver.url)
    work()
    (own,) = dead_letters_of(client, admin_headers, partner["id"])
    (foreign,) = dead_letters_of(client, admin_headers, other["id"])
    return {"own": own, "foreign": foreign}


def test_own_dead_letters_are_listed_and_no_one_elses(client, csrf, letters):
    """The list shows the partner's letter, not another partner's, even when asked for."""
    for query in ("", f"?partner_id={letters['foreign']['partner_id']}"):
        page = text(client.get(f"/portal/dead-letters{query}"))
        assert letters["own"]["id"] in page
        assert letters["foreign"]["id"] not in page


def test_dead_letters_filter_by_destination_and_time(client, csrf, letters, receiver):
    """Destination and time filters narrow the list as in the admin API."""
    own = letters["own"]["id"]
    assert own in text(
        client.get("/portal/dead-letters", query_string={"destination": receiver.url})
    )
    elsewhere = {"destination": "https://example.com"}
    assert own not in text(client.get("/portal/dead-letters", query_string=elsewhere))
    future = {"since": "2999-01-01T00:00:00Z", "until": ""}
    assert own not in text(client.get("/portal/dead-letters", query_string=future))


def test_dead_letters_page_by_the_pager(client, csrf, partner, receiver, work):
    """The Next page link carries the filters and shows the older letters, none twice."""
    receiver.reply(*[Reply(410)] * 3)
    for _ in range(3):
        submit(client, partner, receiver.url)
    work()
    first = text(client.get("/portal/dead-letters", query_string={"limit": 2}))
    next_url = re.search(r'<a href="([^"]+)" rel="next">', first).group(1).replace("&amp;", "&")
    assert "limit=2" in next_url
    second = text(client.get(next_url))
    pattern = r">(dlq_[0-9A-Z]{26})</a>"
    seen = re.findall(pattern, first) + re.findall(pattern, second)
    assert len(seen) == len(set(seen)) == 3
    assert 'rel="next"' not in second


@pytest.mark.parametrize("query", ["limit=0", "cursor=x", "since=yesterday", "colour=red"])
def test_bad_dead_letter_filters_are_422(client, csrf, query):
    """A bad filter is a 422 page naming it."""
    reply = client.get(f"/portal/dead-letters?{query}")
    assert reply.status_code == 422 and query.split("=")[0] in text(reply)


def test_a_dead_letter_shows_payload_and_attempts(client, csrf, letters):
    """The letter's page has its payload, its attempt log and its last error."""
    reply = client.get(f"/portal/dead-letters/{letters['own']['id']}")
    page = text(reply)
    assert reply.status_code == 200
    assert "job.completed" in page and letters["own"]["job_id"] in page
    assert "HTTP 410" in page and ">410<" in page
    assert ">Replay</button>" in page


def test_another_partners_letter_and_unknown_ids_are_404(client, csrf, letters):
    """Another partner's letter is a 404 page, exactly as an id that never existed."""
    foreign = client.get(f"/portal/dead-letters/{letters['foreign']['id']}")
    unknown = client.get("/portal/dead-letters/dlq_01J00000000000000000000000")
    assert foreign.status_code == unknown.status_code == 404
    assert letters["foreign"]["id"] in text(foreign)
    assert text(foreign).replace(letters["foreign"]["id"], "ID") == text(unknown).replace(
        "dlq_01J00000000000000000000000", "ID"
    )


def test_replay_redelivers_the_partners_letter(
    client, csrf, partner, letters, receiver, work, admin_headers
):
    """A replay says which webhook was scheduled, and the receiver then gets it."""
    own = letters["own"]
    reply = client.post(f"/portal/dead-letters/{own['id']}/replay", data={"csrf_token": csrf})
    assert reply.status_code == 303
    page = text(client.get(reply.headers["Location"]))
    assert f"Replayed: webhook {own['webhook_id']} scheduled" in page
    work()
    hooks = receiver.wait_for(3)
    assert hooks[-1].headers["webhook-id"] == own["webhook_id"]
    Webhook(partner["signing_secret"]).verify(hooks[-1].body, hooks[-1].headers)
    job = client.get(f"/v1/jobs/{own['job_id']}", headers=partner["headers"]).json
    assert job["delivery"]["status"] == "delivered"
    assert dead_letters_of(client, admin_headers, partner["id"]) == []


def test_replay_to_a_corrected_url(client, csrf, partner, letters, work):
    """A corrected URL takes the replay to the new receiver."""
    with Receiver() as corrected:
        reply = client.post(
            f"/portal/dead-letters/{letters['own']['id']}/replay",
            data={"csrf_token": csrf, "callback_url": corrected.url},
        )
        assert reply.status_code == 303
        work()
        (hook,) = corrected.wait_for(1)
    assert hook.headers["webhook-id"] == letters["own"]["webhook_id"]


def test_replaying_another_partners_letter_is_404_and_changes_nothing(
    client, csrf, letters, admin_headers
):
    """Another partner's letter cannot be replayed from the portal: 404, and it stays dead."""
    foreign = letters["foreign"]
    reply = client.post(f"/portal/dead-letters/{foreign['id']}/replay", data={"csrf_token": csrf})
    assert reply.status_code == 404
    assert [i["id"] for i in dead_letters_of(client, admin_headers, foreign["partner_id"])] == [
        foreign["id"]
    ]


@pytest.mark.parametrize("url", ["http://169.254.169.254/hook", "ftp://x/", *XSS])
def test_replay_to_a_forbidden_url_is_422_and_changes_nothing(
    client, csrf, partner, letters, admin_headers, url
):
    """A corrected URL the API would refuse is a 422; the letter stays."""
    own = letters["own"]
    reply = client.post(
        f"/portal/dead-letters/{own['id']}/replay", data={"csrf_token": csrf, "callback_url": url}
    )
    assert reply.status_code == 422
    assert "<script>alert(1)" not in text(reply) and "<img src=x" not in text(reply)
    assert [i["id"] for i in dead_letters_of(client, admin_headers, partner["id"])] == [own["id"]]


def test_replay_without_csrf_is_403_and_changes_nothing(
    client, csrf, partner, letters, admin_headers
):
    """A replay posted without the CSRF token is refused and the letter stays."""
    own = letters["own"]
    reply = client.post(f"/portal/dead-letters/{own['id']}/replay")
    assert reply.status_code == 403
    assert [i["id"] for i in dead_letters_of(client, admin_headers, partner["id"])] == [own["id"]]


def test_partner_controlled_data_in_a_letter_is_escaped(
    client, csrf, partner, receiver, work, admin_headers
):
    """Markup in a job's input and its callback URL's query appears only escaped."""
    receiver.reply(Reply(410))
    url = receiver.url + '?x="><img/src=x/onerror=alert(1)>'
    submit(client, partner, url, {"note": "<script>alert(1)</script>"})
    work()
    (letter,) = dead_letters_of(client, admin_headers, partner["id"])
    pages = [
        text(client.get("/portal/dead-letters")),
        text(client.get(f"/portal/dead-letters/{letter['id']}")),
    ]
    for page in pages:
        assert "<img/src=x" not in page and "&lt;img/src=x" in page
        assert f'href="{receiver.url}' not in page
    assert "<script>alert(1)" not in pages[1] and "&lt;script&gt;alert(1)" in pages[1]


# --- Signing secret ---------------------------------------------------------------------------


def test_the_secret_page_explains_the_grace_period(client, csrf):
    """The page says how many secrets sign and states the configured grace in human units."""
    page = text(client.get("/portal/signing-secret"))
    assert "1 secret signs" in page and "1 day" in page
    assert 'data-confirm="' in page and ">Rotate secret</button>" in page


def test_rotating_shows_the_new_secret_once_and_webhooks_then_carry_two_signatures(
    client, csrf, partner, receiver
):
    """The new secret is on the rotation's page only; then both secrets sign each webhook."""
    reply = client.post("/portal/signing-secret/rotate", data={"csrf_token": csrf})
    page = text(reply)
    assert reply.status_code == 200
    found = re.search(r'<code id="([^"]+)">(whsec_[A-Za-z0-9+/=]+)</code>', page)
    assert found is not None
    element_id, new_secret = found.groups()
    assert new_secret != partner["signing_secret"]
    assert f'data-copy="{element_id}"' in page and 'class="secret"' in page
    assert "2 secrets sign" in page
    later = text(client.get("/portal/signing-secret"))
    assert new_secret not in later and "2 secrets sign" in later
    send(client, csrf, receiver.url)
    (hook,) = receiver.wait_for(1)
    assert len(hook.headers["webhook-signature"].split()) == 2
    for secret in (partner["signing_secret"], new_secret):
        Webhook(secret).verify(hook.body, hook.headers)


def test_rotating_past_the_most_secrets_is_409(client, csrf, partner):
    """Once the most secrets sign, another rotation is a 409 page and changes nothing."""
    for _ in range(MAX_SECRETS - 1):
        assert (
            client.post("/portal/signing-secret/rotate", data={"csrf_token": csrf}).status_code
            == 200
        )
    reply = client.post("/portal/signing-secret/rotate", data={"csrf_token": csrf})
    assert reply.status_code == 409 and "whsec_" not in text(reply)
    store = client.application.extensions["postback"].partners.secrets
    assert store.state(partner["id"]).count == MAX_SECRETS


def test_rotating_without_csrf_is_403_and_changes_nothing(client, csrf, partner):
    """A rotation posted without the CSRF token is refused; the one secret still signs."""
    reply = client.post("/portal/signing-secret/rotate")
    assert reply.status_code == 403 and "whsec_" not in text(reply)
    store = client.application.extensions["postback"].partners.secrets
    assert store.signing_secrets(partner["id"]) == [partner["signing_secret"]]


def test_without_grace_the_page_says_the_old_secret_stops_at_once(settings, redis_client, partner):
    """With no grace period configured, the explanation says so and a rotation leaves one secret."""
    app = app_with(settings, redis_client, secret_grace_seconds=0).test_client()
    token = open_portal(app, redis_client, partner["id"])
    assert "stops signing at once" in text(app.get("/portal/signing-secret"))
    page = text(app.post("/portal/signing-secret/rotate", data={"csrf_token": token}))
    assert "1 secret signs" in page


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (86_400, "1 day"),
        (172_800, "2 days"),
        (5_400, "90 minutes"),
        (3_600, "1 hour"),
        (45, "45 seconds"),
    ],
)
def test_grace_periods_read_in_the_largest_whole_unit(seconds, words):
    """A number of seconds reads in the largest unit that states it whole."""
    assert human_seconds(seconds) == words


def test_names_that_never_resolve_hold_up_no_one_elses_lookup():
    """Lookups stuck on a name that never resolves (more of them than a small pool would
    hold) are cut at their deadline, and meanwhile another caller's lookup answers."""
    import threading

    from callbacks import probe
    from callbacks.ssrf import UrlPolicy

    stuck, release = threading.Event(), threading.Event()
    policy = UrlPolicy.from_settings(("127.0.0.0/8",), False)

    def resolver(host: str, port: int) -> list[str]:
        if host == "never.example":
            stuck.set()
            release.wait(30)
        return ["127.0.0.1"]

    def send_to(url: str, timeout_seconds: float) -> probe.Probe:
        return probe.post(
            url,
            b"{}",
            {},
            timeout_seconds=timeout_seconds,
            user_agent="t",
            url_policy=policy,
            resolver=resolver,
        )

    results: list[probe.Probe] = []
    slow = [
        threading.Thread(target=lambda: results.append(send_to("http://never.example/", 1.0)))
        for _ in range(8)
    ]
    try:
        for thread in slow:
            thread.start()
        assert stuck.wait(10)
        with Answering(200, b"fine") as answering:
            quick = send_to(answering.url.replace("127.0.0.1", "fine.example"), 10.0)
        assert quick.response.status_code == 200 and quick.body == b"fine"
        for thread in slow:
            thread.join(30)
        assert [r.response.error for r in results] == ["timeout"] * 8
    finally:
        release.set()
