"""Naming Redis faults: each server condition is classified by name, other errors are not."""

from __future__ import annotations

import logging

import pytest
import redis
from redis._parsers.base import BaseParser

from postback.faults import Cause, FaultWatch, classify, fault, pause_seconds


def reply(text: str) -> redis.RedisError:
    """The exception redis-py raises for the error reply `text` (its own parser)."""
    return BaseParser.parse_error(text)


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (reply("LOADING Valkey is loading the dataset in memory"), Cause.LOADING),
        (reply("MISCONF Valkey is configured to save RDB snapshots, but …"), Cause.MISCONF),
        (reply("BUSY Valkey is busy running a script."), Cause.BUSY),
        (reply("READONLY You can't write against a read only replica."), Cause.READONLY),
        (reply("OOM command not allowed when used memory > 'maxmemory'."), Cause.OOM),
        (reply("MASTERDOWN Link with MASTER is down"), Cause.MASTERDOWN),
        (reply("NOREPLICAS Not enough good replicas to write."), Cause.NOREPLICAS),
        (reply("NOAUTH Authentication required."), Cause.AUTH),
        (reply("WRONGPASS invalid username-password pair"), Cause.AUTH),
        (redis.ConnectionError("Error 111 connecting. Connection refused."), Cause.UNREACHABLE),
        (redis.TimeoutError("Timeout reading from socket"), Cause.TIMEOUT),
    ],
)
def test_each_server_condition_is_named(error, cause):
    """Every fault redis-py reports for a server condition maps to its cause."""
    assert classify(error, timeout_seconds=2).cause == cause


def test_a_fault_inside_a_pipeline_is_named_by_its_code():
    """A plain error reply that redis-py annotated with its pipeline command keeps its name."""
    error = redis.ResponseError(
        "Command # 2 (SET pb:job:x 1) of pipeline caused error: MISCONF Valkey is configured"
    )
    assert classify(error, timeout_seconds=2).cause == Cause.MISCONF


@pytest.mark.parametrize(
    "error",
    [
        reply("WRONGTYPE Operation against a key holding the wrong kind of value"),
        reply("ERR Error running script (call to f_1): @user_script:1: bad"),
        redis.ResponseError("MISCONFIGURED is not a code"),
        redis.DataError("Invalid input of type: 'dict'"),
        ValueError("not Redis at all"),
    ],
)
def test_errors_that_are_not_faults_are_not_named(error):
    """A bug (a wrong type, a failing script, bad input) is no fault of the server."""
    assert classify(error, timeout_seconds=2) is None


def test_details_name_the_cause_and_the_timeout():
    """A timeout's detail says how long was waited; the others end with the server's code."""
    assert fault(Cause.TIMEOUT, timeout_seconds=1.5).detail == (
        "the job store did not answer within 1.5 s"
    )
    assert fault(Cause.READONLY, timeout_seconds=2).detail.endswith("(READONLY)")
    assert all(fault(c, timeout_seconds=2).retry_after_seconds > 0 for c in Cause)


def test_a_watch_logs_each_change_once(caplog):
    """Repeated failures log one line per cause, and a recovery one line, once."""
    watch = FaultWatch("reaper")
    timeout = fault(Cause.TIMEOUT, timeout_seconds=2)
    with caplog.at_level(logging.INFO, logger="postback.faults"):
        for _ in range(5):
            watch.failed(timeout)
        watch.failed(fault(Cause.OOM, timeout_seconds=2))
        watch.failed(fault(Cause.OOM, timeout_seconds=2))
        watch.recovered()
        watch.recovered()
    logged = [(r.levelname, getattr(r, "redis_fault", None)) for r in caplog.records]
    assert logged == [("WARNING", "timeout"), ("WARNING", "oom"), ("INFO", None)]
    assert caplog.records[-1].redis_recovered_after_seconds >= 0
    assert not watch.failing and watch.failures == 0


def test_pauses_grow_and_stay_bounded():
    """The pause after failures doubles from a quarter second and never passes its cap."""
    assert pause_seconds(1) <= 0.25
    assert all(pause_seconds(n, max_seconds=5) <= 5 for n in range(1, 40))
    assert pause_seconds(10, max_seconds=5) >= 2.5


def test_a_process_without_a_free_connection_is_named_overloaded(redis_url):
    """When every pooled connection is busy past the timeout, the fault is `overloaded`."""
    from postback.connection import connect

    client = connect(redis_url, timeout_seconds=0.2, max_connections=1)
    held = client.connection_pool.get_connection()
    try:
        with pytest.raises(redis.ConnectionError) as raised:
            client.ping()
        found = classify(raised.value, timeout_seconds=0.2)
        assert found.cause == Cause.OVERLOADED and "too many requests" in found.detail
    finally:
        client.connection_pool.release(held)
    assert client.ping()
    client.close()
