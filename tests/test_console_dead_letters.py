"""The console's dead-letter pages: list, filters, one letter, replay and purge, end to end."""

from __future__ import annotations

import dataclasses
import html
import re
from typing import Any

import pytest
from flask.testing import FlaskClient

from callbacks.deadletters import DeadLetters, Filter
from callbacks.keys import DEFAULT_KEYS
from callbacks.outbox import destination
from postback.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.console import csrf_of, sign_in
from tests.receiver import Receiver, Reply

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')
_ROW_ID = re.compile(r'href="/console/dead-letters/(dlq_[0-9A-Za-z]+)"')


def submit(client: FlaskClient, partner: dict[str, Any], url: str, value: Any = 1) -> str:
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {"n": value}, "callback_url": url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def letters(client: FlaskClient, admin_headers: dict[str, str], **query: str) -> list[dict]:
    reply = client.get("/v1/admin/dead-letters", query_string=query, headers=admin_headers)
    assert reply.status_code == 200
    return reply.json["items"]


def text(reply) -> str:
    return reply.get_data(as_text=True)


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of a page's form, as the browser would post them."""
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


def row_ids(page: str) -> list[str]:
    return _ROW_ID.findall(page)


@pytest.fixture
def csrf(client: FlaskClient) -> str:
    """The console signed in as the admin; the session's CSRF token."""
    return sign_in(client, ADMIN_TOKEN)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """One attempt per delivery: a 500 makes a dead letter in one burst of work."""
    return dataclasses.replace(settings, retry_max_attempts=1)


@pytest.fixture
def failing(receiver: Receiver) -> Receiver:
    """The receiver, answering 500 to everything."""
    receiver.default = Reply(500)
    return receiver


@pytest.fixture
def dead(client, partner, failing, work, admin_headers) -> dict[str, Any]:
    """A job whose webhook died of a 500, as the admin API lists its dead letter."""
    job_id = submit(client, partner, failing.url)
    work()
    (letter,) = letters(client, admin_headers)
    assert letter["job_id"] == job_id and letter["attempts"] == 1
    return letter


@pytest.fixture
def other(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    """A second partner."""
    made = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers).json
    return {**made, "headers": {"Authorization": f"Bearer {made['api_key']}"}}


def kill(client, partner, receiver, work, count: int) -> None:
    """`count` dead letters of `partner` (410s: dead at once, and no harm to the circuit)."""
    receiver.reply(*[Reply(410)] * count)
    for _ in range(count):
        submit(client, partner, receiver.url)
    work()


def test_the_list_shows_each_dead_letter(client, csrf, dead, failing, partner):
    """Each row links the letter and its job, names its partner, shows the URL as text,
    attempts and last error."""
    page = text(client.get("/console/dead-letters"))
    assert row_ids(page) == [dead["id"]]
    assert f'<td>Acme <span class="mono">{partner["id"]}</span></td>' in page
    assert f'href="/console/jobs/{dead["job_id"]}"' in page
    assert f"<code>{failing.url}</code>" in page and f'href="{failing.url}"' not in page
    assert "HTTP 500" in page and '<td class="num">1</td>' in page
    assert page.count("<h1>") == 1 and "<th" in page


def test_filters_by_partner_destination_and_time_and_pages(
    client, csrf, partner, other, receiver, work
):
    """The partner select, destination and time fields filter; pages follow the next link."""
    kill(client, partner, receiver, work, 5)
    kill(client, other, receiver, work, 1)
    page = text(client.get("/console/dead-letters"))
    assert f'<option value="{partner["id"]}">' in page and f'<option value="{other["id"]}">' in page
    seen, url = [], f"/console/dead-letters?limit=2&partner_id={partner['id']}"
    while url:
        page = text(client.get(url))
        seen += row_ids(page)
        found = re.search(r'<a href="([^"]+)" rel="next">', page)
        url = html.unescape(found.group(1)) if found else ""
    assert len(seen) == len(set(seen)) == 5 and seen == sorted(seen, reverse=True)
    counts = {
        name: len(row_ids(text(client.get("/console/dead-letters", query_string={name: value}))))
        for name, value in {
            "partner_id": other["id"],
            "destination": receiver.url,
            "since": "2999-01-01T00:00",
            "until": "2000-01-01T00:00:00",
        }.items()
    }
    assert counts == {"partner_id": 1, "destination": 6, "since": 0, "until": 0}
    shown = text(client.get("/console/dead-letters?since=2020-01-01T02:30:00%2B02:00"))
    assert 'name="since" step="1" value="2020-01-01T00:30:00"' in shown
    blank = {"partner_id": "", "destination": "", "since": "", "until": ""}
    assert len(row_ids(text(client.get("/console/dead-letters", query_string=blank)))) == 6


