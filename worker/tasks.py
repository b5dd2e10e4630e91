"""The RQ entry point that runs a job's handler and records what happened."""

from __future__ import annotations

import logging

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from worker import jobs as js
from worker import registry
from worker.context import JobContext
from worker.jobs import JobStore

log = logging.getLogger(__name__)


def run_job(job_id: str) -> None:
    """Run job `job_id`: processing, then completed or failed (and its webhook queued).

    Never raises for a handler's failure: the failure is the job's result.
    """
    store = JobStore(get_current_job().connection)
    record = store.start(job_id)
    if record is None:
        log.warning("job %s is not queued; not running it", job_id)
        return
    spec = registry.get(record["type"])
    if spec is None:
        store.finish(
            job_id,
            status=js.FAILED,
            error={
                "code": "unknown_type",
                "message": f"no handler for job type {record['type']!r}",
            },
        )
        return
    ctx = JobContext(job_id, record["input"] or {}, lambda pct: store.set_progress(job_id, pct))
    try:
        result = spec.fn(ctx)
    except JobTimeoutException:
        log.warning("job %s timed out", job_id)
        store.finish(
            job_id,
            status=js.FAILED,
            error={
                "code": "timeout",
                "message": f"the job ran longer than {spec.timeout_seconds} s",
            },
        )
        return
    except Exception as exc:
        log.exception("job %s failed", job_id)
        store.finish(
            job_id, status=js.FAILED, error={"code": type(exc).__name__, "message": str(exc)}
        )
        return
    try:
        store.finish(job_id, status=js.COMPLETED, result=result)
    except (TypeError, ValueError) as exc:
        store.finish(
            job_id,
            status=js.FAILED,
            error={
                "code": "result_not_json",
                "message": f"the handler's result is not JSON: {exc}",
            },
        )
