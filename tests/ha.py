"""An HA set for tests: a primary, replicas and three Sentinels, real processes (`postback.ha`)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
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
        quicken(ha)
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


# The tests' Sentinels' periods (`SENTINEL DEBUG`), in ms: each member's INFO read every
# second (Sentinel's own: 10 s), hello messages every 0.5 s (its own: 2 s; a restarted
# former primary is made a replica once it has answered as one for four of these).
QUICK_PERIODS = {"info-period": 1000, "publish-period": 500}


def quicken(ha: HaSet) -> None:
    """Have each running Sentinel of `ha` read its members' INFO every second and say hello
    every 0.5 s (`QUICK_PERIODS`): a restarted former primary is made a replica within
    seconds, not 10 to 20. How soon a primary counts as down, and the failover, are
    unchanged."""
    periods = [part for pair in QUICK_PERIODS.items() for part in pair]
    for address in ha.sentinels():
        client = redis.Redis(*address, password=ha.sentinel_password, socket_timeout=5)
        try:
            client.execute_command("SENTINEL", "DEBUG", *periods)
        except redis.ConnectionError:
            pass  # not running (a test killed it): a restarted Sentinel has the default
        finally:
            client.close()


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
