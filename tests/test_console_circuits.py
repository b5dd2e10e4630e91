"""The console's circuits page: the list, its filter and pages, and a reset per circuit."""

from __future__ import annotations

import dataclasses
import html
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from callbacks.breaker import CircuitBreaker
from callbacks.outbox import destination
from postback.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.console import sign_in
from tests.receiver import Reply

DEST = "https://hooks.example.com:443"
_NEXT = re.compile(r'<a href="([^"]+)" rel="next">')
_ROW = re.compile(r"<tr>\s*<td><code>([^<]+)</code></td>\s*<td class=\"mono\">([^<]+)</td>")


def text(reply) -> str:
    return reply.get_data(as_text=True)


def rows(page: str) -> list[tuple[str, str]]:
    """(destination, partner) of each row of the list."""
    return [(html.unescape(d), html.unescape(p)) for d, p in _ROW.findall(page)]


def circuits(client: FlaskClient, admin_headers: dict[str, str]) -> list[tuple[str, str, str]]:
    """(destination, partner, state) of every circuit, as the admin API lists them."""
    items = client.get("/v1/admin/circuits", headers=admin_headers).json["items"]
    return [(c["destination"], c["partner_id"], c["state"]) for c in items]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One attempt per delivery: each 500 is one failure of the circuit, one dead letter."""
    return dataclasses.replace(settings, retry_max_attempts=1)


@pytest.fixture
def csrf(client: FlaskClient) -> str:
    """The console signed in as the admin; the session's CSRF token."""
    return sign_in(client, ADMIN_TOKEN)


@pytest.fixture
def breaker(app) -> CircuitBreaker:
    return CircuitBreaker(app.extensions["postback"].redis)


@pytest.fixture
def opened(breaker: CircuitBreaker) -> list[str]:
    """Three partners' circuits to one destination, opened by five failures each."""
    owners = ["ptn_a", "ptn_b", "ptn_c"]
    for owner in owners:
        for _ in range(5):
            breaker.record(owner, DEST, healthy=False)
    return owners


def test_the_list_shows_each_circuit_with_a_reset(client, csrf, opened):
    """Each circuit shows its destination, partner, state, failures, half-open time and Reset."""
    page = text(client.get("/console/circuits"))
    assert rows(page) == [(DEST, owner) for owner in opened]
    assert page.count('<span class="status status-open">open</span>') == 3
    assert page.count('<td class="num">5</td>') == 3 and " UTC</td>" in page
    assert page.count('<button type="submit">Reset</button>') == 3
    assert page.count("<h1>") == 1 and "<th" in page


def test_pages_and_the_destination_filter(client, csrf, opened, breaker):
    """The list pages by next link and filters by destination (a URL is reduced to one)."""
    breaker.record("ptn_a", "http://other.example.com:80", healthy=False)
    seen, url = [], "/console/circuits?limit=2"
    while url:
        page = text(client.get(url))
        seen += rows(page)
        found = _NEXT.search(page)
        url = html.unescape(found.group(1)) if found else ""
    other = ("http://other.example.com:80", "ptn_a")
    assert seen == [other] + [(DEST, owner) for owner in opened]
    page = text(client.get("/console/circuits?destination=https://hooks.example.com/x"))
    assert rows(page) == [(DEST, owner) for owner in opened]
    page = text(client.get("/console/circuits", query_string={"destination": ""}))
    assert len(rows(page)) == 4


@pytest.mark.parametrize("query", ["cursor=garbage", "limit=0", "destination=ftp://x", "x=1"])
def test_a_bad_query_is_a_422_page(client, csrf, query):
    """A query the API's schema refuses is a 422 page naming the field."""
    reply = client.get(f"/console/circuits?{query}")
    assert reply.status_code == 422 and f"<code>{query.split('=')[0]}</code>" in text(reply)


def test_reset_closes_one_partners_circuit(client, csrf, opened, admin_headers):
    """Reset closes that partner's circuit to that destination, and says so on the list."""
    reply = client.post(
        "/console/circuits/reset?limit=2",
        data={"csrf_token": csrf, "destination": DEST, "partner_id": "ptn_b"},
    )
    assert reply.status_code == 303 and reply.headers["Location"] == "/console/circuits?limit=2"
    page = text(client.get(reply.headers["Location"]))
    assert f"Reset the circuit of {DEST} for ptn_b" in page
    assert circuits(client, admin_headers) == [(DEST, "ptn_a", "open"), (DEST, "ptn_c", "open")]


