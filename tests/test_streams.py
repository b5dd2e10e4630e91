"""A job's event stream (`GET /v1/jobs/{id}/events`), read by a real SSE client."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from postback import timeline
from tests.processes import postback_worker
from tests.sse import Event, Stream, read_until
from tests.test_serving import Served, postback_serve, submit
from worker import jobs as js

SETTLE_SECONDS = 30.0


@pytest.fixture
def served(redis_url: str) -> Iterator[Served]:
    with postback_serve(redis_url, POSTBACK_PARTNER_MAX_WAITS="50") as server:
        yield server


def events_url(served: Served, job_id: str) -> str:
    return f"{served.base}/v1/jobs/{job_id}/events"


def entry_number(event: Event) -> int:
    return int(event.id.split(".")[0])


def test_a_sleep_job_streams_its_entries_its_progress_and_its_end(
    served, partner, redis_url, receiver
):
    """A `sleep` job's stream sends every timeline entry, progress as it goes, and `end`
    with the job as GET shows it once its webhook is delivered, then closes."""
    with postback_worker(redis_url):
        job_id = submit(
            served, partner, type="sleep", input={"seconds": 2}, callback_url=receiver.url
        )
        with Stream(events_url(served, job_id), headers=partner["headers"]) as stream:
            assert stream.status_code == 200
            assert stream.response.headers["content-type"].startswith("text/event-stream")
            seen = read_until(stream, "end")
            assert stream.retry_ms == 2000
            # The stream closes after `end`.
            assert list(stream) == []
    names = [event.event for event in seen]
    entries = [name for name in names if name not in ("progress", "end")]
    assert entries == [
        "accepted",
        "enqueued",
        "started",
        "finished",
        "delivery_attempt",
        "delivered",
    ]
    progress = [event.json for event in seen if event.event == "progress"]
    assert len(progress) >= 3
    values = [item["progress"] for item in progress]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(item["status"] == "processing" for item in progress if item["progress"] < 100)
    started = next(event.json for event in seen if event.event == "started")
    assert started["attempt"] == 1 and started["status"] in ("processing", "completed")
    assert len({event.id for event in seen}) == len(seen)
    end = seen[-1]
    assert end.event == "end" and end.id.endswith(".end")
    shown = served.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json()
    assert end.json == shown
    assert end.json["status"] == "completed" and end.json["delivery"]["status"] == "delivered"
    # Reconnecting after `end` is 204: an EventSource stops there.
    again = served.get(
        f"/v1/jobs/{job_id}/events", headers={**partner["headers"], "Last-Event-ID": end.id}
    )
    assert again.status_code == 204


def test_a_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    served, partner, redis_url
):
    """A client that drops mid-job and reconnects with Last-Event-ID gets exactly the
    messages after the last one it read: every entry once, no id twice."""
    with postback_worker(redis_url):
        job_id = submit(served, partner, type="sleep", input={"seconds": 3})
        whole: list[Event] = []
        observer = Stream(events_url(served, job_id), headers=partner["headers"])
        reading = threading.Thread(target=lambda: whole.extend(read_until(observer, "end")))
        reading.start()
        with Stream(events_url(served, job_id), headers=partner["headers"]) as first:
            before: list[Event] = []
            for event in first:
                before.append(event)
                if event.event == "progress" and event.json["progress"] >= 20:
                    break
        headers = {**partner["headers"], "Last-Event-ID": before[-1].id}
        with Stream(events_url(served, job_id), headers=headers) as second:
            after = read_until(second, "end")
        reading.join(SETTLE_SECONDS)
        observer.close()
    both = before + after
    assert len({event.id for event in both}) == len(both)
    numbers = [entry_number(event) for event in both if event.event not in ("progress", "end")]
    assert numbers == list(range(1, len(numbers) + 1))
    assert [e.event for e in both if e.event not in ("progress", "end")] == [
        e.event for e in whole if e.event not in ("progress", "end")
    ]
    values = [event.json["progress"] for event in both if event.event == "progress"]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert after and all(entry_number(e) >= entry_number(before[-1]) for e in after)
    assert after[-1].event == "end" and after[-1].json["status"] == "completed"


def test_streams_end_cleanly_when_the_server_stops(redis_url, partner):
    """SIGTERM to `postback serve` ends its open streams: the response closes as a
    complete one (not cut off by the graceful timeout) and a client would reconnect."""
    with postback_serve(redis_url) as server:
        job_id = submit(server, partner, type="sleep", input={"seconds": 1})
        # Not kept alive once the stream ends: the server stops without waiting out its
        # graceful timeout for an idle connection.
        closing = {**partner["headers"], "Connection": "close"}
        stream = Stream(events_url(server, job_id), headers=closing)
        seen = read_until(stream, "enqueued")
        ended: list[list[Event]] = []
        # An abruptly closed response raises in the reader, and `ended` stays empty.
        reading = threading.Thread(target=lambda: ended.append(list(stream)))
        reading.start()
    reading.join(SETTLE_SECONDS)
    assert not reading.is_alive(), "the stream was still open after the server stopped"
    assert ended == [[]]
    assert [event.event for event in seen] == ["accepted", "enqueued"]


def test_a_stream_on_a_finished_job_replays_and_ends_at_once(client, partner, work):
    """A stream opened on a job that has ended sends its whole timeline, then `end`."""
    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {"a": 1}}, headers=partner["headers"]
    ).json["id"]
    work()
    reply = client.get(f"/v1/jobs/{job_id}/events", headers=partner["headers"])
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream"
    text = reply.get_data(as_text=True)
    assert text.startswith("retry: 2000\n\n")
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names == ["accepted", "enqueued", "started", "finished", "end"]
    ids = [line[4:] for line in text.splitlines() if line.startswith("id: ")]
    assert ids == ["1.0", "2.0", "3.0", "4.0", "4.100.end"]
    resumed = client.get(
        f"/v1/jobs/{job_id}/events", headers={**partner["headers"], "Last-Event-ID": "2.0"}
    ).get_data(as_text=True)
    assert [line[7:] for line in resumed.splitlines() if line.startswith("event: ")] == [
        "started",
        "finished",
        "end",
    ]


def test_another_partners_job_and_a_bad_last_event_id_are_refused(client, partner, admin_headers):
    """Another partner's job is a 404, an id this stream never sends a 400."""
    other = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers).json
    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
    ).json["id"]
    stranger = {"Authorization": f"Bearer {other['api_key']}"}
    assert client.get(f"/v1/jobs/{job_id}/events", headers=stranger).status_code == 404
    assert client.get("/v1/jobs/job_nope/events", headers=partner["headers"]).status_code == 404
    for bad in ("x", "1", "1.2.3", "-1.0", "1." + "9" * 5):
        reply = client.get(
            f"/v1/jobs/{job_id}/events", headers={**partner["headers"], "Last-Event-ID": bad}
        )
        assert reply.status_code == 400, bad
        assert reply.mimetype == "application/problem+json"
    assert client.get(f"/v1/jobs/{job_id}/events").status_code == 401


