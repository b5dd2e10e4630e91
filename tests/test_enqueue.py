"""Enqueueing without RQ's Job object (worker.enqueue) writes exactly what RQ would."""

from __future__ import annotations

import contextlib
import re
import zlib

import pytest
from rq import Queue
from rq.job import Job

from worker.enqueue import OPTIONS, Enqueuer
from worker.jobs import QUEUES, RUN_JOB

RQ_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _shown(arg) -> str:
    """An argument as compared: RQ's timestamps blanked, stored call data uncompressed."""
    if isinstance(arg, str) and RQ_TIME.match(arg):
        return "<time>"
    if isinstance(arg, bytes):
        with contextlib.suppress(zlib.error):
            arg = zlib.decompress(arg)
    return str(arg)


def writes(redis_client, enqueue) -> list[tuple]:
    """The commands `enqueue(pipe)` queues, as `_shown`."""
    pipe = redis_client.pipeline(transaction=True)
    pipe.multi()
    enqueue(pipe)
    commands = [tuple(_shown(a) for a in command) for command, _ in pipe.command_stack]
    pipe.reset()
    return commands


@pytest.mark.parametrize("name", QUEUES.values())
def test_the_writes_are_rqs_own_for_the_same_job(redis_client, name):
    """For every queue, the replayed template equals RQ's enqueue_call of the same job
    (the call's data stored uncompressed, which RQ reads as well)."""
    queue = Queue(name, connection=redis_client)
    job_id = "job_01KAAAAAAAAAAAAAAAAAAAAAAA"
    ours = writes(redis_client, lambda p: Enqueuer(RUN_JOB).enqueue(p, queue, job_id))
    theirs = writes(
        redis_client,
        lambda p: queue.enqueue_call(RUN_JOB, args=(job_id,), job_id=job_id, pipeline=p, **OPTIONS),
    )
    assert ours == theirs
    assert any(job_id in arg for command in ours for arg in command)


def test_rq_reads_back_the_call(redis_client):
    """RQ fetches a job enqueued this way as run_job(job_id), on its queue."""
    queue = Queue(QUEUES["low"], connection=redis_client)
    pipe = redis_client.pipeline(transaction=True)
    pipe.multi()
    Enqueuer(RUN_JOB).enqueue(pipe, queue, "job_01KBBBBBBBBBBBBBBBBBBBBBBB")
    pipe.execute()
    job = Job.fetch("job_01KBBBBBBBBBBBBBBBBBBBBBBB", connection=redis_client)
    assert (job.func_name, job.args, job.kwargs) == (
        RUN_JOB,
        ("job_01KBBBBBBBBBBBBBBBBBBBBBBB",),
        {},
    )
    assert job.origin == queue.name and job.timeout == -1 and job.result_ttl == 0
    assert queue.job_ids == ["job_01KBBBBBBBBBBBBBBBBBBBBBBB"]