def test_reset_lets_parked_deliveries_go(
    client, csrf, partner, receiver, work, admin_headers, redis_client
):
    """A circuit opened by a receiver's 500s parks the next webhook; Reset sends it."""
    receiver.default = Reply(500)
    dest = destination(receiver.url)
    for _ in range(5):
        client.post(
            "/v1/jobs",
            json={"type": "echo", "input": {}, "callback_url": receiver.url},
            headers=partner["headers"],
        )
        work()
    assert circuits(client, admin_headers) == [(dest, partner["id"], "open")]
    parked = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {}, "callback_url": receiver.url},
        headers=partner["headers"],
    ).json["id"]
    work()
    assert len(receiver.received) == 5
    page = text(client.get("/console/circuits"))
    assert rows(page) == [(dest, partner["id"])]
    receiver.default = Reply(200)
    reply = client.post(
        "/console/circuits/reset",
        data={"csrf_token": csrf, "destination": dest, "partner_id": partner["id"]},
    )
    assert reply.status_code == 303
    notice = f"Reset the circuit of {dest} for {partner['id']}"
    assert notice in text(client.get("/console/circuits"))
    work()
    receiver.wait_for(6)
    job = client.get(f"/v1/jobs/{parked}", headers=partner["headers"]).json
    assert job["delivery"]["status"] == "delivered"
    assert circuits(client, admin_headers) == []


def test_reset_of_a_closed_circuit_says_so(client, csrf):
    """Reset of a circuit that has no state says it was already closed."""
    client.post(
        "/console/circuits/reset",
        data={"csrf_token": csrf, "destination": DEST, "partner_id": "ptn_z"},
    )
    assert f"The circuit of {DEST} for ptn_z was already closed" in text(
        client.get("/console/circuits")
    )


@pytest.mark.parametrize(
    "data",
    [
        {"destination": "garbage", "partner_id": "ptn_a"},
        {"partner_id": "ptn_a"},
        {"destination": DEST, "partner_id": "ptn_a", "colour": "red"},
    ],
)
def test_a_bad_reset_is_a_422_page_and_changes_nothing(client, csrf, opened, admin_headers, data):
    """A reset the API's schema refuses is a 422 page; every circuit stays open."""
    reply = client.post("/console/circuits/reset", data={"csrf_token": csrf, **data})
    assert reply.status_code == 422 and reply.mimetype == "text/html"
    assert [state for *_, state in circuits(client, admin_headers)] == ["open"] * 3


@pytest.mark.parametrize("token", [None, "wrong"])
def test_a_reset_without_the_csrf_token_is_refused(client, csrf, opened, admin_headers, token):
    """A reset posted without the session's CSRF token is a 403 and closes nothing."""
    data: dict[str, Any] = {"destination": DEST, "partner_id": "ptn_a"}
    if token:
        data["csrf_token"] = token
    assert client.post("/console/circuits/reset", data=data).status_code == 403
    assert [state for *_, state in circuits(client, admin_headers)] == ["open"] * 3


def test_a_reset_from_another_site_is_refused(client, csrf, opened, admin_headers):
    """A reset whose Origin is another site is a 403, even with the token."""
    reply = client.post(
        "/console/circuits/reset",
        data={"csrf_token": csrf, "destination": DEST, "partner_id": "ptn_a"},
        headers={"Origin": "https://evil.example.com"},
    )
    assert reply.status_code == 403
    assert len(circuits(client, admin_headers)) == 3


def test_hostile_strings_render_as_text(client, csrf, breaker):
    """A partner id with markup (as a circuit could hold) is shown escaped."""
    breaker.record('"><img src=x onerror=alert(1)>', DEST, healthy=False)
    breaker.record("<script>alert(1)</script>", DEST, healthy=False)
    page = text(client.get("/console/circuits"))
    assert "<script>alert" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&#34;&gt;&lt;img src=x" in page


def test_signed_out_the_page_leads_to_the_sign_in(client):
    """Without a session the list redirects to the sign-in, and a reset is a 401."""
    assert client.get("/console/circuits").status_code == 303
    reply = client.post("/console/circuits/reset", data={"destination": DEST})
    assert reply.status_code == 401
