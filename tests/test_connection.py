"""Redis clients: every one the system makes has POSTBACK_REDIS_TIMEOUT_SECONDS, and fails fast."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import redis
from rq import SimpleWorker

from app import cli, create_app
from postback.connection import async_twin, connect
from postback.settings import Settings
from tests.processes import OwnRedis, own_redis
from worker.process import queues


@pytest.fixture
def server(data_dir: Path) -> Iterator[OwnRedis]:
    with own_redis(data_dir / "store") as own:
        yield own


def timeouts(client: redis.Redis) -> tuple[float | None, float | None]:
    kwargs = client.connection_pool.connection_kwargs
    return kwargs["socket_connect_timeout"], kwargs["socket_timeout"]


def test_the_timeout_setting_is_read_from_the_environment():
    """POSTBACK_REDIS_TIMEOUT_SECONDS sets the Redis timeout; unset it is 2 s."""
    assert Settings.from_env({}).redis_timeout_seconds == 2.0
    assert Settings.from_env({"POSTBACK_REDIS_TIMEOUT_SECONDS": "0.5"}).redis_timeout_seconds == 0.5


def test_every_client_the_system_makes_has_the_timeout(settings, redis_url):
    """The API's, the command line's, the worker's and the delivery loop's clients connect
    and wait at most the configured timeout; RQ's queue client waits longer than its BLMOVE."""
    configured = replace(settings, redis_timeout_seconds=1.5)
    app = create_app(asdict(configured))
    assert timeouts(app.extensions["postback"].redis) == (1.5, 1.5)
    assert timeouts(cli._client(configured)) == (1.5, 1.5)
    short = connect(redis_url, timeout_seconds=1.5)
    twin = async_twin(short, max_connections=1)()
    assert (
        twin.connection_pool.connection_kwargs["socket_connect_timeout"],
        twin.connection_pool.connection_kwargs["socket_timeout"],
    ) == (1.5, 1.5)
    asyncio.run(twin.aclose())
    blocking = connect(redis_url, timeout_seconds=1.5, blocking=True)
    worker = SimpleWorker(queues(blocking), connection=blocking)
    connect_timeout, read_timeout = timeouts(blocking)
    assert connect_timeout == 1.5 and read_timeout > worker.dequeue_timeout


def test_a_frozen_server_costs_one_timeout_not_several(server):
    """A command to a SIGSTOPped server raises TimeoutError after one timeout (no retries)."""
    client = connect(server.url, timeout_seconds=0.5)
    assert client.ping()
    with server.frozen():
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            client.get("x")
        elapsed = time.monotonic() - started
    # One 0.5 s timeout; retried ones would add up to several.
    assert elapsed < 2.5


def test_a_restarted_server_is_reached_again_by_the_next_command(server):
    """After Redis restarts, the next command goes through on a fresh connection."""
    client = connect(server.url, timeout_seconds=1.0)
    client.set("kept", "1")
    server.restart()
    assert client.get("kept") == b"1"


def test_asyncio_clients_pack_every_kind_of_argument_as_redis_py_does(redis_client):
    from postback.connection import async_twin

    async def main():
        client = async_twin(redis_client, max_connections=2)()
        try:
            await client.delete("packed:h")
            await client.hset("packed:h", mapping={"s": "é", "b": b"\x00\xff", "i": 10**20})
            await client.hincrbyfloat("packed:h", "f", 0.1 + 0.2)
            config = await client.config_get("maxmemory")  # a command of two words
            with pytest.raises(redis.DataError):
                await client.set("packed:bool", True)  # refused as redis-py refuses it
            return await client.hgetall("packed:h"), config
        finally:
            await client.aclose()

    stored, config = asyncio.run(main())
    assert stored == {
        b"s": "é".encode(),
        b"b": b"\x00\xff",
        b"i": b"100000000000000000000",
        b"f": b"0.30000000000000004",
    }
    assert "maxmemory" in {k.decode() if isinstance(k, bytes) else k for k in config}
