"""One thread per process that renews the lease of the run in progress.

A worker runs one job at a time, so one long-lived thread serves every run
(a thread started and joined per job cost about 55 µs of each job). Every
third of the lease it renews the current run's lease; when the job has a
cancellation request it sets `ctx.cancelled` and interrupts the handler with
SIGUSR1 in the thread that runs it, if that is the main thread.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from postback.connection import timeout_of
from postback.faults import FaultWatch, classify
from worker.context import JobContext

if TYPE_CHECKING:
    from worker.jobs import JobStore

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Run:
    store: JobStore
    job_id: str
    run_id: str
    lease_seconds: float
    ctx: JobContext
    # The thread to interrupt on cancellation (None: do not interrupt).
    interrupt_ident: int | None


class Heartbeat:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._run: Run | None = None
        self._due = 0.0
        self._thread: threading.Thread | None = None
        # The thread waits with no timeout (it has had no run since its last wake-up).
        self._idle = False
        self.faults = FaultWatch("lease renewals", logger=log)

    def watch(self, run: Run) -> None:
        """Renew `run`'s lease from now on, until `release`."""
        with self._changed:
            self._run = run
            self._due = time.monotonic() + run.lease_seconds / 3
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._beat, name="heartbeat", daemon=True)
                self._thread.start()
            elif self._idle:
                # Jobs run back to back: the thread is then waiting for an earlier
                # (sooner) due time and needs no wake-up, which saves two per job.
                self._changed.notify()

    def release(self, run: Run) -> None:
        """Stop renewing `run` (no interrupt reaches its thread after this returns)."""
        with self._changed:
            if self._run is run:
                self._run = None

    def _beat(self) -> None:
        while True:
            with self._changed:
                run = self._run
                wait = self._due - time.monotonic() if run is not None else None
                if run is None or wait is None or wait > 0:
                    self._idle = wait is None
                    self._changed.wait(wait)
                    self._idle = False
                    continue
                self._due = time.monotonic() + run.lease_seconds / 3
            self._renew(run)

    def _renew(self, run: Run) -> None:
        try:
            renewed = run.store.renew(
                run.job_id, run_id=run.run_id, lease_seconds=run.lease_seconds
            )
        except Exception as exc:
            # Retried at the next beat; a Redis fault is logged once, not at every beat.
            found = classify(exc, timeout_seconds=timeout_of(run.store.redis))
            if found is None:
                log.warning("job %s: lease renewal failed; retrying", run.job_id, exc_info=True)
            else:
                self.faults.failed(found)
            return
        self.faults.recovered()
        with self._changed:
            if self._run is not run:
                return
            if renewed is None:
                # The run lost its lease: nothing more to renew.
                self._run = None
                return
            if renewed.job.cancel_requested and not run.ctx.cancelled.is_set():
                run.ctx.cancelled.set()
                if run.interrupt_ident is not None:
                    # Under the lock: `release` cannot have returned, so this is still its run.
                    signal.pthread_kill(run.interrupt_ident, signal.SIGUSR1)


HEARTBEAT = Heartbeat()
