"""Correlation ids from request to webhook, the job timeline, and structured logs."""

from __future__ import annotations

import io
import json
import logging
import re
import time

import pytest

from postback import logs, timeline
from tests.receiver import Reply
from worker import reaper
from worker.runtime import job_store

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def submit(client, partner, headers=None, **body):
    body.setdefault("type", "echo")
    reply = client.post("/v1/jobs", json=body, headers={**partner["headers"], **(headers or {})})
    assert reply.status_code == 202, reply.json
    return reply


def events(client, partner, job_id):
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    return [entry["event"] for entry in job["timeline"]]


def test_a_given_request_id_travels_to_the_job_and_the_webhook(client, partner, receiver, work):
    """X-Request-ID is echoed, kept on the job, and sent on the webhook as x-request-id."""
    reply = submit(
        client,
        partner,
        {"X-Request-ID": "req-42", "traceparent": TRACEPARENT},
        callback_url=receiver.url,
    )
    assert reply.headers["X-Request-ID"] == "req-42"
    work()
    (hit,) = receiver.wait_for(1)
    assert hit.headers["x-request-id"] == "req-42"
    assert hit.headers["traceparent"] == TRACEPARENT
    job = client.get(f"/v1/jobs/{reply.json['id']}", headers=partner["headers"]).json
    assert job["request_id"] == "req-42"


@pytest.mark.parametrize("given", [None, "", "x" * 200, "has spaces", "semi;colon"])
def test_a_missing_or_odd_request_id_is_replaced(client, partner, given):
    """Without a usable X-Request-ID the API makes one and returns it."""
    headers = {} if given is None else {"X-Request-ID": given}
    reply = client.get("/v1/jobs", headers={**partner["headers"], **headers})
    assert re.fullmatch(r"[0-9a-f]{32}", reply.headers["X-Request-ID"])


def test_an_invalid_traceparent_is_not_forwarded(client, partner, receiver, work):
    """Only a valid W3C traceparent reaches the webhook."""
    submit(client, partner, {"traceparent": "00-zz-yy-01"}, callback_url=receiver.url)
    work()
    assert "traceparent" not in receiver.wait_for(1)[0].headers


def test_errors_carry_the_request_id_too(client):
    """Even a 401 answers with its X-Request-ID."""
    reply = client.get("/v1/jobs", headers={"X-Request-ID": "abc"})
    assert reply.status_code == 401 and reply.headers["X-Request-ID"] == "abc"


def test_the_timeline_follows_the_whole_journey(client, partner, receiver, work):
    """accepted, enqueued, started, finished, a failed attempt, another, delivered — in order."""
    receiver.reply(Reply(500))
    job_id = submit(client, partner, callback_url=receiver.url).json["id"]
    work()
    time.sleep(0.06)
    work()
    assert events(client, partner, job_id) == [
        "accepted",
        "enqueued",
        "started",
        "finished",
        "delivery_attempt",
        "delivery_attempt",
        "delivered",
    ]
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    attempts = [e for e in job["timeline"] if e["event"] == "delivery_attempt"]
    assert [a["status_code"] for a in attempts] == [500, 200]
    assert all(a["duration_ms"] >= 0 for a in attempts)
    times = [entry["at"] for entry in job["timeline"]]
    assert times == sorted(times)


def test_the_timeline_records_dead_letters_and_replays(
    client, partner, receiver, work, admin_headers
):
    """A 410 shows as dead_lettered; an admin replay as replayed, then delivered."""
    receiver.reply(Reply(410))
    job_id = submit(client, partner, callback_url=receiver.url).json["id"]
    work()
    (letter,) = client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    client.post(f"/v1/admin/dead-letters/{letter['id']}/replay", headers=admin_headers)
    work()
    assert events(client, partner, job_id)[-5:] == [
        "delivery_attempt",
        "dead_lettered",
        "replayed",
        "delivery_attempt",
        "delivered",
    ]


def test_the_timeline_records_cancellation_and_recovery(client, partner, redis_client, settings):
    """A cancelled queued job shows `cancelled`; a lapsed lease shows `recovered`."""
    cancelled = submit(client, partner).json["id"]
    client.post(f"/v1/jobs/{cancelled}/cancel", headers=partner["headers"])
    assert events(client, partner, cancelled)[-1] == "cancelled"
    lost = submit(client, partner).json["id"]
    store = job_store(redis_client, settings)
    store.start(lost, run_id="gone", lease_seconds=-1)
    reaper.reap(store, settings)
    assert events(client, partner, lost)[-2:] == ["started", "recovered"]


def test_the_timeline_is_bounded(redis_client):
    """However many events a job has, it keeps the last MAX_ENTRIES."""
    for number in range(timeline.MAX_ENTRIES + 50):
        timeline.record(redis_client, "job_x", "delivery_attempt", attempt=number)
    kept = timeline.read(redis_client, "job_x")
    assert len(kept) == timeline.MAX_ENTRIES and kept[-1]["attempt"] == timeline.MAX_ENTRIES + 49


