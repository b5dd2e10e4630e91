"""An HA set for tests: a primary, replicas and three Sentinels, real processes (`postback.ha`)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from redis.sentinel import Sentinel

from postback.ha import SERVICE, HaSet
from postback.ha_view import Member, Role
from tests.processes import eventually, kill_valkeys, valkey_pids, wait_gone


@contextlib.contextmanager
def ha_set(data_dir: Path, *, replicas: int = 2, service: str = SERVICE) -> Iterator[HaSet]:
    """A running HA set with its files under `data_dir/redis/`, stopped whatever the test did.

    Yielded ready: the Sentinels name the same primary, which answers as one; each
    Sentinel knows every replica and the other two; every replica's link is up. So a
    primary killed at once is replaced (the Sentinels' `down-after-milliseconds` is
    `postback.ha.DOWN_AFTER_MILLISECONDS`).

    Reach it as clients do with `sentinel(ha)` (`discover_master(ha.service)`,
    `master_for(ha.service)`); `member(ha, name)` is one member now; `kill(ha, name)`
    SIGKILLs one; `ha.restart_dead()` starts again those that died, as `postback up`
    does. At the end every valkey-server of `data_dir` is gone, members a test
    SIGSTOPped or killed included.
    """
    ha = HaSet(data_dir, replicas=replicas, service=service)
    try:
        ha.start()
        eventually(
            lambda: all(m.link_up for m in ha.members() if m.role == Role.REPLICA),
            timeout_seconds=30,
            what="every replica's link up",
        )
        yield ha
    finally:
        for pid in valkey_pids(data_dir):  # a frozen member would not hear SIGTERM
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        ha.stop(wait_seconds=5.0)
        kill_valkeys(data_dir)


def sentinel(ha: HaSet, **connection: Any) -> Sentinel:
    """A redis-py Sentinel client of `ha`, with both passwords; `connection` goes to the
    data members' connections (timeouts, say)."""
    options = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0, **connection}
    return Sentinel(
        ha.sentinels(),
        sentinel_kwargs={"password": ha.sentinel_password, "socket_timeout": 2.0},
        password=ha.data_password,
        **options,
    )


def member(ha: HaSet, name: str) -> Member:
    """The member `name` of `ha` as it is now."""
    return next(m for m in ha.members() if m.name == name)


def kill(ha: HaSet, name: str) -> int:
    """SIGKILL the member `name` and wait until it is gone; its pid."""
    pid = member(ha, name).pid
    assert pid is not None, f"{name} is not running"
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], 10.0) == []
    return pid
