"""A webhook receiver for benchmarks, run as its own process so it does not share our GIL.

    python -m bench.receiver --ports 9001,9005-9010 [--delay 0.2] [--status 204]
        [--hang-ports 9003] [--trickle-ports 9004 --trickle-interval 1.0]
        [--fail-seconds 5] [--path-status /a=500,/b=200] [--log FILE] [--max-seconds 3600]

One asyncio process serves every port (1,000+ ports, about 1,000 requests/s),
listening on 127.0.0.1 only with a backlog of 1024, HTTP/1.1 with persistent
connections (pipelined requests are answered in order). A request is its
request line, its headers and a Content-Length body (any method; a chunked
body is answered 501 and the connection closed). Port lists are comma-separated
ports or ranges: "9001,9005-9010".

- A normal port (`--ports`) answers after `--delay` seconds: 500 during the first
  `--fail-seconds` after "ready" (every path), then the `--path-status` of the
  request's path (without its query) if it has one, else `--status` (204).
- A hang port reads each request and never answers; the connection stays open
  until the client closes it.
- A trickle port answers a request with "HTTP/1.1 200 OK\\r\\n" then endless header
  lines ("X-Slow: aaaa...\\r\\n"), one byte every `--trickle-interval` seconds, never
  finishing.

With `--log FILE`, each answer with a 2xx status appends, as it is written, the
line "<time.monotonic()> <port> <path> <webhook-id header or ->" to FILE (one
unbuffered write per line). Prints "ready" on stdout once every port listens;
exits with status 0 on SIGTERM, SIGINT or after `--max-seconds`.

`Server`, a threaded http.server, is kept for the in-process receiver of the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import ThreadingHTTPServer

BACKLOG = 1024
HOST = "127.0.0.1"
# A request head (request line and headers) longer than this is answered 431.
MAX_HEAD_BYTES = 64 * 1024
# Unanswered pipelined bytes kept per connection before reading pauses.
MAX_BUFFERED_BYTES = 1024 * 1024
# What a trickle port sends after its status line, cycled for ever, one byte at a time.
TRICKLE_LINE = b"X-Slow: " + b"a" * 54 + b"\r\n"
TRICKLE_STATUS = b"HTTP/1.1 200 OK\r\n"


class Server(ThreadingHTTPServer):
    """A threaded http.server on the receiver's listen backlog (used by tests/receiver.py)."""

    daemon_threads = True
    # The listen backlog, read when the server binds: the default of 5 drops the
    # connections of a burst of deliveries, as a production receiver would not.
    request_queue_size = 1024


def parse_ports(text: str) -> list[int]:
    """The ports of "9001,9005-9010" in order, without repeats; "" gives [].

    Raises ValueError on anything but ports 1-65535 and ascending ranges of them.
    """
    ports: dict[int, None] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        first, dash, last = item.partition("-")
        low = int(first)
        high = int(last) if dash else low
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"bad port or range {item!r}")
        ports.update(dict.fromkeys(range(low, high + 1)))
    return list(ports)


