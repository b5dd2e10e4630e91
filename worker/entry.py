"""Entry points of the worker's processes: the worker, its delivery process, its scheduler.

Each reads the settings once (`main`) and builds its clients here, so that
`postback up` and a worker start these processes as `python -P -m worker`,
`python -P -m worker.deliver` and `python -P -m worker.scheduler`, without the
CLI; `postback worker` and `postback deliver` call `work` and `deliver`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import redis

from postback.children import die_with_parent, orphaned
from postback.connection import RedisNotFound, connect, redis_target
from postback.faults import classify
from postback.logs import configure_logging
from postback.settings import Settings, SettingsError

# Tells a child of a worker (delivery process, scheduler) which worker started it.
PARENT_PID_ENV = "POSTBACK_WORKER_PID"


def main(command: Callable[[Settings], int]) -> int:
    """Run `command` with the settings of the environment; a bad setting or an
    unreachable Redis is one line on stderr and an exit status (2, 1)."""
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    try:
        return command(settings)
    except RedisNotFound as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
        if found is None:
            raise
        print(f"postback: {found.detail}", file=sys.stderr)
        return 1


def work(settings: Settings, *, burst: bool = False) -> int:
    """Run one worker (jobs, with its delivery and scheduler processes) until stopped."""
    from worker.process import run

    configure_logging(settings.log_level)
    target = redis_target(settings)
    run(
        settings,
        connect(target, timeout_seconds=settings.redis_timeout_seconds),
        target=target,
        queue_client=connect(target, timeout_seconds=settings.redis_timeout_seconds, blocking=True),
        burst=burst,
    )
    return 0


def deliver(settings: Settings) -> int:
    """Run one delivery process until stopped (it stops with the worker that started it)."""
    if _orphaned_child():
        return 0
    from worker.process import deliver as run

    configure_logging(settings.log_level)
    client = connect(redis_target(settings), timeout_seconds=settings.redis_timeout_seconds)
    return run(settings, client)


def schedule(settings: Settings) -> int:
    """Run a worker's RQ scheduler until stopped (it stops with the worker that started it)."""
    if _orphaned_child():
        return 0
    from worker import scheduler

    configure_logging(settings.log_level)
    client = connect(redis_target(settings), timeout_seconds=settings.redis_timeout_seconds)
    return scheduler.run(settings, client)


def _orphaned_child() -> bool:
    """Started by a worker: die with it from now on; True if it is already gone."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return False
    die_with_parent()
    return orphaned(int(parent))