@pytest.mark.parametrize(
    "query", ["since=yesterday", "until=2024-13-01T00:00", "destination=ftp://x", "colour=red"]
)
def test_a_bad_filter_is_a_422_page(client, csrf, query):
    """A filter the API's schema refuses is a 422 page naming the field."""
    reply = client.get(f"/console/dead-letters?{query}")
    assert reply.status_code == 422 and reply.mimetype == "text/html"
    assert f"<code>{query.split('=')[0]}</code>" in text(reply)


def test_a_dead_letter_shows_its_fields_payload_and_attempts(client, csrf, dead):
    """The letter's page has its fields, payload, attempt log, a Replay form and a Purge link."""
    page = text(client.get(f"/console/dead-letters/{dead['id']}"))
    assert dead["webhook_id"] in page and "job.completed" in page
    assert '<td class="num">500</td>' in page
    assert '<button type="submit">Replay</button>' in page
    assert f'href="/console/dead-letters/{dead["id"]}/purge"' in page


def test_replay_to_a_corrected_url_delivers_there(client, csrf, dead, work, admin_headers):
    """A replay to a corrected URL of a receiver that answers 200 is delivered there."""
    token = csrf_of(text(client.get(f"/console/dead-letters/{dead['id']}")))
    with Receiver() as fixed:
        reply = client.post(
            f"/console/dead-letters/{dead['id']}/replay",
            data={"csrf_token": token, "callback_url": fixed.url},
        )
        assert reply.status_code == 303
        assert reply.headers["Location"] == f"/console/jobs/{dead['job_id']}"
        notice = f"Replayed: webhook {dead['webhook_id']} scheduled for delivery"
        assert notice in text(client.get("/console/dead-letters"))
        work()
        (hit,) = fixed.wait_for(1)
    assert hit.headers["webhook-id"] == dead["webhook_id"]
    assert letters(client, admin_headers) == []
    assert client.get(f"/console/dead-letters/{dead['id']}").status_code == 404


def test_replay_without_a_url_goes_to_the_original(client, csrf, dead, failing, work):
    """A replay with the URL field left blank goes to the letter's own URL."""
    failing.default = Reply(200)
    reply = client.post(
        f"/console/dead-letters/{dead['id']}/replay", data={"csrf_token": csrf, "callback_url": ""}
    )
    assert reply.status_code == 303
    work()
    assert len(failing.wait_for(2)) == 2


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data", "http://10.0.0.1/hook", "not a url", JS_URL]
)
def test_a_forbidden_or_malformed_url_is_refused(client, csrf, dead, admin_headers, url):
    """A corrected URL the API would refuse is a 422 page, and the letter stays dead."""
    reply = client.post(
        f"/console/dead-letters/{dead['id']}/replay", data={"csrf_token": csrf, "callback_url": url}
    )
    assert reply.status_code == 422 and "<code>callback_url</code>" in text(reply)
    assert [item["id"] for item in letters(client, admin_headers)] == [dead["id"]]


def test_bulk_replay_confirms_the_count_and_replays_exactly_those(
    client, csrf, partner, other, receiver, work, admin_headers
):
    """The confirmation counts the matches; its Replay replays those and no others."""
    kill(client, partner, receiver, work, 3)
    kill(client, other, receiver, work, 1)
    page = text(client.get(f"/console/dead-letters/replay?partner_id={partner['id']}"))
    assert f"3 dead letters match partner {partner['id']}." in page and "Replay 3?" in page
    fields = hidden_fields(page)
    assert fields.pop("partner_id") == partner["id"]
    fields["partner_id"] = partner["id"]
    reply = client.post("/console/dead-letters/replay", data=fields)
    assert reply.status_code == 303
    assert reply.headers["Location"] == f"/console/dead-letters?partner_id={partner['id']}"
    assert "Replayed 3 dead letters" in text(client.get(reply.headers["Location"]))
    assert [item["partner_id"] for item in letters(client, admin_headers)] == [other["id"]]
    work()
    assert len(receiver.wait_for(7)) == 7


def test_without_a_filter_the_confirmation_says_every_dead_letter(
    client, csrf, partner, receiver, work
):
    """With no filter the confirmation says it is every dead letter, with their number."""
    kill(client, partner, receiver, work, 2)
    page = text(client.get("/console/dead-letters/replay"))
    assert "2 dead letters match: no filter is set, so this is every dead letter." in page
    assert "Replay 2?" in page


def test_nothing_matching_offers_nothing_to_do(client, csrf, dead):
    """A filter that matches nothing says so and has no Purge button."""
    page = text(client.get("/console/dead-letters/purge?since=2999-01-01T00:00"))
    assert "0 dead letters match died since 2999-01-01 00:00:00 UTC." in page
    assert ">Purge</button>" not in page


