"""Scripts sent in batches: one pipeline for the calls of one turn, each caller its own answer."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import redis
import redis.asyncio

from postback import lua

ECHO = lua.Script("return ARGV[1]")
FAIL_ON_BAD = lua.Script(
    "if ARGV[1] == 'bad' then return redis.error_reply('ERR bad input') end return ARGV[1]"
)
INCR = lua.Script("return redis.call('INCR', KEYS[1])")


class CountingBatch(lua.Batch):
    """A batch that counts the pipelines it sends (and their sizes)."""

    def __init__(self, client: redis.asyncio.Redis, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.pipelines: list[int] = []

    async def _execute(self, calls: list) -> list[Any]:
        self.pipelines.append(len(calls))
        return await super()._execute(calls)


def _run(redis_client: redis.Redis, work: Any) -> Any:
    async def main() -> Any:
        client = redis.asyncio.Redis(**redis_client.connection_pool.connection_kwargs)
        try:
            return await work(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_calls_of_one_turn_go_out_together_and_each_gets_its_reply(redis_client):
    async def work(client):
        await client.script_load(ECHO.source)
        batch = CountingBatch(client, max_calls=100)
        replies = await asyncio.gather(*(ECHO.arun(batch, [], [str(i)]) for i in range(250)))
        return batch.pipelines, replies

    pipelines, replies = _run(redis_client, work)
    assert replies == [str(i).encode() for i in range(250)]
    assert pipelines == [100, 100, 50]


def test_an_error_reply_goes_to_its_caller_only(redis_client):
    async def work(client):
        batch = lua.Batch(client)
        return await asyncio.gather(
            *(FAIL_ON_BAD.arun(batch, [], [arg]) for arg in ("a", "bad", "c")),
            return_exceptions=True,
        )

    first, failed, last = _run(redis_client, work)
    assert (first, last) == (b"a", b"c")
    assert isinstance(failed, redis.ResponseError)
    assert "bad input" in str(failed)


def test_scripts_the_server_forgot_are_loaded_again_and_run_once(redis_client):
    redis_client.delete("lua-test:count")

    async def work(client):
        batch = lua.Batch(client)
        assert await INCR.arun(batch, ["lua-test:count"], []) == 1
        await client.script_flush()
        return await asyncio.gather(
            INCR.arun(batch, ["lua-test:count"], []), ECHO.arun(batch, [], ["x"])
        )

    assert _run(redis_client, work) == [2, b"x"]
    assert redis_client.get("lua-test:count") == b"2"


def test_a_caller_that_gives_up_does_not_disturb_the_others(redis_client):
    redis_client.delete("lua-test:count")

    async def work(client):
        batch = lua.Batch(client)
        waiting = asyncio.ensure_future(INCR.arun(batch, ["lua-test:count"], []))
        others = asyncio.ensure_future(
            asyncio.gather(*(ECHO.arun(batch, [], [str(i)]) for i in range(3)))
        )
        await asyncio.sleep(0)
        waiting.cancel()
        replies = await others
        await batch.aclose()
        return waiting.cancelled(), replies

    cancelled, replies = _run(redis_client, work)
    assert cancelled
    assert replies == [b"0", b"1", b"2"]
    # The call was sent all the same, as a command already written would be.
    assert redis_client.get("lua-test:count") == b"1"


def test_a_connection_that_fails_fails_every_call_in_its_pipeline():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]

    async def main():
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, socket_connect_timeout=2)
        try:
            batch = lua.Batch(client)
            return await asyncio.gather(
                *(ECHO.arun(batch, [], [str(i)]) for i in range(5)), return_exceptions=True
            )
        finally:
            await client.aclose()

    replies = asyncio.run(main())
    assert len(replies) == 5
    assert all(isinstance(r, redis.ConnectionError) for r in replies)


@pytest.mark.parametrize("count", [1, 3])
def test_aclose_waits_for_what_is_queued(redis_client, count):
    redis_client.delete("lua-test:count")

    async def work(client):
        batch = lua.Batch(client)
        futures = [batch.call(INCR, ["lua-test:count"], []) for _ in range(count)]
        await batch.aclose()
        return [f.result() for f in futures]

    assert _run(redis_client, work) == list(range(1, count + 1))


def test_attempts_that_start_together_read_the_owners_secrets_once(redis_client):
    from callbacks.secrets import SecretStore
    from callbacks.signing import generate_secret

    store = SecretStore(redis_client)
    secret = generate_secret()
    store.set("ptn_together", secret)

    def hmget_calls() -> int:
        return int(redis_client.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))

    async def work(client):
        store.aredis = client
        before = hmget_calls()
        found = await asyncio.gather(*(store.asigning_secrets("ptn_together") for _ in range(50)))
        return found, hmget_calls() - before

    found, reads = _run(redis_client, work)
    assert found == [[secret]] * 50
    assert reads == 1
