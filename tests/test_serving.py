"""The API server with real sockets: long-polls, slow and idle clients cost no one else a thing."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import aiohttp
import pytest
import requests

from app.serving import SEND_PIECE_BYTES, Pieces
from app.waits import waits_key
from postback.embedded import free_port
from tests.processes import POSTBACK, cli_env, eventually, stop_process
from worker import feed

# Generous: these bound a wait for something that happens within a second or two.
SETTLE_SECONDS = 20.0


@dataclass
class Served:
    """A running `postback serve`; `get` and `post` keep no connection alive (one left open,
    its response not yet collected, would hold an API process for the whole graceful
    timeout when the server stops)."""

    base: str
    port: int
    process: subprocess.Popen | None = None

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.base + path, **_closing(kwargs))

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.base + path, **_closing(kwargs))


def _closing(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` of a request with the settle timeout and `Connection: close` added."""
    headers = {"Connection": "close", **kwargs.pop("headers", {})}
    return {"timeout": SETTLE_SECONDS, **kwargs, "headers": headers}


@contextlib.contextmanager
def postback_serve(
    redis_url: str, *, stderr: IO[bytes] | None = None, **env: str
) -> Iterator[Served]:
    """`postback serve` on a free port of 127.0.0.1 against `redis_url`, stopped at the end."""
    port = free_port()
    process = subprocess.Popen(
        [*POSTBACK, "serve", "--port", str(port)],
        env=cli_env(REDIS_URL=redis_url, **env),
        stderr=stderr,
    )
    served = Served(f"http://127.0.0.1:{port}", port, process)

    def up() -> bool:
        assert process.poll() is None, "postback serve exited"
        with contextlib.suppress(requests.RequestException):
            return served.get("/healthz").status_code == 200
        return False

    try:
        eventually(up, timeout_seconds=SETTLE_SECONDS, what="postback serve answers /healthz")
        yield served
    finally:
        stop_process(process, grace_seconds=10)


@pytest.fixture
def served(redis_url: str) -> Iterator[Served]:
    with postback_serve(
        redis_url,
        POSTBACK_PARTNER_MAX_WAITS="1000",
        POSTBACK_RATE_LIMIT="100000/second",
        POSTBACK_API_HEADER_TIMEOUT_SECONDS="2",
        POSTBACK_API_KEEPALIVE_SECONDS="1",
    ) as server:
        yield server


def submit(served: Served, partner: dict, **body: object) -> str:
    reply = served.post(
        "/v1/jobs", json={"type": "echo", "input": {}, **body}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


async def long_polls(served: Served, partner: dict, job_id: str, count: int) -> list[dict]:
    """`count` concurrent `GET /v1/jobs/{id}?wait=30`; their answers."""
    limits = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=limits, headers=partner["headers"]) as session:

        async def one() -> dict:
            url = f"{served.base}/v1/jobs/{job_id}?wait=30"
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=60)) as reply:
                assert reply.status == 200, await reply.text()
                return await reply.json()

        return await asyncio.gather(*(one() for _ in range(count)))


def hold_waits(
    served: Served, partner: dict, job_id: str, count: int, redis_client
) -> tuple[threading.Thread, list[dict]]:
    """`count` long-polls on `job_id` from a thread, once the server counts them all open;
    the thread and the list their answers go to."""
    answers: list[dict] = []
    polling = threading.Thread(
        target=lambda: answers.extend(asyncio.run(long_polls(served, partner, job_id, count)))
    )
    polling.start()
    key = waits_key(partner["id"])
    eventually(
        lambda: redis_client.zcard(key) == count, timeout_seconds=60, what=f"{count} waits open"
    )
    return polling, answers


