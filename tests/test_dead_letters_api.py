"""Dead letters, circuits, redelivery and secret rotation through the HTTP API and the CLI."""

from __future__ import annotations

import json
import threading
import time

import pytest
from standardwebhooks.webhooks import Webhook

from app.cli import main
from callbacks.outbox import destination
from tests.receiver import Reply

PROBLEM = "application/problem+json"


def submit(client, partner, url):
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {"n": 1}, "callback_url": url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202
    return reply.json["id"]


@pytest.fixture
def dead(client, partner, receiver, work, admin_headers):
    """A job whose webhook died on a 410, and its dead letter as the admin API lists it."""
    receiver.reply(Reply(410))
    job_id = submit(client, partner, receiver.url)
    work()
    items = client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    (letter,) = [item for item in items if item["job_id"] == job_id]
    return letter


def test_a_dead_letter_is_listed_with_its_fields(dead, partner, receiver):
    """The list shows id, job, partner, URL, webhook-id, attempts, last error and time of death."""
    assert dead["id"].startswith("dlq_")
    assert dead["partner_id"] == partner["id"]
    assert dead["callback_url"] == receiver.url
    assert dead["destination"] == destination(receiver.url)
    assert dead["webhook_id"].startswith("msg_")
    assert dead["attempts"] == 1 and dead["last_error"] == "HTTP 410" and dead["dead_at"]


def test_the_job_shows_its_delivery_dead(client, partner, dead):
    """The job's delivery.status is `dead`."""
    job = client.get(f"/v1/jobs/{dead['job_id']}", headers=partner["headers"]).json
    assert job["delivery"]["status"] == "dead"


def test_a_dead_letter_shows_its_payload_and_attempt_log(client, admin_headers, dead):
    """GET of one dead letter has the body as sent and every attempt."""
    letter = client.get(f"/v1/admin/dead-letters/{dead['id']}", headers=admin_headers).json
    assert letter["payload"]["type"] == "job.completed"
    assert letter["payload"]["data"]["id"] == dead["job_id"]
    assert [a["status_code"] for a in letter["attempt_log"]] == [410]


