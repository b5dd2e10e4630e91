"""A worker's RQ scheduler, in a process of its own: `python -P -m worker.scheduler`.

RQ forks its scheduler from the worker. The fork holds a copy of every file
descriptor of the worker, its blocking connection to Redis among them: while a
SIGKILLed worker's scheduler lived on, Redis still handed the next job to the
dead worker's BLMOVE, and the job waited for the reaper. RQ also asks again for
a scheduler lock it could not take only every ten minutes.

Here the worker starts the scheduler as a child that shares nothing with it (a
new interpreter, file descriptors closed) and that dies with it: the kernel
sends it SIGTERM when the worker dies, SIGKILL included, and it then releases
its locks. Each scheduler asks for the locks it lacks every
`LOCK_RETRY_SECONDS`, so another worker's takes over within seconds.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType

import redis
from rq.scheduler import RQScheduler

from postback.faults import FaultWatch, classify
from postback.settings import Settings
from worker.jobs import PRIORITIES, QUEUES

log = logging.getLogger(__name__)

LOCK_RETRY_SECONDS = 5.0


def run(settings: Settings, client: redis.Redis) -> int:
    """Move RQ's scheduled jobs onto their queues until SIGTERM/SIGINT. Returns an exit code.

    Redis faults are waited out; on stopping, the locks held are released.
    """
    stopping: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    names = [QUEUES[priority] for priority in PRIORITIES]
    scheduler = RQScheduler(names, connection=client, logging_level=settings.log_level)
    faults = FaultWatch("scheduler", logger=log)
    asked_at = -LOCK_RETRY_SECONDS
    born = False
    while not stopping:
        try:
            now = time.monotonic()
            if len(scheduler.acquired_locks) < len(names) and now - asked_at >= LOCK_RETRY_SECONDS:
                asked_at = now
                scheduler.acquire_locks()
            if scheduler.acquired_locks:
                if not born:
                    scheduler.register_birth()
                    born = True
                scheduler.heartbeat()
                scheduler.enqueue_scheduled_jobs()
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
            if found is None:
                raise
            faults.failed(found)
        else:
            faults.recovered()
        time.sleep(scheduler.interval)
    try:
        scheduler.stop()
    except redis.RedisError as exc:
        # Its locks expire by themselves within a minute.
        log.warning("the scheduler stops without releasing its locks: %s", exc)
    return 0


if __name__ == "__main__":
    from worker.entry import main, schedule

    sys.exit(main(schedule))
