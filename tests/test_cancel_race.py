"""A cancel request racing a run's finish, on a real Redis: the answer matches the end."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from worker import jobs as js
from worker.runtime import job_store

TRIALS = 40


def finish_after(
    store: js.JobStore,
    job_id: str,
    run_id: str,
    known: Any,
    both: threading.Barrier,
    delay: float,
    applied: list[bool],
) -> threading.Thread:
    """A thread that, once `both` is passed and `delay` seconds later, completes the run
    (whether the finish applied is appended to `applied`)."""

    def finish() -> None:
        both.wait()
        time.sleep(delay)
        applied.append(
            store.finish(
                job_id, status="completed", result={"ok": True}, run_id=run_id, known=known
            )
        )

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_a_cancel_racing_a_finish_is_202_only_for_a_job_that_ends_cancelled(
    client, partner, redis_client, settings
):
    """A 202 cancel_requested is never given for a job that ends completed; otherwise it is 409."""
    store = job_store(redis_client, settings)
    answers: Counter[tuple[int, str]] = Counter()
    for trial in range(TRIALS):
        submitted = client.post(
            "/v1/jobs", json={"type": "echo", "input": {}}, headers=partner["headers"]
        )
        assert submitted.status_code == 202, submitted.json
        job_id = submitted.json["id"]
        run_id = f"run{trial}"
        started = store.start(job_id, run_id=run_id, lease_seconds=60)
        assert started is not None
        both = threading.Barrier(2)
        # Staggered from trial to trial across the time a cancel request takes, so that
        # some finishes land before the request, some after and some in between.
        applied: list[bool] = []
        runner = finish_after(store, job_id, run_id, started, both, (trial % 10) * 0.0002, applied)
        both.wait()
        reply = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
        runner.join(timeout=30)
        assert not runner.is_alive() and applied == [True], "the run's finish applied"
        final = redis_client.hget(js.job_key(job_id), "status").decode()
        if reply.status_code == 202:
            assert reply.json["cancel_requested"] is True
            assert final == "cancelled", f"trial {trial}: 202 for a {final} job"
        else:
            assert reply.status_code == 409, reply.json
            assert reply.mimetype == "application/problem+json"
            assert final == "completed"
        answers[reply.status_code, final] += 1
    assert sum(answers.values()) == TRIALS


def test_a_retry_asked_for_after_a_cancel_was_accepted_ends_cancelled(
    client, partner, redis_client, settings
):
    """A run that asks for a retry once its cancel request was answered 202 ends cancelled."""
    store = job_store(redis_client, settings)
    submitted = client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"])
    job_id = submitted.json["id"]
    started = store.start(job_id, run_id="r1", lease_seconds=60)
    reply = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
    assert reply.status_code == 202 and reply.json["cancel_requested"] is True
    assert store.requeue(job_id, run_id="r1", delay_seconds=1.0, known=started)
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    assert job["status"] == "cancelled" and job["error"]["code"] == "cancelled"
    assert redis_client.zscore(js.RETRY_KEY, job_id) is None, "no retry is scheduled"


def test_a_cancel_after_the_end_is_409_and_records_nothing(client, partner, redis_client, settings):
    """Cancelling a job that has ended is 409 problem+json and adds nothing to its record."""
    store = job_store(redis_client, settings)
    submitted = client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"])
    job_id = submitted.json["id"]
    started = store.start(job_id, run_id="r1", lease_seconds=60)
    assert store.finish(job_id, status=js.COMPLETED, result=1, run_id="r1", known=started)
    before = (
        redis_client.hgetall(js.job_key(job_id)),
        redis_client.lrange(f"pb:timeline:{job_id}", 0, -1),
    )
    assert store.request_cancel(job_id) is js.Cancel.ENDED
    reply = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
    assert reply.status_code == 409 and reply.mimetype == "application/problem+json"
    after = (
        redis_client.hgetall(js.job_key(job_id)),
        redis_client.lrange(f"pb:timeline:{job_id}", 0, -1),
    )
    assert after == before
