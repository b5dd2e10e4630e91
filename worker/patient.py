"""RQ's SimpleWorker, made patient with Redis: a fault is waited out where it happens.

RQ's own work loop quits on a Redis timeout, and on any error reply it does not
expect (READONLY, OOM, MISCONF on its heartbeat or its dequeue), so a worker
crash-looped for as long as a fault lasted. Here every step of that loop that
talks to Redis is tried again, with growing pauses, until Redis takes it, and the
fault is logged once per change of state (`postback.faults.FaultWatch`). A job
whose RQ bookkeeping a fault cut short needs nothing more: Postback's job store
is the record that counts, and a run that could not record its outcome is
brought back by its lease (`worker.reaper`).

RQ sends its worker heartbeat (three commands, one round trip each) several
times per job, to renew a registration that lasts minutes. Here a heartbeat is
one round trip and is sent at most once a second: at a few hundred jobs a
second the saved round trips were a third of a job's talk with Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker import WorkerStatus

from postback.faults import FaultWatch, classify, patiently

log = logging.getLogger(__name__)

# A heartbeat asked for sooner than this after one that went out (with no shorter
# registration) is not sent.
HEARTBEAT_EVERY_SECONDS = 1.0


class PatientWorker(SimpleWorker):
    """A SimpleWorker that waits out Redis faults instead of quitting on them.

    `timeout_seconds` is the Redis timeout, for the fault's detail in the logs.
    """

    def __init__(self, *args: Any, timeout_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_seconds = timeout_seconds
        self.faults = FaultWatch("worker", logger=log)
        self._beat_at = -HEARTBEAT_EVERY_SECONDS
        self._beat_seconds = 0

    def _patiently(self, step: Any, *args: Any) -> Any:
        return patiently(
            lambda: step(*args), watch=self.faults, timeout_seconds=self.timeout_seconds
        )

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        if pipeline is not None:
            # Part of a transaction: its errors surface when the caller executes it.
            return super().heartbeat(timeout, pipeline)
        seconds = timeout or self.worker_ttl + 60
        beat = time.monotonic()
        if beat - self._beat_at < HEARTBEAT_EVERY_SECONDS and seconds <= self._beat_seconds:
            return None
        self._patiently(self._beat, timeout)
        self._beat_at, self._beat_seconds = beat, seconds
        return None

    def _beat(self, timeout: int | None) -> None:
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()

    def check_for_suspension(self, burst: bool) -> None:
        return self._patiently(super().check_for_suspension, burst)

    def run_maintenance_tasks(self) -> None:
        return self._patiently(super().run_maintenance_tasks)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        # RQ retries a refused or timed-out BLMOVE itself; this waits out the other
        # faults (READONLY, OOM, MISCONF, …), which RQ treats as fatal.
        return self._patiently(super().dequeue_job_and_maintain_ttl, timeout, max_idle_time)

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            super().execute_job(job, queue)
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=self.timeout_seconds)
            if found is None:
                raise
            self.faults.failed(found)
            self._patiently(self.set_state, WorkerStatus.IDLE)

    def teardown(self) -> None:
        try:
            super().teardown()
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=self.timeout_seconds)
            if found is None:
                raise
            # Stopping anyway: RQ's registration of this worker expires by itself.
            log.warning("worker %s stops without unregistering: %s", self.name, found.detail)