def test_a_stream_counts_against_the_partners_waits(app, client, partner, redis_client, work):
    """A partner holding all its waits gets 429 for a stream; a stream's place is given
    back when it ends."""
    from app.services import services
    from app.waits import waits_key

    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
    ).json["id"]
    with app.app_context():
        waits = services().waits
        limit = waits.max_per_partner
        holds = [waits.hold(partner["id"], 30) for _ in range(limit)]
        for hold in holds:
            hold.__enter__()
        try:
            refused = client.get(f"/v1/jobs/{job_id}/events", headers=partner["headers"])
            assert refused.status_code == 429
            assert refused.mimetype == "application/problem+json"
        finally:
            for hold in holds:
                hold.__exit__(None, None, None)
    work()
    reply = client.get(f"/v1/jobs/{job_id}/events", headers=partner["headers"])
    assert "event: end" in reply.get_data(as_text=True)
    assert redis_client.zcard(waits_key(partner["id"])) == 0


def test_entries_keep_their_numbers_when_old_ones_are_trimmed(redis_client: redis.Redis):
    """Past `MAX_ENTRIES`, the timeline drops its oldest entries and the rest keep the
    numbers they had: a stream's ids do not shift."""
    subject = "job_trimmed"
    for n in range(timeline.MAX_ENTRIES + 20):
        timeline.record(redis_client, subject, timeline.Event.DELIVERY_ATTEMPT, attempt=n + 1)
    count = redis_client.get(timeline.count_key(subject))
    entries = redis_client.lrange(timeline.key(subject), 0, -1)
    numbered = timeline.numbered(entries, count)
    assert len(numbered) == timeline.MAX_ENTRIES
    assert [number for number, _ in numbered] == list(range(21, timeline.MAX_ENTRIES + 21))
    assert all(entry["attempt"] == number for number, entry in numbered)
    # A timeline written before the counter existed counts from its first entry.
    assert [n for n, _ in timeline.numbered(entries[:3], None)] == [1, 2, 3]


