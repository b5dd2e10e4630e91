"""The partner feed (`GET /v1/events`): every webhook event, by cursor, to pull or stream."""

from __future__ import annotations

import json
import threading
import time

from standardwebhooks.webhooks import Webhook

from postback import clock
from tests.sse import Stream
from tests.test_serving import postback_serve
from tests.test_serving import submit as submit_served
from worker import feed


def submit(client, partner, **body):
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}, **body}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def events(client, partner, query=""):
    reply = client.get(f"/v1/events{query}", headers=partner["headers"])
    assert reply.status_code == 200, reply.json
    return reply.json


def test_every_end_is_in_the_feed_with_or_without_a_callback_url_oldest_first(
    client, partner, work, receiver
):
    """Completed, failed and cancelled jobs, with and without a callback URL, are all in
    the feed, oldest first, each with its type and webhook id."""
    done = submit(client, partner, input={"n": 1})
    failed = submit(client, partner, type="test.fail", callback_url=receiver.url)
    work()
    cancelled = submit(client, partner)
    assert (
        client.post(f"/v1/jobs/{cancelled}/cancel", headers=partner["headers"]).status_code == 200
    )
    page = events(client, partner)
    assert [item["data"]["id"] for item in page["items"]] == [done, failed, cancelled]
    assert [item["type"] for item in page["items"]] == [
        "job.completed",
        "job.failed",
        "job.cancelled",
    ]
    assert page["next_cursor"] == page["items"][-1]["id"]
    assert len({item["webhook_id"] for item in page["items"]}) == 3
    for item in page["items"]:
        assert set(item) == {"id", "webhook_id", "type", "timestamp", "data"}
        assert feed.CURSOR.match(item["id"])
        assert item["data"]["status"] == item["type"].removeprefix("job.")


def test_a_feed_item_is_the_delivered_webhook_and_shares_its_webhook_id(
    client, partner, work, receiver
):
    """A feed item carries exactly the body the receiver got, under the same webhook id."""
    submit(client, partner, input={"x": [1, 2, 3]}, callback_url=receiver.url)
    work()
    (delivered,) = receiver.wait_for(1)
    (item,) = events(client, partner)["items"]
    assert item["webhook_id"] == delivered.headers["webhook-id"]
    body = json.loads(delivered.body)
    assert {key: item[key] for key in ("type", "timestamp", "data")} == body


def test_paging_by_cursor_gives_every_event_once(client, partner, work):
    """`limit` and `after` walk the feed a page at a time; the last page's cursor stays put."""
    made = [submit(client, partner, input={"n": n}) for n in range(5)]
    work()
    seen, after = [], None
    for _ in range(10):
        page = events(client, partner, f"?limit=2{'&after=' + after if after else ''}")
        seen.extend(item["data"]["id"] for item in page["items"])
        if not page["items"]:
            assert page["next_cursor"] == after
            break
        assert len(page["items"]) <= 2
        after = page["next_cursor"]
    assert seen == made


def test_wait_answers_as_soon_as_an_event_exists(client, partner, work):
    """With `wait`, an empty feed answers when the next job ends, not at the end of the wait."""
    submit(client, partner)
    first = events(client, partner, "?wait=0")
    assert first["items"] == [] and first["next_cursor"] is None
    answered: list[dict] = []
    waiting = threading.Thread(target=lambda: answered.append(events(client, partner, "?wait=25")))
    started = time.monotonic()
    waiting.start()
    time.sleep(0.5)  # the request is waiting by now (if not, it finds the event at once)
    work(deliveries=False)  # RQ's worker needs the main thread
    waiting.join(30)
    (page,) = answered
    assert len(page["items"]) == 1
    assert time.monotonic() - started < 20
    # Nothing new: the wait runs out and the page is empty, the cursor unchanged.
    after = page["next_cursor"]
    empty = events(client, partner, f"?after={after}&wait=1")
    assert empty == {"items": [], "next_cursor": after}