def test_purge_matching_with_confirmation(
    client, csrf, partner, other, receiver, work, admin_headers
):
    """Purge all that match: the count first, then exactly those are deleted."""
    kill(client, partner, receiver, work, 2)
    kill(client, other, receiver, work, 1)
    page = text(
        client.get(
            "/console/dead-letters/purge",
            query_string={"partner_id": other["id"], "destination": receiver.url},
        )
    )
    assert "1 dead letter matches partner" in page and "Purge 1?" in page
    reply = client.post("/console/dead-letters/purge", data=hidden_fields(page))
    assert reply.status_code == 303
    assert "Purged 1 dead letter" in text(client.get(reply.headers["Location"]))
    assert {item["partner_id"] for item in letters(client, admin_headers)} == {partner["id"]}


def test_purge_one_with_confirmation(client, csrf, dead, admin_headers):
    """A letter's Purge asks first, then deletes it and says so on the list."""
    page = text(client.get(f"/console/dead-letters/{dead['id']}/purge"))
    assert '<button type="submit" class="danger">Purge</button>' in page
    reply = client.post(f"/console/dead-letters/{dead['id']}/purge", data=hidden_fields(page))
    assert reply.status_code == 303 and reply.headers["Location"] == "/console/dead-letters"
    assert f"Purged dead letter {dead['id']}" in text(client.get("/console/dead-letters"))
    assert letters(client, admin_headers) == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/console/dead-letters/dlq_nothing"),
        ("get", "/console/dead-letters/dlq_nothing/purge"),
        ("post", "/console/dead-letters/dlq_nothing/purge"),
        ("post", "/console/dead-letters/dlq_nothing/replay"),
    ],
)
def test_an_unknown_dead_letter_is_a_404_page(client, csrf, method, path):
    """Pages and actions of a dead letter that does not exist are 404 pages."""
    reply = getattr(client, method)(path, data={"csrf_token": csrf})
    assert reply.status_code == 404 and "no dead letter dlq_nothing" in text(reply)


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/console/dead-letters/{id}/replay", {}),
        ("/console/dead-letters/{id}/replay", {"csrf_token": "wrong"}),
        ("/console/dead-letters/{id}/purge", {}),
        ("/console/dead-letters/replay", {}),
        ("/console/dead-letters/purge", {}),
    ],
)
def test_a_post_without_the_csrf_token_is_refused(client, csrf, dead, admin_headers, path, data):
    """Every action posted without the session's CSRF token is a 403 and changes nothing."""
    reply = client.post(path.format(id=dead["id"]), data=data)
    assert reply.status_code == 403
    assert [item["id"] for item in letters(client, admin_headers)] == [dead["id"]]


def test_hostile_strings_render_as_text(
    client, csrf, partner, failing, work, admin_headers, redis_client
):
    """Markup in the payload, the callback URL and the last error is shown escaped, never run."""
    url = failing.url + "?q=" + IMG.replace(" ", "%20")
    submit(client, partner, url, value={"a": SCRIPT, "b": IMG, "c": JS_URL})
    work()
    (letter,) = letters(client, admin_headers)
    # The sender writes its own errors; a hostile one is put in by hand, as if a receiver's.
    delivery = DeadLetters(redis_client).get(letter["id"])
    assert delivery is not None
    hostile_error = SCRIPT.replace("1", "2") + IMG
    redis_client.hset(DEFAULT_KEYS.delivery(delivery.id), "last_error", hostile_error)
    pages = [
        text(client.get("/console/dead-letters")),
        text(client.get(f"/console/dead-letters/{letter['id']}")),
        text(client.get(f"/console/dead-letters/{letter['id']}/purge")),
    ]
    for page in pages:
        assert "<script>alert" not in page and "<img" not in page
        assert 'href="javascript:' not in page and f'href="{failing.url}' not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[1]  # the payload
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[0] + pages[1]  # the last error
    assert "&lt;img src=x onerror=alert(1)&gt;" in pages[0] + pages[1]
    assert JS_URL in pages[1]


def test_count_is_exact_for_every_filter(client, partner, other, receiver, work, redis_client):
    """DeadLetters.count agrees with the ids `matching` lists, for each kind of filter."""
    kill(client, partner, receiver, work, 3)
    kill(client, other, receiver, work, 2)
    store = DeadLetters(redis_client)
    oldest = store.get(list(store.matching(Filter()))[-1])
    assert oldest is not None and oldest.dead_at is not None
    dest = destination(receiver.url)
    expected = {
        Filter(): 5,
        Filter(owner=partner["id"]): 3,
        Filter(destination=dest): 5,
        Filter(owner=other["id"], destination=dest): 2,
        Filter(owner="ptn_nobody"): 0,
        Filter(since=4_000_000_000): 0,
        Filter(until=oldest.dead_at - 1): 0,
        Filter(since=oldest.dead_at - 1, until=4_000_000_000): 5,
        Filter(since=4_000_000_000, until=0): 0,
    }
    for where, count in expected.items():
        assert store.count(where) == len(list(store.matching(where))) == count, where
