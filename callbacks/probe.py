"""One message posted once, synchronously, under a delivery attempt's rules; nothing stored.

`post` is the blocking twin of `callbacks.sender.Sender.post`, for a caller that
waits for the answer on its own thread or greenlet (an API process's gevent
workers, where an asyncio loop per request cannot run: one OS thread holds one
running loop). It keeps the attempt's rules:

- SSRF: `resolve_and_check` judges the URL (syntax, scheme, literal addresses,
  every address its name resolves to, with the policy's exemptions), and the
  connection goes to one of exactly those addresses, so a second DNS answer
  cannot redirect it; the `Host` header and TLS SNI name the URL's host.
- No redirect is followed: a 3xx is an answer like any other.
- One wall-clock deadline for the whole exchange: name lookup, connect, TLS,
  the request, the status line, the headers and the body. Every blocking step
  waits at most what is left of it, so a receiver that trickles its answer a
  byte at a time, or sends `100 Continue` for ever, is cut off at the deadline.
- At most `max_body_bytes` of the answer are read (then the connection is
  closed; it is never reused).

Failures are reported in `Probe.response.error` in the sender's words ("timeout",
"connection refused", "unsafe destination: …"), never raised.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from callbacks.errors import UnsafeUrl
from callbacks.sender import Response, answered, elapsed_ms, request_headers
from callbacks.ssrf import (
    DEFAULT_PORTS,
    DEFAULT_URL_POLICY,
    IPAddress,
    Resolver,
    UrlPolicy,
    normalise_host,
    resolve_and_check,
    system_resolver,
)

log = logging.getLogger(__name__)

# Enough of an answer to show a person what the receiver said.
DEFAULT_MAX_BODY_BYTES = 4096


@dataclass(frozen=True, kw_only=True)
class Probe:
    """What the receiver did with one message, and what was sent to it."""

    # Status code, duration and error, as a delivery attempt records them.
    response: Response
    # Every header sent but `Host` and `Content-Length`.
    headers: dict[str, str] = field(default_factory=dict)
    # The first `max_body_bytes` of the answer's body.
    body: bytes = b""
    # The answer had more body than was read.
    truncated: bool = False
    # Why the URL must not be called (nothing was sent), else None.
    refusal: str | None = None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    timeout_seconds: float,
    user_agent: str,
    url_policy: UrlPolicy = DEFAULT_URL_POLICY,
    resolver: Resolver = system_resolver,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Probe:
    """POST `body` to `url` once, within `timeout_seconds` in all; errors are reported."""
    started = time.monotonic()
    deadline = _Deadline(started + timeout_seconds)
    sent = request_headers(user_agent, headers)

    def failure(error: str, refusal: str | None = None) -> Probe:
        return Probe(
            response=Response(status_code=None, duration_ms=elapsed_ms(started), error=error),
            headers=sent,
            refusal=refusal,
        )

    try:
        addresses = _lookup(url, url_policy, resolver, deadline)
        status, answer, truncated = _exchange(url, addresses, body, sent, deadline, max_body_bytes)
    except TimeoutError:
        return failure("timeout")
    except UnsafeUrl as exc:
        return failure(f"unsafe destination: {exc.reason}", exc.reason)
    except ssl.SSLCertVerificationError:
        return failure("tls error: certificate")
    except ssl.SSLError:
        return failure("tls error")
    except ConnectionRefusedError:
        return failure("connection refused")
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError):
        return failure("connection closed")
    except http.client.HTTPException as exc:
        return failure(f"invalid response: {type(exc).__name__}")
    except OSError as exc:
        return failure(f"connection error: {type(exc).__name__}")
    except Exception as exc:
        log.exception("test message to %s failed unexpectedly", urlsplit(url).netloc)
        return failure(f"internal error: {type(exc).__name__}")
    return Probe(
        response=answered(status, started),
        headers=sent,
        body=answer,
        truncated=truncated,
    )


class _Deadline:
    """A moment on the monotonic clock; `left()` is TimeoutError once it has passed."""

    def __init__(self, at: float) -> None:
        self.at = at

    def left(self) -> float:
        seconds = self.at - time.monotonic()
        if seconds <= 0:
            raise TimeoutError("the deadline has passed")
        return seconds


def _lookup(
    url: str, policy: UrlPolicy, resolver: Resolver, deadline: _Deadline
) -> list[IPAddress]:
    """The checked addresses of `url` (UnsafeUrl if any is forbidden), within the deadline.

    Each lookup runs on a thread of its own (a greenlet under gevent), so that the
    deadline bounds it; not on a shared pool, where a name that never resolves would
    hold a place every other caller's lookup then waits for. How many run at once is
    the caller's to bound (the portal: the partner's waits).
    """
    found: Future[list[IPAddress]] = Future()

    def resolve() -> None:
        try:
            found.set_result(resolve_and_check(url, policy, resolver))
        except BaseException as exc:
            found.set_exception(exc)

    threading.Thread(target=resolve, name="probe-dns", daemon=True).start()
    return found.result(timeout=deadline.left())


def _exchange(
    url: str,
    addresses: list[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    deadline: _Deadline,
    max_body_bytes: int,
) -> tuple[int, bytes, bool]:
    """Status, the first `max_body_bytes` of the body, and whether more was left."""
    parts = urlsplit(url)
    host = normalise_host(parts.hostname or "")
    port = parts.port or DEFAULT_PORTS[parts.scheme]
    sock = _connect(addresses, port, deadline)
    try:
        if parts.scheme == "https":
            sock.settimeout(deadline.left())
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        connection = http.client.HTTPConnection(host, port)
        # `Host` leaves out the scheme's own port, as a browser writes it.
        connection.default_port = DEFAULT_PORTS[parts.scheme]
        # Connected already, to the checked address: http.client never resolves the name.
        connection.sock = _DeadlineSocket(sock, deadline)  # type: ignore[assignment]
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.putrequest("POST", target, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("content-length", str(len(body)))
        connection.endheaders(body)
        reply = connection.getresponse()
        answer = reply.read(max_body_bytes + 1)
        if len(answer) <= max_body_bytes and reply.length:
            # The connection ended before the length the answer announced.
            raise http.client.IncompleteRead(answer, reply.length)
        return reply.status, answer[:max_body_bytes], len(answer) > max_body_bytes
    finally:
        sock.close()


def _connect(addresses: list[IPAddress], port: int, deadline: _Deadline) -> socket.socket:
    """A connection to the first of `addresses` that accepts one (the last error else)."""
    error: OSError = ConnectionRefusedError("no address to connect to")
    for address in addresses:
        try:
            return socket.create_connection((str(address), port), timeout=deadline.left())
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
    raise error


class _DeadlineSocket:
    """A connected socket whose every send and receive waits at most what the deadline
    leaves (a socket timeout alone restarts with each byte a trickling receiver sends)."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def recv_into(self, buffer: memoryview) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self._sock.close()


class _Reader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        return self._sock.recv_into(buffer)
