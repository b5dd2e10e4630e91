"""The RQ entry point that runs a job's handler under a lease, and records what happened.

A run holds a lease on its job, renewed by the heartbeat thread; if the process
dies, the lease lapses and the reaper (`worker.reaper`) puts the job back on
its queue. The handler's time limit and cancellation interrupt the handler
only (SIGALRM and SIGUSR1 in the worker's main thread), never the recording.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from rq import get_current_job

from callbacks.policy import RetryPolicy
from postback import logs
from postback.faults import FaultWatch, classify, patiently
from postback.settings import Settings
from worker import jobs as js
from worker import registry, runtime
from worker.context import JobContext
from worker.errors import JobCancelled, JobTimedOut, RetryableError
from worker.heartbeat import HEARTBEAT, Run
from worker.jobs import JobSnapshot, JobStore

log = logging.getLogger(__name__)

# How long a run that ended tries to record its outcome while Redis has a fault. The
# guard applies it only while the run holds its lease, so trying longer is safe, and
# any that fails is run again once its lease lapses.
RECORD_PATIENCE_SECONDS = 60.0
# A run's writes to the job store (progress, outcome), whose faults are logged together.
_RUN_FAULTS = FaultWatch("job runs", logger=log)


def run_job(job_id: str) -> None:
    """Run job `job_id` once: processing, then completed, failed, cancelled or queued again.

    Never raises for a handler's failure: the failure is the job's result.
    """
    settings = runtime.settings()
    store = runtime.job_store(runtime.client() or _rq_connection(), settings)
    run_id = secrets.token_hex(8)
    started = store.start(job_id, run_id=run_id, lease_seconds=settings.job_lease_seconds)
    if started is None:
        log.info("job %s is not queued any more; not running it", job_id)
        return
    job = started.job
    with logs.bind(
        job_id=job_id,
        partner_id=job.partner_id,
        request_id=job.request_id or None,
        attempt=job.attempts,
    ):
        _run(store, started, run_id, settings)


def _rq_connection() -> redis.Redis:
    """The connection of the RQ job being run (a worker given no client of its own)."""
    current = get_current_job()
    if current is None:
        raise RuntimeError("run_job runs in an RQ worker, or after runtime.configure")
    return current.connection


def _run(store: JobStore, started: JobSnapshot, run_id: str, settings: Settings) -> None:
    job = started.job
    job_id = job.id
    spec = registry.get(job.type)
    if spec is None:
        message = f"no handler for job type {job.type!r}"
        store.finish(
            job_id,
            status=js.FAILED,
            run_id=run_id,
            error={"code": "unknown_type", "message": message},
        )
        return
    ctx = JobContext(
        job_id,
        job.input or {},
        lambda pct: _report_progress(store, job_id, pct, settings),
        attempt=job.attempts,
    )
    interruptible = threading.Event()
    began = time.monotonic()
    with _heartbeat(store, job_id, run_id, settings.job_lease_seconds, ctx, interruptible):
        outcome = _run_handler(spec.fn, ctx, job.timeout_seconds, interruptible)
    _record(store, started, run_id, outcome, time.monotonic() - began, settings)


def _run_handler(
    fn: Any, ctx: JobContext, timeout_seconds: int, interruptible: threading.Event
) -> tuple[str, Any]:
    """("ok", result) or (kind, exception): the handler's outcome, never raised."""
    try:
        interruptible.set()
        try:
            with _time_limit(timeout_seconds, interruptible):
                return "ok", fn(ctx)
        finally:
            interruptible.clear()
    except JobCancelled as exc:
        return "cancelled", exc
    except JobTimedOut as exc:
        return "timeout", exc
    except RetryableError as exc:
        return "retry", exc
    except Exception as exc:
        log.exception("job %s failed", ctx.job_id)
        return "error", exc