def test_filters_and_paging(client, partner, admin_headers, receiver, work):
    """Filters by partner, destination and time; pages follow next_cursor without repeats."""
    receiver.reply(*[Reply(410)] * 5)
    for _ in range(5):
        submit(client, partner, receiver.url)
    work()
    seen, cursor = [], None
    while True:
        query = {"limit": 2, "partner_id": partner["id"], **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/admin/dead-letters", query_string=query, headers=admin_headers).json
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5 and seen == sorted(seen, reverse=True)
    lists = {
        "destination": receiver.url,
        "partner_id": "ptn_nobody",
        "since": "2999-01-01T00:00:00Z",
        "until": "2000-01-01T00:00:00Z",
    }
    counts = {
        name: len(
            client.get(
                "/v1/admin/dead-letters", query_string={name: value}, headers=admin_headers
            ).json["items"]
        )
        for name, value in lists.items()
    }
    assert counts == {"destination": 5, "partner_id": 0, "since": 0, "until": 0}


@pytest.mark.parametrize(
    "query", ["limit=0", "cursor=x", "since=yesterday", "destination=ftp://x", "colour=red"]
)
def test_bad_dead_letter_queries_are_422(client, admin_headers, query):
    """Bad filters are a 422 naming the parameter."""
    reply = client.get(f"/v1/admin/dead-letters?{query}", headers=admin_headers)
    assert reply.status_code == 422 and query.split("=")[0] in reply.json["errors"]


def test_replay_redelivers_with_the_same_webhook_id_and_a_fresh_budget(
    client, admin_headers, partner, dead, receiver, work
):
    """A replay sends the same webhook-id, signed afresh, and takes the letter off the list."""
    reply = client.post(f"/v1/admin/dead-letters/{dead['id']}/replay", headers=admin_headers)
    assert reply.status_code == 202
    work()
    first, second = receiver.wait_for(2)
    assert second.headers["webhook-id"] == first.headers["webhook-id"] == dead["webhook_id"]
    Webhook(partner["signing_secret"]).verify(second.body, second.headers)
    assert client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"] == []
    job = client.get(f"/v1/jobs/{dead['job_id']}", headers=partner["headers"]).json
    assert job["delivery"]["status"] == "delivered" and job["delivery"]["attempts"] == 2
    again = client.post(f"/v1/admin/dead-letters/{dead['id']}/replay", headers=admin_headers)
    assert again.status_code == 404


def test_replay_to_a_corrected_url(client, admin_headers, dead, work):
    """A replay with a callback_url delivers there instead."""
    from tests.receiver import Receiver

    with Receiver() as fixed:
        reply = client.post(
            f"/v1/admin/dead-letters/{dead['id']}/replay",
            json={"callback_url": fixed.url},
            headers=admin_headers,
        )
        assert reply.status_code == 202
        work()
        (hit,) = fixed.wait_for(1)
    assert hit.headers["webhook-id"] == dead["webhook_id"]


def test_a_letter_that_dies_again_is_listed_again(client, admin_headers, dead, receiver, work):
    """Replayed into another 410, the event is back on the dead list."""
    receiver.reply(Reply(410))
    client.post(f"/v1/admin/dead-letters/{dead['id']}/replay", headers=admin_headers)
    work()
    items = client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    assert [i["webhook_id"] for i in items] == [dead["webhook_id"]]
    assert items[0]["attempts"] == 2


def test_concurrent_replays_of_one_letter_redeliver_once(app, admin_headers, dead, receiver, work):
    """Eight simultaneous replays of one letter: one 202, seven 404, one redelivery."""
    barrier = threading.Barrier(8)
    statuses = []

    def replay():
        with app.test_client() as own:
            barrier.wait()
            reply = own.post(f"/v1/admin/dead-letters/{dead['id']}/replay", headers=admin_headers)
            statuses.append(reply.status_code)

    threads = [threading.Thread(target=replay) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(statuses) == [202] + [404] * 7
    work()
    time.sleep(0.2)
    assert len(receiver.received) == 2


def test_bulk_replay_by_filter(client, partner, admin_headers, receiver, work):
    """POST /v1/admin/dead-letters/replay replays every match and reports how many."""
    receiver.reply(*[Reply(410)] * 3)
    for _ in range(3):
        submit(client, partner, receiver.url)
    work()
    reply = client.post(
        "/v1/admin/dead-letters/replay", json={"partner_id": partner["id"]}, headers=admin_headers
    )
    assert reply.status_code == 202 and reply.json == {"replayed": 3}
    work()
    assert len(receiver.wait_for(6)) == 6


def test_delete_removes_a_dead_letter(client, admin_headers, dead):
    """DELETE answers 204 and the letter is gone; a second DELETE is 404."""
    url = f"/v1/admin/dead-letters/{dead['id']}"
    assert client.delete(url, headers=admin_headers).status_code == 204
    assert client.get(url, headers=admin_headers).status_code == 404
    assert client.delete(url, headers=admin_headers).status_code == 404


def test_dead_letters_are_admin_only(client, partner, dead):
    """A partner key cannot list or replay dead letters."""
    assert client.get("/v1/admin/dead-letters", headers=partner["headers"]).status_code == 403
    url = f"/v1/admin/dead-letters/{dead['id']}/replay"
    assert client.post(url, headers=partner["headers"]).status_code == 403


def test_partners_see_their_attempts_and_can_redeliver(client, partner, receiver, work):
    """GET deliveries lists each attempt; redeliver re-sends with the same webhook-id."""
    job_id = submit(client, partner, receiver.url)
    work()
    attempts = client.get(f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]).json
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts["items"]] == [
        (1, 200, "succeeded")
    ]
    reply = client.post(f"/v1/jobs/{job_id}/redeliver", headers=partner["headers"])
    assert reply.status_code == 202
    work()
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    items = client.get(f"/v1/jobs/{job_id}/deliveries", headers=partner["headers"]).json["items"]
    assert len(items) == 2


def test_redeliver_conflicts_while_a_delivery_is_under_way(client, partner, receiver):
    """Redeliver of a job without an ended webhook answers 409."""
    job_id = submit(client, partner, receiver.url)
    reply = client.post(f"/v1/jobs/{job_id}/redeliver", headers=partner["headers"])
    assert reply.status_code == 409 and reply.mimetype == PROBLEM


def test_another_partners_deliveries_are_not_found(client, partner, admin_headers, receiver):
    """Deliveries and redeliver of another partner's job are 404."""
    job_id = submit(client, partner, receiver.url)
    other = client.post("/v1/admin/partners", json={"name": "B"}, headers=admin_headers).json
    headers = {"Authorization": f"Bearer {other['api_key']}"}
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=headers).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/redeliver", headers=headers).status_code == 404


def test_rotated_secrets_sign_side_by_side_during_the_grace(
    client, partner, admin_headers, receiver, work
):
    """After rotation both the old and the new secret verify the webhook."""
    reply = client.post(f"/v1/admin/partners/{partner['id']}/rotate-secret", headers=admin_headers)
    assert reply.status_code == 200
    new_secret = reply.json["signing_secret"]
    assert new_secret.startswith("whsec_") and new_secret != partner["signing_secret"]
    submit(client, partner, receiver.url)
    work()
    (hit,) = receiver.wait_for(1)
    assert len(hit.headers["webhook-signature"].split(" ")) == 2
    for secret in (partner["signing_secret"], new_secret):
        Webhook(secret).verify(hit.body, hit.headers)


