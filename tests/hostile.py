"""Hostile HTTP receivers on 127.0.0.1: each misbehaves in one way, records what it saw, and stops.

A `Hostile` is a raw-socket server (no http.server) so that it can do what a well-behaved
server never would: trickle an answer a byte at a time, send `100 Continue` for ever, hang,
close half-way through a body, or offer a 10 MiB body. Every request it fully reads (request
line, headers, body) becomes a `Seen`, in arrival order; when the client closes or resets the
connection the receiver notices within about `interval_seconds` (or 0.05 s, whichever is less)
and stamps `closed_at` on every `Seen` of that connection.

Contract:
- One daemon thread accepts, one daemon thread serves each connection.
- A connection the receiver closes itself (`"close_mid_answer"`, `max_seconds` elapsed,
  `__exit__`) leaves `closed_at` as None: `closed_at` is only ever the client's doing.
- Every connection ends by itself `max_seconds` after it was accepted, at the latest.
- `__exit__` closes the listener and every connection and joins the threads within about 1 s.
- Requests that cannot be parsed (or any unexpected failure in a connection thread) end that
  connection and are described in `errors`, which a test can assert is empty.
"""

from __future__ import annotations

import contextlib
import itertools
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import NoReturn

MODES = frozenset(
    {
        "trickle_status",
        "trickle_headers",
        "trickle_body",
        "continue_forever",
        "hang",
        "close_mid_answer",
        "answer",
        "big_body",
    }
)
# The Content-Length that "big_body" announces and writes in full if the client reads it all.
BIG_BODY_BYTES = 10 * 1024 * 1024
# The Content-Length that "trickle_body" announces (and never comes close to writing).
TRICKLE_BODY_BYTES = 100_000_000

# The longest a thread blocks without looking at the stop flag and the connection's deadline.
_SLICE_SECONDS = 0.05
_MAX_HEAD_BYTES = 64 * 1024
_CHUNK = b"x" * (64 * 1024)
# "big_body" shrinks its send buffer so that bytes_sent stays close to what the client read.
_BIG_BODY_SNDBUF = 16 * 1024
_STATUS_LINE = b"HTTP/1.1 200 OK\r\n"
_SLOW_HEADER = b"X-Slow: "


@dataclass
class Seen:
    """One request as the receiver read it, and what became of its connection.

    `headers` has lower-case names (repeated headers joined with ", "; values decoded as UTF-8,
    else Latin-1). `arrived_at` and `closed_at` are `time.monotonic()` values: when the body's
    last byte was read, and when the client closed or reset the connection (None while it is
    open, and for good if the receiver closed it). `bytes_sent` counts the bytes of answer the
    kernel accepted for this request, headers included; it keeps growing while the receiver
    writes.
    """

    path: str
    headers: dict[str, str]
    body: bytes
    arrived_at: float
    closed_at: float | None = None
    bytes_sent: int = 0


class _Ended(Exception):
    """The connection is over: the client left, the deadline passed, or the receiver stops."""


class _BadRequest(Exception):
    """What the client sent is not an HTTP/1.x request this receiver can parse."""


