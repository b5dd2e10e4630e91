"""The job lifecycle: retries, timeouts, cancellation, priorities, waiting, result links,
retention, and recovery from lost workers — with a real Redis and real receivers."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, replace

import itsdangerous
import pytest

from app import create_app
from worker import jobs as js
from worker import reaper
from worker.runtime import job_store


def submit(client, partner, **body):
    body.setdefault("type", "echo")
    reply = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def get(client, partner, job_id, **query):
    return client.get(f"/v1/jobs/{job_id}", query_string=query, headers=partner["headers"]).json


def test_a_retryable_error_is_retried_until_it_succeeds(client, partner, work):
    """RetryableError runs the job again after a backoff; the third run succeeds."""
    job_id = submit(client, partner, type="test.flaky", input={"succeed_on": 3})
    for _ in range(3):
        work()
        time.sleep(0.15)  # past the test backoff (at most 0.1 s)
    job = get(client, partner, job_id)
    assert job["status"] == "completed" and job["result"] == {"attempt": 3}
    assert job["attempts"] == 3


def test_retries_end_after_max_attempts(client, partner, work, receiver):
    """After POSTBACK_JOB_MAX_ATTEMPTS runs the job fails with the exception's class name."""
    job_id = submit(client, partner, type="test.flaky", callback_url=receiver.url)
    for _ in range(4):
        work()
        time.sleep(0.15)
    job = get(client, partner, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "RetryableError"
    assert job["attempts"] == 3
    assert json.loads(receiver.wait_for(1)[0].body)["type"] == "job.failed"


def test_a_job_past_its_timeout_fails_with_timeout(client, partner, work):
    """A handler that runs past timeout_seconds is interrupted; error.code is `timeout`."""
    job_id = submit(client, partner, type="test.hang", input={"seconds": 30}, timeout_seconds=1)
    started = time.monotonic()
    work()
    assert time.monotonic() - started < 10
    job = get(client, partner, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "timeout"


def test_timeouts_above_the_maximum_are_refused(client, partner):
    """timeout_seconds above POSTBACK_JOB_MAX_TIMEOUT_SECONDS is a 422."""
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "timeout_seconds": 10**9}, headers=partner["headers"]
    )
    assert reply.status_code == 422 and "timeout_seconds" in reply.json["errors"]


def test_a_cancelled_queued_job_never_runs(client, partner, work, receiver):
    """Cancel before it starts: 200 cancelled, the handler never runs, job.cancelled is sent."""
    job_id = submit(client, partner, type="test.flaky", callback_url=receiver.url)
    reply = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
    assert reply.status_code == 200 and reply.json["status"] == "cancelled"
    work()
    job = get(client, partner, job_id)
    assert job["status"] == "cancelled" and job["attempts"] == 0
    assert json.loads(receiver.wait_for(1)[0].body)["type"] == "job.cancelled"


def test_cancelling_an_ended_job_is_409(client, partner, work):
    """A terminal job cannot be cancelled."""
    job_id = submit(client, partner)
    work()
    reply = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
    assert reply.status_code == 409


def test_high_priority_jobs_run_first(client, partner, work):
    """Queued low, normal and high: a worker takes high first and low last."""
    ids = {p: submit(client, partner, priority=p) for p in ("low", "normal", "high")}
    work()
    started = {p: get(client, partner, i)["started_at"] for p, i in ids.items()}
    assert started["high"] <= started["normal"] <= started["low"]


