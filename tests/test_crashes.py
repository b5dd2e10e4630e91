"""Crash paths with real processes: a worker SIGKILLed mid-job, a running job cancelled,
the embedded Redis SIGKILLed right after jobs were acknowledged."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.helpers import bearer
from tests.processes import eventually, postback_worker
from tests.test_cli import postback_up


def worker(redis_url: str):
    """A worker with a short lease, so a lost one is noticed quickly."""
    return postback_worker(redis_url, POSTBACK_JOB_LEASE_SECONDS="2")


def job(client, partner, job_id, **query):
    return client.get(f"/v1/jobs/{job_id}", query_string=query, headers=partner["headers"]).json


def wait_for_end(client, partner, job_id, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        current = job(client, partner, job_id, wait=2)
        if current["status"] in ("completed", "failed", "cancelled"):
            return current
    return job(client, partner, job_id)


def test_a_sigkilled_workers_job_finishes_on_another_within_15_s(client, partner, redis_url):
    """Kill -9 the worker running a job: another worker completes it, well within 15 s."""
    reply = client.post(
        "/v1/jobs", json={"type": "sleep", "input": {"seconds": 3}}, headers=partner["headers"]
    )
    job_id = reply.json["id"]
    with worker(redis_url) as first:
        eventually(
            lambda: job(client, partner, job_id)["status"] == "processing",
            timeout_seconds=20,
            what="the first worker starts the job",
        )
        with worker(redis_url):
            os.kill(first.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            final = wait_for_end(client, partner, job_id, 20)
            recovery_seconds = time.monotonic() - killed_at
    assert final["status"] == "completed" and final["result"] == {"slept": 3}
    assert final["attempts"] == 2
    assert recovery_seconds < 15


@pytest.mark.parametrize(
    ("job_type", "how"), [("sleep", "cooperative"), ("test.hang", "interrupted")]
)
def test_a_running_job_is_cancelled(client, partner, redis_url, receiver, job_type, how):
    """Cancel while it runs: 202, then it ends `cancelled` and job.cancelled is delivered."""
    reply = client.post(
        "/v1/jobs",
        json={"type": job_type, "input": {"seconds": 60}, "callback_url": receiver.url},
        headers=partner["headers"],
    )
    job_id = reply.json["id"]
    with worker(redis_url):
        eventually(
            lambda: job(client, partner, job_id)["status"] == "processing",
            timeout_seconds=20,
            what="the worker starts the job",
        )
        cancel = client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"])
        assert cancel.status_code == 202 and cancel.json["cancel_requested"] is True
        final = wait_for_end(client, partner, job_id, 15)
        assert final["status"] == "cancelled", how
        hook = receiver.wait_for(1, timeout_seconds=10)[0]
    assert b'"job.cancelled"' in hook.body


def test_acknowledged_jobs_survive_a_sigkilled_redis(data_dir: Path) -> None:
    """In fsync mode, every job answered 202 is there after Redis is killed and restarted."""
    with postback_up(data_dir, workers=0, ready=(503,)) as up:
        partner = up.create_partner("Acme")
        headers = bearer(partner["api_key"])
        ids = []
        for number in range(40):
            reply = up.http.post(
                f"{up.base}/v1/jobs", json={"type": "echo", "input": {"n": number}}, headers=headers
            )
            assert reply.status_code == 202
            ids.append(reply.json()["id"])
        killed = up.valkey_pid()
        os.kill(killed, signal.SIGKILL)

        def back() -> bool:
            try:
                restarted = up.valkey_pid() != killed
            except (FileNotFoundError, ValueError):
                return False
            return (
                restarted
                and up.http.get(f"{up.base}/v1/jobs?limit=1", headers=headers).status_code == 200
            )

        eventually(back, timeout_seconds=20, what="the supervisor restarts Redis")
        missing = [
            i
            for i in ids
            if up.http.get(f"{up.base}/v1/jobs/{i}", headers=headers).status_code != 200
        ]
        assert missing == []


def test_a_job_that_kills_its_worker_ends_as_worker_lost(data_dir, receiver, monkeypatch):
    """Under `postback up`, a job that crashes every worker fails with worker_lost, and says so."""
    monkeypatch.setenv("POSTBACK_JOB_LEASE_SECONDS", "1")
    monkeypatch.setenv("POSTBACK_HANDLER_MODULES", "tests.handlers")
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    with postback_up(data_dir) as up:
        partner = up.create_partner("Acme")
        headers = bearer(partner["api_key"])
        reply = up.http.post(
            f"{up.base}/v1/jobs",
            headers=headers,
            json={"type": "test.crash", "callback_url": receiver.url},
        )
        location = reply.headers["Location"]

        def ended():
            current = up.http.get(location, params={"wait": 2}, headers=headers).json()
            return current if current["status"] == "failed" else None

        final = eventually(ended, timeout_seconds=45, what="the crash loop ends")
        hook = receiver.wait_for(1, timeout_seconds=15)[0]
    assert final["error"]["code"] == "worker_lost" and final["attempts"] == 3
    assert b'"job.failed"' in hook.body