class Hostile:
    """A raw-socket HTTP receiver on 127.0.0.1 that answers each request according to `mode`.

    Modes (every request on the receiver gets the same treatment):

    - ``"trickle_status"``: ``HTTP/1.1 200 OK\\r\\n`` one byte every `interval_seconds`, then
      ``X-Slow: aaaa…`` one byte at a time for ever; the headers never end.
    - ``"trickle_headers"``: the status line at once, then ``X-Slow: aaaa…`` one byte per
      interval for ever (never the blank line).
    - ``"trickle_body"``: full headers with ``Content-Length: 100000000`` at once, then one body
      byte per interval for ever.
    - ``"continue_forever"``: ``HTTP/1.1 100 Continue\\r\\n\\r\\n`` every interval, never a
      final status.
    - ``"hang"``: reads the request and never writes anything.
    - ``"close_mid_answer"``: ``HTTP/1.1 200 OK``, ``Content-Length: 100``, then ``abc`` and the
      receiver closes the connection.
    - ``"answer"``: at once, `status` with the extra `headers` (values written as UTF-8) and
      ``Content-Length: 0``; the connection stays open for further requests (keep-alive),
      even after ``Connection: close``, until the client closes it.
    - ``"big_body"``: `status`, the extra `headers` and ``Content-Length: 10485760``, then the
      body as fast as the client reads it; if the client reads it all, keep-alive as above.

    The port is bound in the constructor, so `url` is valid before `__enter__`, which starts
    listening (backlog 128). A receiver runs once: it cannot be entered again after `__exit__`.
    """

    def __init__(
        self,
        mode: str,
        *,
        interval_seconds: float = 0.2,
        status: int = 200,
        headers: tuple[tuple[str, str], ...] = (),
        max_seconds: float = 60.0,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        if interval_seconds < 0 or max_seconds <= 0:
            raise ValueError("interval_seconds must be >= 0 and max_seconds > 0")
        self.mode = mode
        self.interval_seconds = interval_seconds
        self.status = status
        self.headers = tuple(headers)
        self.max_seconds = max_seconds
        self.requests: list[Seen] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._connections: set[_Connection] = set()
        self._acceptor: threading.Thread | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._port: int = self._listener.getsockname()[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/hook``, valid from construction on (also after `__exit__`)."""
        return f"http://127.0.0.1:{self._port}/hook"

    def __enter__(self) -> Hostile:
        """Start listening and accepting on a daemon thread."""
        if self._acceptor is not None or self._stop.is_set():
            raise RuntimeError("a Hostile receiver runs only once")
        self._listener.listen(128)
        self._listener.settimeout(_SLICE_SECONDS)
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"hostile-{self.mode}-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the listener and every open connection, and join all threads (about 1 s)."""
        self._stop.set()
        if self._acceptor is None:
            self._listener.close()
        else:
            self._acceptor.join(1.0)
        give_up_at = time.monotonic() + 1.0
        with self._changed:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, give_up_at - time.monotonic()))
        with self._changed:
            stuck = list(self._connections)
        for connection in stuck:  # Only if a thread missed its stop flag: wake it hard.
            connection.abort()

    def wait_for(self, count: int, timeout_seconds: float = 10.0) -> list[Seen]:
        """Block until `count` requests have been read; return all of them so far.

        Raises AssertionError if fewer than `count` arrive within `timeout_seconds`.
        """
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.requests) >= count, timeout_seconds)
            seen = list(self.requests)
        assert ok, f"{self.mode} receiver read {len(seen)} of {count} requests: {self.errors}"
        return seen

    def wait_closed(self, count: int, timeout_seconds: float = 10.0) -> list[Seen]:
        """Block until `count` requests have had their connection closed or reset by the client.

        Returns the requests whose `closed_at` is set, in arrival order. Raises AssertionError
        if fewer than `count` are closed within `timeout_seconds`.
        """

        def closed() -> list[Seen]:
            return [seen for seen in self.requests if seen.closed_at is not None]

        with self._changed:
            ok = self._changed.wait_for(lambda: len(closed()) >= count, timeout_seconds)
            done, total = closed(), len(self.requests)
        assert ok, (
            f"{self.mode} receiver: {len(done)} of {count} requests closed by the client"
            f" ({total} read)"
        )
        return done

    # Called by the threads.

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    sock, _ = self._listener.accept()
                except TimeoutError:
                    continue
                except OSError as error:
                    if not self._stop.is_set():
                        self._error(f"accept failed: {error!r}")
                    return
                connection = _Connection(self, sock)
                thread = threading.Thread(
                    target=connection.run, name=f"hostile-{self.mode}-conn", daemon=True
                )
                with self._changed:
                    self._threads.append(thread)
                    self._connections.add(connection)
                thread.start()
        finally:
            self._listener.close()

    def _record(self, seen: Seen) -> None:
        with self._changed:
            self.requests.append(seen)
            self._changed.notify_all()

    def _mark_closed(self, seens: list[Seen]) -> None:
        now = time.monotonic()
        with self._changed:
            for seen in seens:
                if seen.closed_at is None:
                    seen.closed_at = now
            self._changed.notify_all()

    def _forget(self, connection: _Connection) -> None:
        with self._changed:
            self._connections.discard(connection)

    def _error(self, message: str) -> None:
        with self._changed:
            self.errors.append(message)
            self._changed.notify_all()