def test_500_long_polls_leave_the_api_free_and_all_answer_when_the_job_ends(
    served, partner, redis_client, work
):
    """With 500 long-polls open, /healthz and submissions answer; the job's end answers all 500."""
    job_id = submit(served, partner)
    polling, answers = hold_waits(served, partner, job_id, 500, redis_client)
    key = waits_key(partner["id"])

    assert served.get("/healthz").status_code == 200
    other = submit(served, partner)
    assert served.get(f"/v1/jobs/{other}", headers=partner["headers"]).status_code == 200
    assert answers == [] and redis_client.zcard(key) == 500

    work()
    polling.join(timeout=60)
    assert not polling.is_alive()
    assert [answer["status"] for answer in answers] == ["completed"] * 500
    assert redis_client.zcard(key) == 0


def test_a_partner_holds_at_most_its_share_of_waits(
    redis_url, redis_client, client, admin_headers, work
):
    """Past POSTBACK_PARTNER_MAX_WAITS a partner's next wait is a 429; another partner waits."""

    def make(name: str) -> dict:
        reply = client.post("/v1/admin/partners", json={"name": name}, headers=admin_headers)
        assert reply.status_code == 201
        return {**reply.json, "headers": {"Authorization": f"Bearer {reply.json['api_key']}"}}

    greedy, other = make("Greedy"), make("Other")
    with postback_serve(redis_url, POSTBACK_PARTNER_MAX_WAITS="2") as server:
        job_id = submit(server, greedy)
        holding, held = hold_waits(server, greedy, job_id, 2, redis_client)
        refused = server.get(f"/v1/jobs/{job_id}?wait=1", headers=greedy["headers"])
        assert refused.status_code == 429
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert "POSTBACK_PARTNER_MAX_WAITS=2" in refused.json()["detail"]
        assert refused.headers["Retry-After"]
        # Without ?wait= the same partner still reads its job.
        assert server.get(f"/v1/jobs/{job_id}", headers=greedy["headers"]).status_code == 200
        theirs = submit(server, other)
        waited = server.get(f"/v1/jobs/{theirs}?wait=1", headers=other["headers"])
        assert waited.status_code == 200 and waited.json()["status"] == "queued"
        work()
        holding.join(timeout=SETTLE_SECONDS)
        assert [answer["status"] for answer in held] == ["completed"] * 2