def test_after_the_grace_only_the_new_secret_signs(
    client, partner, admin_headers, receiver, work, app, monkeypatch
):
    """With no grace left, the old secret no longer verifies."""
    from dataclasses import replace

    services = app.extensions["postback"]
    monkeypatch.setitem(
        app.extensions,
        "postback",
        replace(services, settings=replace(services.settings, secret_grace_seconds=0)),
    )
    reply = client.post(f"/v1/admin/partners/{partner['id']}/rotate-secret", headers=admin_headers)
    submit(client, partner, receiver.url)
    work()
    (hit,) = receiver.wait_for(1)
    assert len(hit.headers["webhook-signature"].split(" ")) == 1
    Webhook(reply.json["signing_secret"]).verify(hit.body, hit.headers)


def test_rotating_an_unknown_partner_is_404(client, admin_headers):
    """rotate-secret of a partner that does not exist answers 404."""
    reply = client.post("/v1/admin/partners/ptn_nobody/rotate-secret", headers=admin_headers)
    assert reply.status_code == 404


def test_circuits_are_listed_paged_and_reset(client, admin_headers, app):
    """GET /v1/admin/circuits pages the circuits by destination and partner; reset closes one
    partner's circuit, or every partner's to the destination."""
    from callbacks.breaker import CircuitBreaker

    breaker = CircuitBreaker(app.extensions["postback"].redis)
    dest = "https://hooks.example.com:443"
    for owner in ("ptn_a", "ptn_b", "ptn_c"):
        for _ in range(5):
            breaker.record(owner, dest, healthy=False)
    first = client.get("/v1/admin/circuits?limit=2", headers=admin_headers).json
    assert [c["partner_id"] for c in first["items"]] == ["ptn_a", "ptn_b"]
    circuit = first["items"][0]
    assert circuit["destination"] == dest and circuit["state"] == "open"
    assert circuit["consecutive_failures"] == 5 and circuit["open_until"]
    rest = client.get(
        "/v1/admin/circuits", query_string={"cursor": first["next_cursor"]}, headers=admin_headers
    ).json
    assert [c["partner_id"] for c in rest["items"]] == ["ptn_c"] and rest["next_cursor"] is None
    one = client.post(
        "/v1/admin/circuits/reset",
        json={"destination": dest, "partner_id": "ptn_b"},
        headers=admin_headers,
    )
    assert one.status_code == 200
    assert [c["partner_id"] for c in one.json["reset"]] == ["ptn_b"]
    every = client.post(
        "/v1/admin/circuits/reset", json={"destination": dest}, headers=admin_headers
    )
    assert [c["partner_id"] for c in every.json["reset"]] == ["ptn_a", "ptn_c"]
    assert client.get("/v1/admin/circuits", headers=admin_headers).json["items"] == []
    bad = client.get("/v1/admin/circuits?cursor=garbage", headers=admin_headers)
    assert bad.status_code == 422


def test_the_cli_lists_shows_replays_and_purges(
    dead, redis_url, monkeypatch, capsys, work, receiver
):
    """`postback dead-letters` list/show/replay/purge and `circuits list` work on the same store."""
    monkeypatch.setenv("REDIS_URL", redis_url)

    def run(*argv):
        assert main(list(argv)) == 0
        return json.loads(capsys.readouterr().out)

    assert [i["id"] for i in run("dead-letters", "list")["items"]] == [dead["id"]]
    assert run("dead-letters", "show", dead["id"])["attempt_log"][0]["status_code"] == 410
    assert run("dead-letters", "replay", "--partner-id", dead["partner_id"]) == {"replayed": 1}
    assert run("dead-letters", "list")["items"] == []
    receiver.reply(Reply(410))
    work()
    assert run("dead-letters", "purge", "--all", "--yes") == {"purged": 1}
    assert run("circuits", "list") == {"items": [], "next_cursor": None}
    assert main(["dead-letters", "replay"]) == 2


def test_the_cli_rotates_a_partners_secret(partner, redis_url, monkeypatch, capsys):
    """`postback partners rotate-secret ID` prints the new secret; an unknown id fails."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert main(["partners", "rotate-secret", partner["id"]]) == 0
    rotated = json.loads(capsys.readouterr().out)
    assert rotated["id"] == partner["id"]
    assert rotated["signing_secret"].startswith("whsec_")
    assert main(["partners", "rotate-secret", "ptn_nobody"]) == 1