class _Connection:
    """One accepted socket, served on its own thread according to the owner's mode."""

    def __init__(self, owner: Hostile, sock: socket.socket) -> None:
        self.owner = owner
        self.sock = sock
        self.deadline = time.monotonic() + owner.max_seconds
        self.inbox = bytearray()
        # Once the answer never ends, whatever else the client sends is dropped, not kept.
        self.discard = False
        self.seen: list[Seen] = []
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ)
        self.watching_writes = False

    def run(self) -> None:
        """Serve requests until the client leaves, the deadline passes or the owner stops."""
        try:
            self._serve()
        except _Ended:
            pass
        except _BadRequest as error:
            self.owner._error(f"bad request: {error}")
        except Exception as error:
            self.owner._error(f"connection failed: {error!r}")
        finally:
            self.selector.close()
            self.sock.close()
            self.owner._forget(self)

    def abort(self) -> None:
        """Wake a thread stuck on this socket (last resort in `Hostile.__exit__`)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    # What each mode does once a request is read.

    def _serve(self) -> None:
        owner = self.owner
        interval = owner.interval_seconds
        while True:
            self._read_request()
            mode = owner.mode
            if mode == "answer":
                self._send(_head(owner.status, owner.headers, 0))
                continue
            if mode == "big_body":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BIG_BODY_SNDBUF)
                self._send(_head(owner.status, owner.headers, BIG_BODY_BYTES))
                left = BIG_BODY_BYTES
                while left:
                    chunk = _CHUNK[: min(left, len(_CHUNK))]
                    self._send(chunk)
                    left -= len(chunk)
                continue
            self.discard = True
            if mode == "close_mid_answer":
                self._send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                raise _Ended
            if mode == "hang":
                self._sleep(float("inf"))
            if mode == "continue_forever":
                while True:
                    self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
                    self._sleep(interval)
            if mode == "trickle_status":
                self._trickle(b"", _STATUS_LINE + _SLOW_HEADER)
            if mode == "trickle_headers":
                self._trickle(_STATUS_LINE, _SLOW_HEADER)
            if mode == "trickle_body":
                self._trickle(_head(200, (), TRICKLE_BODY_BYTES), b"")
            raise AssertionError(f"unhandled mode {mode!r}")

    def _trickle(self, at_once: bytes, one_by_one: bytes) -> NoReturn:
        """Write `at_once`, then `one_by_one` and an endless run of ``a`` one byte per interval."""
        if at_once:
            self._send(at_once)
            self._sleep(self.owner.interval_seconds)
        for byte in itertools.chain(one_by_one, itertools.repeat(ord("a"))):
            self._send(bytes((byte,)))
            self._sleep(self.owner.interval_seconds)
        raise AssertionError("unreachable")

    # Reading requests.

    def _read_request(self) -> Seen:
        """Read one request (line, headers, Content-Length or chunked body) and record it."""
        while True:
            while self.inbox.startswith(b"\r\n"):  # Blank lines before a request are allowed.
                del self.inbox[:2]
            end = self.inbox.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.inbox) > _MAX_HEAD_BYTES:
                raise _BadRequest("request head longer than 64 KiB")
            self._recv_more()
        head = bytes(self.inbox[:end])
        del self.inbox[: end + 4]
        request_line, *header_lines = head.split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise _BadRequest(f"request line {request_line!r}")
        headers: dict[str, str] = {}
        for line in header_lines:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(f"header line {line!r}")
            key, text = _text(name).lower(), _text(value.strip(b" \t"))
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._read_chunked()
        else:
            length = headers.get("content-length", "0")
            if not (length.isascii() and length.isdigit()):
                raise _BadRequest(f"content-length {length!r}")
            body = self._read_exact(int(length))
        seen = Seen(_text(parts[1]), headers, body, time.monotonic())
        self.seen.append(seen)
        self.owner._record(seen)
        return seen

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_field = self._read_line().split(b";")[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                raise _BadRequest(f"chunk size {size_field!r}") from None
            if size == 0:
                while self._read_line():  # Trailers, up to the blank line.
                    pass
                return bytes(body)
            body += self._read_exact(size)
            if self._read_exact(2) != b"\r\n":
                raise _BadRequest("chunk not followed by CRLF")

    def _read_line(self) -> bytes:
        while (end := self.inbox.find(b"\r\n")) < 0:
            if len(self.inbox) > _MAX_HEAD_BYTES:
                raise _BadRequest("line longer than 64 KiB")
            self._recv_more()
        line = bytes(self.inbox[:end])
        del self.inbox[: end + 2]
        return line

    def _read_exact(self, count: int) -> bytes:
        while len(self.inbox) < count:
            self._recv_more()
        data = bytes(self.inbox[:count])
        del self.inbox[:count]
        return data

    def _recv_more(self) -> None:
        """Block until the client sends more bytes (they land in `inbox`)."""
        had = len(self.inbox)
        while len(self.inbox) == had:
            self._step(_SLICE_SECONDS, want_write=False)

    # Waiting and writing, always watching for the client leaving.

    def _step(self, timeout: float, *, want_write: bool) -> bool:
        """Wait at most one slice for the socket; take in what the client sent.

        Returns whether the socket is writable (only looked at with `want_write`). Raises
        `_Ended` when the owner stops, the deadline has passed, or the client closed or reset
        the connection (recording `closed_at` in that last case).
        """
        now = time.monotonic()
        if self.owner._stop.is_set() or now >= self.deadline:
            raise _Ended
        if want_write != self.watching_writes:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self.selector.modify(self.sock, events)
            self.watching_writes = want_write
        wait = max(0.0, min(timeout, _SLICE_SECONDS, self.deadline - now))
        ready = 0
        for _, mask in self.selector.select(wait):
            ready |= mask
        if ready & selectors.EVENT_READ:
            try:
                data = self.sock.recv(64 * 1024)
            except BlockingIOError:
                data = None
            except OSError:
                self._peer_left()
            if data == b"":
                self._peer_left()
            if data and not self.discard:
                self.inbox += data
        return bool(ready & selectors.EVENT_WRITE)

    def _sleep(self, seconds: float) -> None:
        """Wait `seconds`, noticing within a slice if the client leaves."""
        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            self._step(left, want_write=False)

    def _send(self, data: bytes) -> None:
        """Write all of `data` as fast as the client takes it, counting into `bytes_sent`."""
        view = memoryview(data)
        while view:
            if not self._step(_SLICE_SECONDS, want_write=True):
                continue
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                continue
            except OSError:
                self._peer_left()
            view = view[sent:]
            self.seen[-1].bytes_sent += sent

    def _peer_left(self) -> NoReturn:
        if not self.owner._stop.is_set():
            self.owner._mark_closed(self.seen)
        raise _Ended


def _head(status: int, headers: tuple[tuple[str, str], ...], length: int) -> bytes:
    """A response head: status line, the extra headers, Content-Length, blank line (UTF-8)."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _text(raw: bytes) -> str:
    """UTF-8 if it decodes, else Latin-1 (which always does)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")
