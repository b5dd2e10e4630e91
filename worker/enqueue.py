"""Putting `run_job(job_id)` on an RQ queue without building an RQ `Job` for each job.

RQ builds and serialises a `Job` object for every enqueue (about a tenth of
the CPU of accepting a job). Every Postback enqueue is the same call with a
different job id, so RQ itself is asked once per queue for the writes of an
enqueue of a sample id; each later enqueue replays those writes with the id,
the call's serialised data and the times replaced. The data is the pickled
call, made from the sample's pickle by replacing the id (of the same length),
and stored uncompressed: RQ reads an uncompressed pickle as it reads its own
zlib-compressed one, and compressing 80 bytes cost more than the rest of an
enqueue. `tests/test_enqueue.py` checks that the writes equal RQ's own for the
same job (its data decompressed), so an RQ upgrade that changes its format
fails there rather than in production.
"""

from __future__ import annotations

import pickle
import zlib
from datetime import UTC, datetime
from typing import Any

import redis
from rq import Queue
from rq.utils import utcformat

SAMPLE_ID = "job_00000000000000000000000000"
# As worker.jobs enqueues: no RQ timeout (the job's own is enforced around the
# handler), no kept result, failures kept a day.
OPTIONS: dict[str, Any] = {"timeout": -1, "result_ttl": 0, "failure_ttl": 86400}


class Enqueuer:
    """Queues `function(job_id)` calls on RQ queues, as RQ's `enqueue_call` would."""

    def __init__(self, function: str) -> None:
        self.function = function
        # No lock: two callers that record the same template at once record the same
        # writes. (A lock made at import, before gevent patches the API process, would
        # block the whole process while its holder waits on Redis: a deadlock.)
        self._templates: dict[str, list[_Command]] = {}
        self._sample_data = self._pickled(SAMPLE_ID)

    def enqueue(self, pipe: redis.client.Pipeline, queue: Queue, job_id: str) -> None:
        """Queue the writes of enqueueing `function(job_id)` on `queue` onto `pipe`."""
        values = {
            _DATA: self.data(job_id),
            _DESCRIPTION: self.description(job_id),
            _NOW: _rq_time(datetime.now(UTC)),
        }
        for args, varying in self._template(queue):
            filled = list(args)
            for index in varying:
                filled[index] = _fill(args[index], values, job_id)
            pipe.execute_command(*filled)

    def data(self, job_id: str) -> bytes:
        """RQ's stored data of the call: the pickled (function, instance, args, kwargs)."""
        if len(job_id) == len(SAMPLE_ID):
            return self._sample_data.replace(SAMPLE_ID.encode(), job_id.encode())
        return self._pickled(job_id)

    def _pickled(self, job_id: str) -> bytes:
        call: tuple[str, None, tuple[str], dict[str, Any]] = (self.function, None, (job_id,), {})
        return pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)

    def description(self, job_id: str) -> str:
        return f"{self.function}({job_id!r})"

    def _template(self, queue: Queue) -> list[_Command]:
        template = self._templates.get(queue.name)
        if template is None:
            template = self._templates[queue.name] = [
                (args, [i for i, arg in enumerate(args) if isinstance(arg, _Slot | _WithId)])
                for args in self._record(queue)
            ]
        return template

    def _record(self, queue: Queue) -> list[tuple[Any, ...]]:
        """RQ's own writes for the sample id, with what varies per job marked."""
        writes = queue.connection.pipeline(transaction=True)
        writes.multi()
        queue.enqueue_call(
            self.function, args=(SAMPLE_ID,), job_id=SAMPLE_ID, pipeline=writes, **OPTIONS
        )
        # RQ's data is compressed; an enqueue stores the same pickle uncompressed.
        slots = {
            zlib.compress(self.data(SAMPLE_ID)): _DATA,
            self.description(SAMPLE_ID): _DESCRIPTION,
        }
        commands = [
            tuple(self._mark(arg, slots) for arg in command) for command, _ in writes.command_stack
        ]
        writes.reset()
        return commands

    @staticmethod
    def _mark(arg: Any, slots: dict[Any, _Slot]) -> Any:
        if isinstance(arg, bytes | str) and arg in slots:
            return slots[arg]
        if isinstance(arg, str) and SAMPLE_ID in arg:
            return _WithId(arg)
        if isinstance(arg, str) and _is_rq_time(arg):
            return _NOW
        return arg


class _Slot:
    """A value of a template that is made for each enqueue."""


_DATA, _DESCRIPTION, _NOW = _Slot(), _Slot(), _Slot()


class _WithId:
    """A template's text that contains the sample id."""

    def __init__(self, text: str) -> None:
        self.text = text


# A template's command: its arguments, and the positions of those made for each enqueue.
_Command = tuple[tuple[Any, ...], list[int]]


def _fill(arg: Any, values: dict[_Slot, Any], job_id: str) -> Any:
    """A template's argument as this enqueue writes it."""
    if isinstance(arg, _Slot):
        return values[arg]
    if isinstance(arg, _WithId):
        return arg.text.replace(SAMPLE_ID, job_id)
    return arg


# The last second in RQ's time format, `(second, "2026-11-24T05:46:27.")`.
_last_second: tuple[datetime | None, str] = (None, "")


def _rq_time(moment: datetime) -> str:
    """`utcformat(moment)`, RQ's `%Y-%m-%dT%H:%M:%S.%fZ`, formatting each second once."""
    global _last_second
    second = moment.replace(microsecond=0)
    known, text = _last_second
    if second != known:
        text = utcformat(second)[: -len("000000Z")]
        _last_second = (second, text)
    return f"{text}{moment.microsecond:06d}Z"


def _is_rq_time(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True