def test_wait_returns_when_the_job_ends(app, client, partner, work):
    """GET ?wait=N answers as soon as the job ends, before N seconds."""
    job_id = submit(client, partner)
    answer = {}

    def wait():
        with app.test_client() as own:
            started = time.monotonic()
            answer["job"] = get(own, partner, job_id, wait=20)
            answer["seconds"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    work(deliveries=False)
    waiter.join(timeout=25)
    assert answer["job"]["status"] == "completed"
    assert answer["seconds"] < 10


def test_wait_gives_up_after_n_seconds(client, partner):
    """Without a worker, ?wait=1 answers the queued job after about a second."""
    job_id = submit(client, partner)
    started = time.monotonic()
    assert get(client, partner, job_id, wait=1)["status"] == "queued"
    assert 0.9 <= time.monotonic() - started < 5


@pytest.mark.parametrize("wait", ["31", "-1", "soon"])
def test_bad_waits_are_422(client, partner, wait):
    """wait outside 0..30 is refused."""
    job_id = submit(client, partner)
    reply = client.get(f"/v1/jobs/{job_id}?wait={wait}", headers=partner["headers"])
    assert reply.status_code == 422


def test_large_results_are_served_by_a_signed_link(settings, redis_client, partner, work):
    """A result over the inline limit becomes result_url, which works without the key."""
    client = create_app(
        asdict(replace(settings, inline_result_bytes=100)), client=redis_client
    ).test_client()
    job_id = submit(client, partner, type="test.big", input={"bytes": 500})
    work()
    job = get(client, partner, job_id)
    assert "result" not in job and job["result_url"].startswith("http")
    path = job["result_url"].split("://", 1)[1].split("/", 1)[1]
    served = client.get("/" + path)
    assert served.status_code == 200 and served.json == {"blob": "x" * 500}
    assert client.get("/" + path[:-3] + "abc").status_code == 404


def test_an_expired_result_link_is_410(settings, redis_client, partner, work, monkeypatch):
    """Past POSTBACK_RESULT_URL_TTL_SECONDS the link answers 410 Gone."""
    client = create_app(
        asdict(replace(settings, inline_result_bytes=100, result_url_ttl_seconds=1)),
        client=redis_client,
    ).test_client()
    job_id = submit(client, partner, type="test.big", input={"bytes": 500})
    work()
    path = get(client, partner, job_id)["result_url"].split("://", 1)[1].split("/", 1)[1]
    # The link is read two seconds later than it was made: past its one-second life.
    made = itsdangerous.TimestampSigner.get_timestamp
    monkeypatch.setattr(
        itsdangerous.TimestampSigner, "get_timestamp", lambda signer: made(signer) + 2
    )
    reply = client.get("/" + path)
    assert reply.status_code == 410 and reply.mimetype == "application/problem+json"


def test_retention_removes_a_finished_job_and_its_webhook(
    settings, redis_client, client, partner, work, receiver
):
    """Past POSTBACK_JOB_RETENTION_SECONDS the reaper removes the job, its indexes and event."""
    job_id = submit(client, partner, callback_url=receiver.url)
    work()
    store = job_store(redis_client, replace(settings, job_retention_seconds=0))
    redis_client.zadd(js.RETENTION_KEY, {job_id: 0})
    assert reaper.reap(store, settings).removed == 1
    assert client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).status_code == 404
    assert client.get("/v1/jobs", headers=partner["headers"]).json["items"] == []
    assert not any(k.startswith(b"pb:cb:event:") for k in redis_client.scan_iter())


def test_a_job_lost_between_dequeue_and_start_is_queued_again(
    client, partner, redis_client, settings, work, monkeypatch
):
    """A job taken off its queue by a worker that died before starting it runs anyway."""
    job_id = submit(client, partner)
    # What a worker that dies right after its dequeue leaves: the id is on no queue.
    assert redis_client.lpop(f"rq:queue:{js.QUEUE_NAME}") == job_id.encode()
    monkeypatch.setattr(reaper, "LOST_AFTER_SECONDS", 0)
    assert reaper.reap(job_store(redis_client, settings), settings).requeued_lost == 1
    work()
    assert get(client, partner, job_id)["status"] == "completed"


def test_a_lapsed_lease_is_recovered_and_a_crash_loop_ends_in_worker_lost(
    client, partner, redis_client, settings, receiver
):
    """A run whose lease lapses is queued again; the third lost run fails with worker_lost."""
    job_id = submit(client, partner, callback_url=receiver.url)
    store = job_store(redis_client, settings)
    for attempt in range(1, 4):
        assert store.start(job_id, run_id=f"run{attempt}", lease_seconds=-1)
        done = reaper.reap(store, settings)
        if attempt < 3:
            assert done.recovered == 1 and store.get(job_id).status == "queued"
    assert done.worker_lost == 1
    job = get(client, partner, job_id)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost"


def test_a_run_that_lost_its_lease_cannot_record_its_outcome(
    redis_client, settings, client, partner
):
    """After recovery, the old run's finish is refused: the new run owns the job."""
    job_id = submit(client, partner)
    store = job_store(redis_client, settings)
    store.start(job_id, run_id="old", lease_seconds=-1)
    reaper.reap(store, settings)
    store.start(job_id, run_id="new", lease_seconds=60)
    assert store.finish(job_id, status=js.COMPLETED, result=1, run_id="old") is False
    assert store.finish(job_id, status=js.COMPLETED, result=2, run_id="new") is True
    assert get(client, partner, job_id)["result"] == 2
