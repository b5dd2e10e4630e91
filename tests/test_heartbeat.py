"""The heartbeat thread on a real Redis: it renews the run in progress and passes on cancels."""

from __future__ import annotations

import time

from postback import clock
from tests.processes import eventually
from worker import jobs as js
from worker import reaper
from worker.context import JobContext
from worker.heartbeat import Heartbeat, Run
from worker.runtime import job_store

LEASE_SECONDS = 0.6


def started_run(redis_client, settings) -> Run:
    store = job_store(redis_client, settings)
    job_id = store.create(
        partner_id="ptn_beat", type="sleep", input={}, callback_url=None, timeout_seconds=60
    ).id
    assert store.start(job_id, run_id="r1", lease_seconds=LEASE_SECONDS)
    ctx = JobContext(job_id, {}, lambda pct: None, attempt=1)
    return Run(store, job_id, "r1", LEASE_SECONDS, ctx, interrupt_ident=None)


def lease_until(redis_client, job_id: str) -> float:
    return float(redis_client.hget(js.job_key(job_id), "lease_until") or 0)


def test_a_run_longer_than_its_lease_keeps_it_until_released(redis_client, settings):
    """Renewed every third of the lease, the run is never recovered; released, it lapses."""
    run = started_run(redis_client, settings)
    heartbeat = Heartbeat()
    heartbeat.watch(run)
    try:
        deadline = time.monotonic() + 3 * LEASE_SECONDS
        while time.monotonic() < deadline:
            assert reaper.reap(run.store, settings).recovered == 0
            time.sleep(0.05)
    finally:
        heartbeat.release(run)
    last = lease_until(redis_client, run.job_id)
    assert last > clock.now()
    time.sleep(LEASE_SECONDS)
    assert lease_until(redis_client, run.job_id) == last, "no renewal after release"


def test_a_cancel_request_reaches_the_running_handler(redis_client, settings):
    """A cancel requested while the job runs sets ctx.cancelled within a third of the lease."""
    run = started_run(redis_client, settings)
    heartbeat = Heartbeat()
    heartbeat.watch(run)
    try:
        assert run.store.request_cancel(run.job_id) is js.Cancel.REQUESTED
        eventually(run.ctx.cancelled.is_set, timeout_seconds=5, what="ctx.cancelled is set")
    finally:
        heartbeat.release(run)