def trickle(port: int, stop: threading.Event) -> socket.socket:
    """A client that sends a request line, then one header line every half second."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")

    def drip() -> None:
        number = 0
        while not stop.wait(0.5):
            number += 1
            with contextlib.suppress(OSError):
                sock.sendall(b"X-Slow-%d: 1\r\n" % number)

    threading.Thread(target=drip, daemon=True).start()
    return sock


def closed_by_server(sock: socket.socket, timeout_seconds: float) -> bool:
    """Whether the server closes `sock` (end of stream or reset) within the timeout."""
    sock.settimeout(timeout_seconds)
    try:
        while chunk := sock.recv(4096):
            del chunk
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_clients_that_trickle_their_headers_are_cut_off_and_stall_no_one(served):
    """40 clients trickling header lines do not slow /healthz; each is closed at the deadline."""
    stop = threading.Event()
    slow = [trickle(served.port, stop) for _ in range(40)]
    try:
        for _ in range(5):
            assert served.get("/healthz").status_code == 200
        # The header deadline is 2 s; the trickle would go on for as long as the test.
        assert all(closed_by_server(sock, SETTLE_SECONDS) for sock in slow)
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_an_idle_kept_alive_connection_is_closed(served):
    """After its answer, a kept-alive connection that sends nothing more is closed."""
    sock = socket.create_connection(("127.0.0.1", served.port))
    idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(20)]
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(SETTLE_SECONDS)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        assert served.get("/healthz").status_code == 200
        assert closed_by_server(sock, SETTLE_SECONDS)
        assert all(closed_by_server(each, SETTLE_SECONDS) for each in idle)
    finally:
        sock.close()
        for each in idle:
            each.close()


def test_a_stop_ends_idle_kept_alive_connections_at_once(redis_url, tmp_path):
    """On SIGTERM, connections kept alive between requests are closed at once, so each API
    process exits by itself, not killed at the end of its graceful timeout, and logs no
    error."""
    log = tmp_path / "serve.log"
    with (
        log.open("wb") as stderr,
        postback_serve(
            redis_url,
            stderr=stderr,
            POSTBACK_API_WORKERS="2",
            POSTBACK_API_KEEPALIVE_SECONDS="60",
        ) as server,
    ):
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]
        try:
            for sock in idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.settimeout(SETTLE_SECONDS)
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            assert all(closed_by_server(sock, SETTLE_SECONDS) for sock in idle)
            assert server.process.wait(timeout=SETTLE_SECONDS) == 0
        finally:
            for sock in idle:
                sock.close()
    logged = log.read_text()
    # gunicorn's line for a worker that returns; one killed at the timeout has none.
    assert logged.count("Worker exiting") == 2, logged
    assert '"level": "error"' not in logged


def test_a_fresh_server_takes_a_burst_of_first_submissions(redis_url, partner):
    """32 submissions at once, the first a new API process sees, are all accepted."""
    with postback_serve(redis_url, POSTBACK_RATE_LIMIT="100000/second") as server:

        async def burst() -> list[int]:
            async with aiohttp.ClientSession(headers=partner["headers"]) as session:

                async def one() -> int:
                    body = {"type": "echo", "input": {}}
                    timeout = aiohttp.ClientTimeout(total=SETTLE_SECONDS)
                    async with session.post(
                        f"{server.base}/v1/jobs", json=body, timeout=timeout
                    ) as reply:
                        return reply.status

                return await asyncio.gather(*(one() for _ in range(32)))

        assert asyncio.run(burst()) == [202] * 32


def raw_wait(served: Served, partner: dict, job_id: str, seconds: int) -> socket.socket:
    """A long-poll sent on a socket of its own, its answer never read."""
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=SETTLE_SECONDS)
    auth = partner["headers"]["Authorization"]
    sock.sendall(
        f"GET /v1/jobs/{job_id}?wait={seconds} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth}\r\n\r\n".encode()
    )
    return sock


def test_a_wait_whose_client_hangs_up_gives_its_place_back_at_once(
    redis_url, redis_client, partner
):
    """Clients that close their long-polls free the partner's waits long before the waits end,
    so the partner's next waits are taken, not refused by the abandoned ones."""
    key = waits_key(partner["id"])
    with postback_serve(redis_url, POSTBACK_PARTNER_MAX_WAITS="3") as server:
        job_id = submit(server, partner)
        abandoned = [raw_wait(server, partner, job_id, 30) for _ in range(3)]
        eventually(
            lambda: redis_client.zcard(key) == 3,
            timeout_seconds=SETTLE_SECONDS,
            what="3 waits open",
        )
        for sock in abandoned:
            sock.close()
        eventually(
            lambda: redis_client.zcard(key) == 0,
            timeout_seconds=SETTLE_SECONDS,
            what="the abandoned waits' places given back",
        )
        waited = server.get(f"/v1/jobs/{job_id}?wait=1", headers=partner["headers"])
        assert waited.status_code == 200 and waited.json()["status"] == "queued"
        # A client that keeps its connection still gets its answer at the wait's end.
        kept = raw_wait(server, partner, job_id, 1)
        answer = kept.recv(65536).decode()
        kept.close()
        assert answer.startswith("HTTP/1.1 200"), answer
        assert redis_client.zcard(key) == 0


# -- clients that stop: a body that never arrives, an answer never taken ---------------------


@pytest.fixture
def strict(redis_url: str) -> Iterator[Served]:
    """`postback serve` that gives a body 1 s to arrive and a client 1 s to take a write."""
    with postback_serve(
        redis_url,
        POSTBACK_PARTNER_MAX_WAITS="1",
        POSTBACK_API_BODY_TIMEOUT_SECONDS="1",
        POSTBACK_API_SEND_TIMEOUT_SECONDS="1",
    ) as server:
        yield server