def parse_path_status(text: str) -> dict[str, int]:
    """{path: status} of "/a=500,/b=200"; "" gives {}. Raises ValueError when malformed."""
    statuses: dict[str, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        path, equals, status = item.rpartition("=")
        if not equals or not path.startswith("/") or not 100 <= int(status) <= 999:
            raise ValueError(f"bad path=status {item!r}")
        statuses[path] = int(status)
    return statuses


def status_line(status: int) -> bytes:
    """The response's status line for `status` (a reason phrase when it has a known one)."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Status"
    return b"HTTP/1.1 %d %s\r\n" % (status, reason.encode())


def response(status: int, *, close: bool) -> bytes:
    """A bodiless response: `content-length: 0` except for 1xx/204/304, which must not send it."""
    head = status_line(status)
    if not (status < 200 or status in (204, 304)):
        head += b"content-length: 0\r\n"
    if close:
        head += b"connection: close\r\n"
    return head + b"\r\n"


def raise_open_files_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (best effort); the soft limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:
            with open("/proc/sys/fs/nr_open") as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            target = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Config:
    """How the ports answer (see the module docstring)."""

    delay: float = 0.0
    status: int = 204
    fail_seconds: float = 0.0
    path_status: dict[str, int] = field(default_factory=dict)
    trickle_interval: float = 1.0
    log_fd: int | None = None
    # time.monotonic() when every port listens: the start of the --fail-seconds window.
    started: float = 0.0

    def status_for(self, path: str) -> int:
        """The status a normal port answers for `path` now."""
        if self.fail_seconds > 0 and time.monotonic() - self.started < self.fail_seconds:
            return 500
        return self.path_status.get(path, self.status)


@dataclass(frozen=True)
class Request:
    """What a connection needs of a parsed request to answer it."""

    path: str
    webhook_id: str
    keep_alive: bool


class ParseError(Exception):
    """A request this receiver will not serve: answered with `status` and the connection closed."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def parse_head(head: bytes) -> tuple[Request, int, bool]:
    """(request, content length, expects 100-continue) of a request head without its blank line.

    Raises ParseError (400, 501) for a malformed or unsupported head.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise ParseError(400)
    target = parts[1].decode("latin-1")
    http10 = parts[2] == b"HTTP/1.0"
    length: int | None = None
    connection = b""
    webhook_id = "-"
    expect = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ParseError(400)
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ParseError(400)
            length = int(value)
        elif name == b"transfer-encoding":
            raise ParseError(501)
        elif name == b"connection":
            connection = value.lower()
        elif name == b"webhook-id":
            webhook_id = value.decode("latin-1") or "-"
        elif name == b"expect":
            expect = value.lower() == b"100-continue"
    if "://" in target:  # absolute-form: keep its path
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    path = target.partition("?")[0] or "/"
    # Spaces (or newlines) in a log field would shift the fields after it.
    webhook_id = "".join(webhook_id.split()) or "-"
    keep_alive = b"keep-alive" in connection if http10 else b"close" not in connection
    return Request(path, webhook_id, keep_alive), length or 0, expect


class Connection(asyncio.Protocol):
    """One client connection to one port: parses requests, answers them in order.

    `mode` is "normal", "hang" or "trickle". Reading pauses while more than
    MAX_BUFFERED_BYTES of pipelined requests wait for an answer; a hang or
    trickle connection discards whatever the client sends after its request.
    """

    def __init__(self, port: int, mode: str, config: Config, live: set[Connection]) -> None:
        self.port = port
        self.mode = mode
        self.config = config
        self.live = live
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[Request, int] | None = None  # parsed head whose body is being read
        self.body_left = 0
        self.busy = False  # an answer is due (delayed) or being trickled
        self.discard = False  # the connection will not answer anything more
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.trickled = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.discard:
            return
        self.buffer += data
        self.process()

    def process(self) -> None:
        """Parse what is buffered until a request waits for its answer or more bytes are needed."""
        transport = self.transport
        while transport is not None and not self.busy and not self.discard:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end > MAX_HEAD_BYTES or (end < 0 and len(self.buffer) > MAX_HEAD_BYTES):
                    self.fail(431)
                    break
                if end < 0:
                    break
                # Blank lines before a request line are to be ignored (RFC 9112 2.2).
                head = bytes(self.buffer[:end]).lstrip(b"\r\n")
                del self.buffer[: end + 4]
                if not head:
                    continue
                try:
                    request, length, expect = parse_head(head)
                except ParseError as error:
                    self.fail(error.status)
                    break
                self.head = (request, length)
                self.body_left = length
                if expect and length > len(self.buffer) and self.mode == "normal":
                    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            taken = min(self.body_left, len(self.buffer))
            if taken:
                del self.buffer[:taken]
                self.body_left -= taken
            if self.body_left:
                break
            request = self.head[0]
            self.head = None
            self.answer(request)
        self.flow_control()

    def flow_control(self) -> None:
        """Pause reading while too much waits unanswered; resume when it has been served."""
        if self.transport is None:
            return
        if not self.paused and self.busy and len(self.buffer) > MAX_BUFFERED_BYTES:
            self.paused = True
            self.transport.pause_reading()
        elif self.paused and (not self.busy or self.discard):
            self.paused = False
            self.transport.resume_reading()

    def fail(self, status: int) -> None:
        """Answer a request this receiver will not serve, and close."""
        self.discard = True
        self.buffer.clear()
        if self.transport is not None:
            self.transport.write(response(status, close=True))
            self.transport.close()

    def answer(self, request: Request) -> None:
        """Start answering `request` as the port's mode says."""
        if self.mode == "hang":
            self.discard = True
            self.buffer.clear()
            return
        if self.mode == "trickle":
            self.discard = True
            self.buffer.clear()
            self.busy = True
            self.trickle()
            return
        self.busy = True
        if self.config.delay > 0:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.config.delay, self.respond, request)
        else:
            self.respond(request)

    def respond(self, request: Request) -> None:
        """Write the answer of a normal port, log it if 2xx, then go on with the next request."""
        self.timer = None
        self.busy = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        status = self.config.status_for(request.path)
        transport.write(response(status, close=not request.keep_alive))
        if 200 <= status < 300 and self.config.log_fd is not None:
            line = f"{time.monotonic():.6f} {self.port} {request.path} {request.webhook_id}\n"
            os.write(self.config.log_fd, line.encode())
        if not request.keep_alive:
            self.discard = True
            self.buffer.clear()
            transport.close()
            return
        if self.buffer:
            self.process()
        else:
            self.flow_control()

    def trickle(self) -> None:
        """Send the next byte of the endless trickle answer; again in `trickle_interval`."""
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        sent = self.trickled
        if sent < len(TRICKLE_STATUS):
            byte = TRICKLE_STATUS[sent : sent + 1]
        else:
            at = (sent - len(TRICKLE_STATUS)) % len(TRICKLE_LINE)
            byte = TRICKLE_LINE[at : at + 1]
        transport.write(byte)
        self.trickled = sent + 1
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.config.trickle_interval, self.trickle)