def _report_progress(store: JobStore, job_id: str, percent: int, settings: Settings) -> None:
    """Record progress; a Redis fault loses the report, never the job (it is informative)."""
    try:
        store.set_progress(job_id, percent)
    except redis.RedisError as exc:
        found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
        if found is None:
            raise
        _RUN_FAULTS.failed(found)
        return
    _RUN_FAULTS.recovered()


def _record(
    store: JobStore,
    started: JobSnapshot,
    run_id: str,
    outcome: tuple[str, Any],
    ran_seconds: float,
    settings: Settings,
) -> None:
    job = started.job
    job_id = job.id
    kind, value = outcome
    # `started` is what `start` returned: finishing from it saves a read.
    waited = (job.started_at or job.created_at) - job.created_at if job.attempts == 1 else None
    ran: dict[str, Any] = {
        "run_id": run_id,
        "known": started,
        "ran_seconds": ran_seconds,
        "waited_seconds": waited,
    }

    def finish(**outcome: Any) -> bool:
        return _patiently(lambda: store.finish(job_id, **ran, **outcome), settings)

    if kind == "ok":
        try:
            done = finish(status=js.COMPLETED, result=value)
        except (TypeError, ValueError) as exc:
            done = finish(
                status=js.FAILED,
                error={
                    "code": "result_not_json",
                    "message": f"the handler's result is not JSON: {exc}",
                },
            )
    elif kind == "cancelled":
        done = finish(
            status=js.CANCELLED, error={"code": "cancelled", "message": "cancelled while running"}
        )
    elif kind == "timeout":
        done = finish(
            status=js.FAILED,
            error={
                "code": "timeout",
                "message": f"the job ran longer than {job.timeout_seconds} s",
            },
        )
    elif kind == "retry" and job.attempts < settings.job_max_attempts:
        policy = RetryPolicy(
            base_seconds=settings.job_retry_base_seconds, max_seconds=settings.job_retry_max_seconds
        )
        delay = policy.delay_seconds(job.attempts)
        log.info("job %s: %s; retrying in %.1f s", job_id, value, delay)
        done = _patiently(lambda: store.requeue(job_id, delay_seconds=delay, **ran), settings)
    else:
        done = finish(status=js.FAILED, error={"code": type(value).__name__, "message": str(value)})
    if not done:
        log.warning("job %s: this run lost its lease; its outcome is discarded", job_id)


def _patiently(write: Callable[[], bool], settings: Settings) -> bool:
    """`write()` (an outcome), tried again through Redis faults for up to
    RECORD_PATIENCE_SECONDS; after that the run's lease decides (the job runs again)."""
    return patiently(
        write,
        watch=_RUN_FAULTS,
        timeout_seconds=settings.redis_timeout_seconds,
        within_seconds=RECORD_PATIENCE_SECONDS,
    )


@contextlib.contextmanager
def _time_limit(seconds: int, interruptible: threading.Event) -> Iterator[None]:
    """Raise JobTimedOut in the handler after `seconds` (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: object) -> None:
        if interruptible.is_set():
            interruptible.clear()
            raise JobTimedOut(f"{seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _heartbeat(
    store: JobStore,
    job_id: str,
    run_id: str,
    lease_seconds: float,
    ctx: JobContext,
    interruptible: threading.Event,
) -> Iterator[None]:
    """Renew the run's lease until the block ends; pass a cancellation on to the handler."""
    main = threading.main_thread()
    in_main = threading.current_thread() is main
    previous = None
    if in_main:

        def cancel(signum: int, frame: object) -> None:
            if interruptible.is_set():
                interruptible.clear()
                raise JobCancelled(job_id)

        previous = signal.signal(signal.SIGUSR1, cancel)
    run = Run(store, job_id, run_id, lease_seconds, ctx, main.ident if in_main else None)
    HEARTBEAT.watch(run)
    try:
        yield
    finally:
        HEARTBEAT.release(run)
        if in_main:
            signal.signal(signal.SIGUSR1, previous)