def answer_of(sock: socket.socket) -> str:
    """Everything the server sends on `sock` until it closes it."""
    sock.settimeout(SETTLE_SECONDS)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_body_that_stops_or_trickles_is_a_408_and_the_connection_closed(
    strict, partner, redis_client
):
    """A submission whose body stops arriving, or arrives a byte at a time, is refused
    with 408 problem+json once its time is up, the connection closed; no job is made."""
    auth = partner["headers"]["Authorization"]
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    ).encode()
    stop = threading.Event()
    stalled = socket.create_connection(("127.0.0.1", strict.port))
    trickled = socket.create_connection(("127.0.0.1", strict.port))
    try:
        stalled.sendall(head + b'{"type": "echo"')

        def drip() -> None:
            trickled.sendall(head)
            while not stop.wait(0.2):
                with contextlib.suppress(OSError):
                    trickled.sendall(b" ")

        threading.Thread(target=drip, daemon=True).start()
        for sock in (stalled, trickled):
            answer = answer_of(sock)
            assert answer.startswith("HTTP/1.1 408"), answer
            assert "application/problem+json" in answer
            assert "urn:postback:problem:request-timeout" in answer
            assert "Connection: close" in answer and "RateLimit-Remaining: " in answer
    finally:
        stop.set()
        stalled.close()
        trickled.close()
    listed = strict.get("/v1/jobs", headers=partner["headers"])
    assert listed.status_code == 200 and listed.json()["items"] == []


def fill_feed(redis_client, partner: dict, count: int, pad_bytes: int) -> None:
    """`count` events of about `pad_bytes` each in the partner's feed."""
    body = json.dumps({"type": "job.completed", "data": {"pad": "x" * pad_bytes}})
    with redis_client.pipeline(transaction=False) as pipe:
        for number in range(count):
            fields = {"webhook_id": f"msg_{number}", "type": "job.completed", "body": body}
            pipe.xadd(feed.key(partner["id"]), fields)  # type: ignore[arg-type]
        pipe.execute()


def narrow_socket(port: int) -> socket.socket:
    """A connection whose receive buffer is as small as the kernel allows."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def test_an_answer_is_written_in_pieces_each_under_the_send_timeout():
    """A socket's timeout bounds a whole write: a large answer is cut into pieces, so a
    client taking it slowly but steadily is not cut off; closing the pieces closes the
    answer (a stream's generator gives back its place)."""
    closed = []

    def answer() -> Iterator[bytes]:
        try:
            yield b"a" * (SEND_PIECE_BYTES * 3 + 10)
            yield b"small"
        finally:
            closed.append(True)

    pieces = Pieces(answer())
    sizes = [len(piece) for piece in itertools.islice(pieces, 3)]
    assert sizes == [SEND_PIECE_BYTES] * 3
    pieces.close()
    assert closed == [True]
    whole = b"".join(Pieces([b"x" * 100_000, b"y"]))
    assert whole == b"x" * 100_000 + b"y"


def test_a_stream_reader_that_stops_reading_is_disconnected_and_its_place_given_back(
    strict, partner, redis_client
):
    """A client that opens the feed's stream and takes no more of it is disconnected once
    the server's writes stall, which gives the partner's only wait place back."""
    fill_feed(redis_client, partner, 4000, 2000)
    sock = narrow_socket(strict.port)
    auth = partner["headers"]["Authorization"]
    sock.sendall(
        f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    key = waits_key(partner["id"])
    try:
        eventually(
            lambda: redis_client.zcard(key) == 1,
            timeout_seconds=SETTLE_SECONDS,
            what="the stream holds the partner's wait place",
        )
        # Nothing is read: the server's writes stall, and after 1 s the client is cut off.
        eventually(
            lambda: redis_client.zcard(key) == 0,
            timeout_seconds=SETTLE_SECONDS,
            what="the place given back",
        )
        polled = strict.get("/v1/events?wait=1", headers=partner["headers"])
        assert polled.status_code == 200
        streamed = answer_of(sock)  # what the buffers held, then the end
        assert streamed.startswith("HTTP/1.1 200") and "msg_0" in streamed
        assert "msg_3999" not in streamed
    finally:
        sock.close()
