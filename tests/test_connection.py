"""Redis clients: every one the system makes has POSTBACK_REDIS_TIMEOUT_SECONDS, and fails fast."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from rq import SimpleWorker

from app import cli, create_app
from postback.connection import async_twin, call, connect
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


# A GET through redis-py's own path, and through the short one the API's scripts take.
READS = {
    "execute_command": lambda client: client.get("kept"),
    "call": lambda client: call(client, "GET", "kept"),
}


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_a_frozen_server_costs_one_timeout_not_several(server, read):
    """A command to a SIGSTOPped server raises TimeoutError after one timeout (no retries)."""
    client = connect(server.url, timeout_seconds=0.5, max_connections=4)
    assert client.ping()
    with server.frozen():
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            read(client)
        elapsed = time.monotonic() - started
    # One 0.5 s timeout; retried ones would add up to several.
    assert elapsed < 2.5
    # The connection that timed out was closed, not given back with a reply pending.
    client.set("kept", "after")
    assert read(client) == b"after"


@pytest.mark.parametrize("read", READS.values(), ids=READS.keys())
def test_a_restarted_server_is_reached_again_by_the_next_command(server, read):
    """After Redis restarts, the next command goes through on a fresh connection."""
    client = connect(server.url, timeout_seconds=1.0, max_connections=4)
    client.set("kept", "1")
    assert read(client) == b"1"  # the pooled connection now predates the restart
    server.restart()
    assert read(client) == b"1"


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


def _waiting(pool_queue, tenant: str) -> int:
    return len(pool_queue._lines.get(tenant, ()))


def test_callers_short_of_connections_are_served_a_tenant_at_a_time():
    import queue
    import threading

    from postback.connection import FairQueue, on_behalf_of

    idle = FairQueue(4)
    served: list[str] = []
    lock = threading.Lock()

    def take(tenant: str) -> None:
        with on_behalf_of(tenant):
            item = idle.get(timeout=30)
        with lock:
            served.append(f"{tenant}:{item}")

    flood = [threading.Thread(target=take, args=("a",)) for _ in range(5)]
    for thread in flood:
        thread.start()
    deadline = time.monotonic() + 30
    while _waiting(idle, "a") < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    other = threading.Thread(target=take, args=("b",))
    other.start()
    while _waiting(idle, "b") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    for number in range(6):
        idle.put_nowait(number)
        while len(served) <= number and time.monotonic() < deadline:
            time.sleep(0.01)
    for thread in [*flood, other]:
        thread.join(timeout=30)
    # b came after a's five, and was served second: one turn of a's, then b's.
    assert [entry.split(":")[0] for entry in served] == ["a", "b", "a", "a", "a", "a"]
    assert not idle._lines
    with pytest.raises(queue.Empty):
        idle.get(timeout=0.05)
    assert not idle._lines  # a caller that gave up leaves no place in line behind


def test_an_api_client_serves_commands_through_the_fair_pool(redis_url):
    from postback.connection import FairQueue, connect, on_behalf_of

    client = connect(redis_url, timeout_seconds=5, max_connections=2)
    assert isinstance(client.connection_pool.pool, FairQueue)
    with on_behalf_of("tenant-a"):
        client.set("fair:x", "1")
        with client.pipeline() as pipe:
            pipe.incr("fair:x").get("fair:x")
            assert pipe.execute() == [2, b"2"]
    assert len(client.connection_pool.pool.queue) == 2  # both back, placeholders included
    client.close()


def test_only_reads_and_repeatable_scripts_are_safe_to_send_again():
    """Reads, transactions of reads and scripts declared repeatable may be sent again after a
    broken connection; a write, a pipeline holding one or an undeclared script may not."""
    from postback import lua
    from postback.resend import safe_to_resend

    packer = redis.Connection()
    one = packer.pack_command
    guarded = lua.Script("return redis.call('GET', KEYS[1])", repeatable=True)
    plain = lua.Script("return redis.call('INCR', KEYS[1])")
    assert safe_to_resend(one("GET", "k"))
    assert safe_to_resend(one("CLIENT", "SETNAME", "x"))
    assert safe_to_resend(packer.pack_commands([("MULTI",), ("HGETALL", "h"), ("EXEC",)]))
    assert safe_to_resend(one("EVALSHA", guarded.sha, 1, "k"))
    assert safe_to_resend(one("EVAL", guarded.source, 1, "k"))
    assert not safe_to_resend(one("INCR", "k"))
    assert not safe_to_resend(one("CLIENT", "KILL", "ID", "7"))
    assert not safe_to_resend(one("EVALSHA", plain.sha, 1, "k"))
    assert not safe_to_resend(packer.pack_commands([("GET", "k"), ("SET", "k", "v")]))
    assert not safe_to_resend(b"not RESP")


class CuttingProxy:
    """A TCP proxy to a Redis server that, once armed with a command's bytes, lets the next
    such command through and cuts its connection as the reply comes back: the command ran,
    its caller never hears so."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.marker: bytes | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            cut = threading.Event()
            threading.Thread(target=self._up, args=(client, server, cut), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, cut), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if self.marker is not None and self.marker in data:
                    self.marker = None
                    cut.set()
                server.sendall(data)

    def _down(self, server: socket.socket, client: socket.socket, cut: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := server.recv(65536):
                if cut.is_set():
                    break
                client.sendall(data)
        for end in (client, server):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize(
    ("command", "resent"), [(("GET", "n"), True), (("INCR", "n"), False)], ids=["GET", "INCR"]
)
def test_a_command_whose_reply_is_lost_is_sent_again_only_if_safe(
    redis_url, redis_client, command, resent
):
    """A read whose connection breaks before its reply is sent once more on a fresh
    connection and answered; a write that ran (an INCR) raises ReplyLost and runs once."""
    from postback.resend import ReplyLost

    parts = urlsplit(redis_url)
    proxy = CuttingProxy(parts.port or 6379)
    client = connect(
        parts._replace(netloc=f":{parts.password}@127.0.0.1:{proxy.port}").geturl(),
        timeout_seconds=5,
    )
    try:
        client.set("n", "1")
        proxy.marker = f"${len(command[0])}\r\n{command[0]}\r\n".encode()
        if resent:
            assert client.execute_command(*command) == b"1"
        else:
            with pytest.raises(ReplyLost):
                client.execute_command(*command)
            assert redis_client.get("n") == b"2"  # it ran, once
        assert proxy.marker is None  # the connection was cut
        assert client.ping()  # the next command goes through on a fresh connection
    finally:
        client.close()
        proxy.close()
