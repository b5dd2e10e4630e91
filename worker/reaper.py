"""The reaper: finds work that a crash left behind and sets it going again.

Every worker process runs one. Each pass:
- a running job whose lease lapsed (its worker died) goes back on its queue,
  or, after `POSTBACK_JOB_MAX_ATTEMPTS` runs, fails with `worker_lost`;
- a retry whose time has come is put on its queue;
- a job recorded as queued that sits on no queue (lost between dequeue and
  start, or a retry whose scheduling was lost) is put back on its queue;
- finished jobs past their retention are removed with what belongs to them.
Every change is guarded in the job store, so reapers in several processes agree.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import cast

import redis

from postback import clock
from postback import metrics as pm
from postback.faults import FaultWatch, classify, pause_seconds
from postback.settings import Settings
from worker import jobs as js
from worker.jobs import Job, JobStatus, JobStore

log = logging.getLogger(__name__)

# A queued job is looked for on its queue only after this long.
LOST_AFTER_SECONDS = 10.0
BATCH = 100


@dataclass
class Reaped:
    recovered: int = 0
    worker_lost: int = 0
    requeued_lost: int = 0
    retried: int = 0
    removed: int = 0


def reap(store: JobStore, settings: Settings) -> Reaped:
    """One pass; returns what it did."""
    done = Reaped()
    now = clock.now()
    client = store.redis
    for job_id in _due(client, js.LEASES_KEY, now):
        job = store.view(job_id)
        if job is None or job.status is not JobStatus.PROCESSING:
            client.zrem(js.LEASES_KEY, job_id)
            continue
        if job.attempts >= settings.job_max_attempts:
            message = f"the worker running it was lost {job.attempts} times"
            if store.finish(
                job_id,
                status=JobStatus.FAILED,
                run_id=job.run_id,
                error={"code": "worker_lost", "message": message},
            ):
                done.worker_lost += 1
                pm.counter(client, "postback_jobs_worker_lost_total")
                log.warning("job %s failed: worker lost %d times", job_id, job.attempts)
        elif store.requeue(job_id, run_id=None, lapsed_before=now):
            done.recovered += 1
            pm.counter(client, "postback_jobs_recovered_total")
            log.warning("job %s: lease lapsed (worker lost); queued again", job_id)
    for job_id in _due(client, js.RETRY_KEY, now):
        if store.enqueue_again(job_id):
            done.retried += 1
    for job_id in _due(client, js.QUEUED_KEY, now - LOST_AFTER_SECONDS):
        queued = store.view(job_id)
        if queued is None or queued.status is not JobStatus.QUEUED:
            client.zrem(js.QUEUED_KEY, job_id)
            continue
        if _on_a_queue(store, queued):
            # Waiting its turn: look again later.
            client.zadd(js.QUEUED_KEY, {job_id: now})
            continue
        if store.enqueue_again(job_id):
            done.requeued_lost += 1
            log.warning("job %s was on no queue; queued again", job_id)
    for job_id in _due(client, js.RETENTION_KEY, now):
        store.remove(job_id)
        done.removed += 1
    return done


def _due(client: redis.Redis, schedule: str, before: float) -> list[str]:
    """Up to BATCH ids of `schedule` (a sorted set) whose time is `before` or earlier."""
    found = cast(list[bytes], client.zrangebyscore(schedule, "-inf", before, start=0, num=BATCH))
    return [raw.decode() for raw in found]


def _on_a_queue(store: JobStore, job: Job) -> bool:
    if store.redis.zscore(js.RETRY_KEY, job.id) is not None:
        return True
    return store.redis.lpos(store.queue(job.priority).key, job.id) is not None


def run(
    store: JobStore, settings: Settings, stop: threading.Event, *, interval_seconds: float = 1.0
) -> None:
    """Reap every `interval_seconds` until `stop` is set.

    While Redis has a fault, passes are tried with growing pauses (up to 5 s) and the
    fault is logged once, not at every pass.
    """
    faults = FaultWatch("reaper", logger=log)
    wait = interval_seconds
    while not stop.wait(wait):
        wait = interval_seconds
        try:
            reap(store, settings)
        except Exception as exc:
            found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
            if found is None:
                log.warning("reaper pass failed; retrying", exc_info=True)
            else:
                wait = max(interval_seconds, pause_seconds(faults.failed(found)))
            continue
        faults.recovered()