async def serve(
    modes: dict[int, str], config: Config, *, max_seconds: float, ready: Callable[[], None]
) -> None:
    """Listen on every port of `modes` ({port: mode}), call `ready`, serve until stopped.

    Returns on SIGTERM, SIGINT or after `max_seconds`, with every listener and
    connection closed.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, stop.set)
    live: set[Connection] = set()
    servers: list[asyncio.Server] = []

    def factory(port: int, mode: str) -> Callable[[], Connection]:
        return lambda: Connection(port, mode, config, live)

    try:
        for port, mode in modes.items():
            servers.append(
                await loop.create_server(
                    factory(port, mode), HOST, port, backlog=BACKLOG, reuse_address=True
                )
            )
        config.started = time.monotonic()
        ready()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)
    finally:
        for server in servers:
            server.close()
        for connection in list(live):
            if connection.transport is not None:
                connection.transport.abort()
        await asyncio.sleep(0)


def main(argv: list[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.receiver", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--ports", default="", help="normal ports: 9001,9005-9010")
    parser.add_argument("--hang-ports", default="", help="ports that never answer")
    parser.add_argument("--trickle-ports", default="", help="ports that answer a byte at a time")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before an answer")
    parser.add_argument("--status", type=int, default=204, help="status of normal ports")
    parser.add_argument("--trickle-interval", type=float, default=1.0, help="seconds per byte")
    parser.add_argument("--fail-seconds", type=float, default=0.0, help="answer 500 this long")
    parser.add_argument("--path-status", default="", help="per-path status: /a=500,/b=200")
    parser.add_argument("--log", default=None, help="file for one line per 2xx answer")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long")
    args = parser.parse_args(argv)

    modes: dict[int, str] = {}
    try:
        for option, mode in (
            (args.ports, "normal"),
            (args.hang_ports, "hang"),
            (args.trickle_ports, "trickle"),
        ):
            for port in parse_ports(option):
                if port in modes:
                    parser.error(f"port {port} is given twice")
                modes[port] = mode
        path_status = parse_path_status(args.path_status)
    except ValueError as error:
        parser.error(str(error))
    if not modes:
        parser.error("no ports: give --ports, --hang-ports or --trickle-ports")
    if not 100 <= args.status <= 999:
        parser.error("--status must be 100-999")
    if args.delay < 0 or args.trickle_interval <= 0 or args.max_seconds <= 0:
        parser.error("--delay must be >= 0, --trickle-interval and --max-seconds > 0")

    limit = raise_open_files_limit()
    if limit != resource.RLIM_INFINITY and limit < len(modes) + 64:
        parser.error(f"{len(modes)} ports need more open files than the limit of {limit}")
    log_fd = None
    if args.log:
        log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    config = Config(
        delay=args.delay,
        status=args.status,
        fail_seconds=args.fail_seconds,
        path_status=path_status,
        trickle_interval=args.trickle_interval,
        log_fd=log_fd,
    )

    def ready() -> None:
        print("ready", flush=True)

    try:
        asyncio.run(serve(modes, config, max_seconds=args.max_seconds, ready=ready))
    except OSError as error:  # a port already in use, mostly
        print(f"receiver: {error}", file=sys.stderr)
        sys.exit(1)
    finally:
        if log_fd is not None:
            os.close(log_fd)


if __name__ == "__main__":
    main()