def test_signed_items_verify_as_webhooks_with_the_partners_secret(client, partner, work):
    """`signed=true` gives each item a body and headers that a Standard Webhooks verifier
    accepts with the partner's signing secret, under the item's webhook id."""
    submit(client, partner, input={"signed": True})
    work()
    (item,) = events(client, partner, "?signed=true")["items"]
    webhook = item["webhook"]
    headers = webhook["headers"]
    assert headers["webhook-id"] == item["webhook_id"]
    assert abs(int(headers["webhook-timestamp"]) - clock.now()) < 60
    verified = Webhook(partner["signing_secret"]).verify(webhook["body"].encode(), headers)
    assert verified == {key: item[key] for key in ("type", "timestamp", "data")}
    assert "webhook" not in events(client, partner)["items"][0]


def test_the_feed_is_the_partners_own_and_checks_its_parameters(
    client, partner, admin_headers, work
):
    """Another partner's feed does not show these events; bad parameters are 422s."""
    submit(client, partner)
    work()
    other = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers).json
    stranger = {"Authorization": f"Bearer {other['api_key']}"}
    assert client.get("/v1/events", headers=stranger).json["items"] == []
    too_big = f"{2**64}-0"
    bad = ("?limit=0", "?limit=501", "?wait=31", "?after=abc", "?after=1-2-3", "?x=1")
    for query in (*bad, f"?after={too_big}"):
        reply = client.get(f"/v1/events{query}", headers=partner["headers"])
        assert reply.status_code == 422, query
        assert reply.mimetype == "application/problem+json"
    assert client.get("/v1/events").status_code == 401
    # The greatest cursor there can be: nothing after it, and no error.
    last = events(client, partner, f"?after={feed.LAST_CURSOR}")
    assert last == {"items": [], "next_cursor": feed.LAST_CURSOR}


def test_events_older_than_the_retention_are_trimmed(redis_client):
    """An append removes the partner's events older than the retention, and the feed
    expires with its last event."""
    from callbacks.model import Message

    def append(n: int, retention_seconds: float) -> None:
        body = json.dumps({"type": "job.completed", "n": n}).encode()
        message = Message(id=f"msg_{n}", owner="ptn_x", type="job.completed", body=body)
        with redis_client.pipeline() as pipe:
            feed.append(pipe, message, now=clock.now(), retention_seconds=retention_seconds)
            pipe.execute()

    append(1, 3600)
    append(2, 3600)
    time.sleep(1.2)  # the stream's ids are the server's milliseconds
    append(3, 1)
    kept = feed.page(redis_client, "ptn_x", after=None, limit=10)
    assert [event.webhook_id for event in kept] == ["msg_3"]
    assert 0 < redis_client.ttl(feed.key("ptn_x")) <= 1


def test_the_feed_streams_and_resumes_with_last_event_id(redis_url, partner, client, work):
    """With Accept: text/event-stream the feed streams each event (named by its type, its
    cursor as id); a reconnect with Last-Event-ID gets only what came after."""
    with postback_serve(redis_url) as served:
        made = [submit_served(served, partner, input={"n": n}) for n in range(3)]
        work(deliveries=False)
        url = f"{served.base}/v1/events"
        with Stream(url, headers=partner["headers"]) as stream:
            first = []
            for event in stream:
                first.append(event)
                if len(first) == 2:
                    break
        assert [event.json["data"]["id"] for event in first] == made[:2]
        assert all(event.event == "job.completed" for event in first)
        assert [event.id for event in first] == [event.json["id"] for event in first]
        headers = {**partner["headers"], "Last-Event-ID": first[-1].id}
        with Stream(url, headers=headers) as stream:
            third = next(iter(stream))
            assert third.json["data"]["id"] == made[2]
            # A job that ends while the stream is open arrives on it.
            later = submit_served(served, partner, input={"n": 3})
            work(deliveries=False)
            fourth = next(iter(stream))
            assert fourth.json["data"]["id"] == later