@pytest.fixture
def json_log():
    """Every log record of the test, as Postback writes it in production (JSON lines)."""
    stream = io.StringIO()
    handler = logs.handler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.DEBUG)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    root.setLevel(previous)


def test_log_lines_are_json_with_the_bound_context(client, partner, receiver, work, json_log):
    """Worker and delivery lines carry ts, level, event, and request, job, partner, destination."""
    reply = submit(
        client, partner, {"X-Request-ID": "req-log"}, type="test.fail", callback_url=receiver.url
    )
    job_id = reply.json["id"]
    work()
    lines = json_log()
    assert all({"ts", "level", "event"} <= set(line) for line in lines)
    about_job = [line for line in lines if line.get("job_id") == job_id]
    assert any(line.get("request_id") == "req-log" for line in about_job)
    assert any(line.get("partner_id") == partner["id"] for line in about_job)
    assert any("destination" in line for line in about_job)


def test_no_secret_or_webhook_body_reaches_the_logs(
    client, admin_headers, receiver, work, json_log
):
    """API keys, signing secrets, the admin token and webhook bodies never appear in logs."""
    made = client.post("/v1/admin/partners", json={"name": "Logged"}, headers=admin_headers).json
    headers = {"Authorization": f"Bearer {made['api_key']}"}
    client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {"marker": "body-secret-7"}, "callback_url": receiver.url},
        headers=headers,
    )
    client.get("/v1/jobs", headers={"Authorization": f"Bearer {made['api_key']}x"})
    work()
    text = json.dumps(json_log())
    for secret in (
        made["api_key"],
        made["signing_secret"],
        admin_headers["Authorization"][7:],
        "body-secret-7",
    ):
        assert secret not in text


# The lines `postback up` prints for the person who started it; everything else is a log line.
BANNER = (
    "Postback is up",
    "  API:",
    "  Console:",
    "  Redis:",
    "  Workers:",
    "  Admin token",
    "Press Ctrl-C",
)


def test_a_running_system_logs_only_json_with_one_access_line_per_request(data_dir):
    """Under `postback up` every log line (gunicorn's, RQ's, Postback's) is JSON; each request
    has one access line with its method, URL rule, status, duration and request id; RQ's
    per-job info lines are not written at the default level."""
    from tests.helpers import bearer
    from tests.receiver import Receiver
    from tests.test_cli import postback_up

    with Receiver() as receiver, postback_up(data_dir) as up:
        partner = up.create_partner("Logged")
        headers = bearer(partner["api_key"])
        submitted = up.http.post(
            f"{up.base}/v1/jobs",
            json={"type": "echo", "callback_url": receiver.url},
            headers={**headers, "X-Request-ID": "req-submit"},
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        receiver.wait_for(1, timeout_seconds=30)
        read = up.http.get(
            f"{up.base}/v1/jobs/{job_id}?wait=0", headers={**headers, "X-Request-ID": "req-read"}
        )
        assert read.status_code == 200
        planted = up.http.post(
            f"{up.base}/v1/jobs",
            json={"type": "echo"},
            headers={**headers, "Host": "attacker.example", "X-Request-ID": "req-host"},
        )
        assert planted.status_code == 400
        assert planted.json()["type"].endswith("host-not-allowed")
        log = up.log
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        if line.startswith(BANNER) or line == "Postback stopped.":
            continue
        records.append(json.loads(line))  # anything else that is not JSON fails here
    loggers = {record["logger"] for record in records}
    assert {"gunicorn.error", "rq.worker", "postback.access"} <= loggers
    access = {r["request_id"]: r for r in records if r["logger"] == "postback.access"}
    assert access["req-submit"] | {"duration_ms": 0} == {
        **access["req-submit"],
        "method": "POST",
        "path": "/v1/jobs",
        "status": 202,
        "duration_ms": 0,
    }
    assert access["req-read"]["path"] == "/v1/jobs/<job_id>"
    assert access["req-read"]["status"] == 200 and access["req-read"]["duration_ms"] >= 0
    assert access["req-host"]["status"] == 400
    paths = {r["path"] for r in records if r["logger"] == "postback.access"}
    assert not [path for path in paths if path and (job_id in path or "?" in path)]
    chatter = [
        r
        for r in records
        if r["logger"].startswith("rq.") and r["level"] == "info" and job_id in r["event"]
    ]
    assert chatter == []


def test_an_access_line_never_holds_the_raw_path(client, partner, json_log):
    """A request that matched a rule logs the rule; one that matched none logs a null path,
    never the path or query it was sent to."""
    client.get("/v1/jobs/job_01ARZ3NDEKTSV4RRFFQ69G5FAV?wait=0", headers=partner["headers"])
    client.get("/v1/secret-internal-name?token=abc")
    access = [line for line in json_log() if line["logger"] == "postback.access"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("GET", "/v1/jobs/<job_id>", 404),
        ("GET", None, 404),
    ]
    assert "secret-internal-name" not in json.dumps(access)