def test_progress_is_published_on_the_jobs_channel(redis_client, settings, client, partner):
    """A progress report is heard on the job's channel, as every timeline entry is."""
    from worker.runtime import job_store

    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
    ).json["id"]
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(timeline.channel(job_id))
    try:
        job_store(redis_client, settings).set_progress(job_id, 40)
        timeline.record(redis_client, job_id, timeline.Event.RECOVERED, attempt=1)
        heard = []
        for _ in range(50):
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                heard.append(message["data"])
            if len(heard) == 2:
                break
    finally:
        pubsub.close()
    assert heard == [timeline.NEWS_PROGRESS.encode(), timeline.NEWS_ENTRY.encode()]
    assert redis_client.hget(js.job_key(job_id), "progress") == b"40"


def test_a_stream_ends_when_its_key_is_rotated(client, partner, admin_headers, monkeypatch):
    """A stream whose API key is rotated away (or whose partner is disabled) ends at its
    next keep-alive instead of going on for the old key."""
    from app import sse

    monkeypatch.setattr(sse, "KEEPALIVE_SECONDS", 0.2)
    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
    ).json["id"]
    reply = client.get(f"/v1/jobs/{job_id}/events", headers=partner["headers"], buffered=False)
    chunks = iter(reply.response)
    opened = b""
    while b"event: enqueued" not in opened:
        opened += next(chunks)
    assert next(chunks) == b": keep-alive\n\n"  # the key still works: the stream goes on
    rotated = client.post(f"/v1/admin/partners/{partner['id']}/rotate-key", headers=admin_headers)
    assert rotated.status_code == 200
    # Bounded: a stream that went on would send a keep-alive every 0.2 s.
    rest = [chunk for _, chunk in zip(range(20), chunks, strict=False)]
    assert rest == []
    reply.close()


def test_a_streams_reads_wait_for_redis_as_its_partners_do(app, client, partner, work):
    """The stream's reads after the view has returned take their turn for a Redis
    connection as the partner's (the fair queue's tenant), as the view's own reads do."""
    from app.partners_store import hash_api_key
    from postback.connection import current_tenant

    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
    ).json["id"]
    work()
    jobs = app.extensions["postback"].jobs
    tenants = []
    history = jobs.history

    def recording(job: str):
        tenants.append(current_tenant())
        return history(job)

    jobs.history = recording
    try:
        text = client.get(f"/v1/jobs/{job_id}/events", headers=partner["headers"]).get_data()
    finally:
        jobs.history = history
    assert b"event: end" in text
    assert tenants and set(tenants) == {hash_api_key(partner["api_key"])}


def test_a_new_jobs_first_entries_are_not_published(redis_client, client, partner):
    """Making a job publishes nothing (no stream can watch a job before it exists): the
    accept path pays for no message that nobody hears."""
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe(timeline.channel("*"))
    try:
        pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        job_id = client.post(
            "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
        ).json["id"]
        heard = [pubsub.get_message(timeout=0.5) for _ in range(2)]
        timeline.record(redis_client, job_id, timeline.Event.RECOVERED, attempt=1)
        later = pubsub.get_message(timeout=5.0)
    finally:
        pubsub.close()
    assert heard == [None, None]
    assert later is not None and later["channel"] == timeline.channel(job_id).encode()
    assert redis_client.get(timeline.count_key(job_id)) == b"3"
