"""The gunicorn worker the API runs in: gevent, with deadlines on every wait for a client.

gunicorn's gevent worker gives every connection a greenlet and bounds the wait
for each request head by `keepalive`, but not the wait for a body or for the
client to take its answer. This worker bounds them all, so that no client
holds a greenlet (and what it holds: a wait's place, a stream) by going quiet:

- the first head of a connection by `api_header_timeout_seconds` (a client that
  trickles its headers is cut off), a later one by `api_keepalive_seconds` (an
  idle kept-alive connection is closed); neither gets an answer, as neither has
  asked anything;
- the whole body by `api_body_timeout_seconds` from the head: a 408 problem,
  and the connection closed (`BodyTimeout`);
- the answer, written in pieces of `SEND_PIECE_BYTES`, by `api_send_timeout_seconds`
  a piece: a client that takes less than a piece in that time (one that stopped
  reading a stream) is disconnected, and the answer's generator closed, which
  gives back what it held.

What gunicorn refuses by itself (414, 431, malformed requests) is answered as
problem+json (`app.server_errors`).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
import gevent.local
from gevent.monkey import MonkeyPatchWarning
from gunicorn.workers.ggevent import GeventWorker

from app.errors import BodyTimeout
from app.server_errors import ProblemErrors

log = logging.getLogger(__name__)

Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ApiWorker(ProblemErrors, GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        settings = self.app.settings
        self.header_timeout_seconds = settings.api_header_timeout_seconds
        self.keepalive_seconds = settings.api_keepalive_seconds
        self.body_seconds = settings.api_body_timeout_seconds
        self.send_seconds = settings.api_send_timeout_seconds
        self.connection = gevent.local.local()
        # The sockets of kept-alive connections waiting for their next request.
        self.idle: set[Any] = set()
        # `import redis` imports ssl (and redis.asyncio, which keeps direct references
        # to it) before gunicorn patches; the API uses neither asyncio nor TLS from there.
        warnings.filterwarnings(
            "ignore", message="Monkey-patching ssl after ssl", category=MonkeyPatchWarning
        )
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        # The app, and everything imported to make it, lasts as long as the process:
        # kept out of the collector's full passes, whose pause grows with what they
        # scan. With 2,000 long-polls open those pauses reached 50-80 ms, most of it
        # spent on these objects (tens of thousands), and set the API's p99.
        gc.freeze()
        self.flask: Any = self.wsgi
        self.wsgi: Wsgi = self.bounded(self.flask)

    def bounded(self, app: Wsgi) -> Wsgi:
        """`app` with its body read under the body deadline, and its answer written under
        the send timeout."""
        body_seconds, send_seconds = self.body_seconds, self.send_seconds
        refusal = f"the request's body did not arrive within {body_seconds:g} s"

        def bounded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            deadline = time.monotonic() + body_seconds
            body = environ["wsgi.input"] = DeadlineBody(environ["wsgi.input"], deadline, refusal)
            answer = app(environ, start_response)
            if body.timed_out:
                # The rest of the body may still come: this connection carries no other
                # request. (gunicorn drops a `Connection` header an app sets; its response,
                # whose `start_response` this is, closes when told before it is sent.)
                start_response.__self__.force_close()  # type: ignore[attr-defined]
            # The view has run (and read what it reads); gunicorn writes the answer next.
            sock = environ.get("gunicorn.socket")
            if sock is not None:
                sock.settimeout(send_seconds)
            if isinstance(answer, environ["wsgi.file_wrapper"]):
                return answer  # a file from the package, sent by the kernel
            return Pieces(answer)

        return bounded

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # Out of the signal handler: waits and streams end now, within the graceful timeout.
        gevent.spawn(self._stop_waits)

    def _stop_waits(self) -> None:
        services = getattr(self.flask, "extensions", {}).get("postback")
        if services is not None:
            services.hub.stop()
        # Idle kept-alive connections end now: they would hold the worker for the whole
        # graceful timeout, and have no request to finish.
        for sock in list(self.idle):
            _hang_up(sock)

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.connection.served = 0
        self.connection.client = client
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self.connection.served += 1
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except TimeoutError:
            # gunicorn would log this as an error with its traceback: it is the client's doing.
            log.info(
                "a client took less than %d KiB of its answer in %s s: disconnected",
                SEND_PIECE_BYTES // 1024,
                self.send_seconds,
            )
            raise StopIteration from None  # gunicorn closes the connection
        finally:
            # The wait for the next head has its own deadline (`timeout_ctx`).
            with contextlib.suppress(OSError):
                sock.settimeout(None)

    def timeout_ctx(self) -> contextlib.AbstractContextManager[Any]:
        if getattr(self.connection, "served", 0) == 0:
            return gevent.Timeout(self.header_timeout_seconds, False)
        return self._idle(self.connection.client)

    @contextlib.contextmanager
    def _idle(self, sock: Any) -> Iterator[None]:
        """The wait of a kept-alive connection for its next request: at most the keepalive,
        and over at once when the worker stops."""
        if not self.alive:
            _hang_up(sock)
        self.idle.add(sock)
        try:
            with gevent.Timeout(self.keepalive_seconds, False):
                yield
        finally:
            self.idle.discard(sock)


def _hang_up(sock: Any) -> None:
    """End a connection's reads and writes: a wait for its next request sees its end.

    Through a duplicate of its descriptor: gevent's own `shutdown` would fail the
    waiting read with EBADF, which gunicorn logs as an error with its traceback.
    """
    with contextlib.suppress(OSError):
        duplicate = socket.socket(fileno=os.dup(sock.fileno()))
        try:
            duplicate.shutdown(socket.SHUT_RDWR)
        finally:
            duplicate.close()


# The most of an answer written at once. A socket's timeout bounds a whole write, so a
# large answer is written in pieces, each of which the client has the send timeout to take.
SEND_PIECE_BYTES = 64 * 1024


class Pieces:
    """An answer's iterable, its items cut to `SEND_PIECE_BYTES`; closing it closes the
    answer (a stream's generator, which gives back what it holds)."""

    def __init__(self, answer: Iterable[bytes]) -> None:
        self._answer = answer

    def __iter__(self) -> Iterator[bytes]:
        for item in self._answer:
            if len(item) <= SEND_PIECE_BYTES:
                yield item
                continue
            for start in range(0, len(item), SEND_PIECE_BYTES):
                yield item[start : start + SEND_PIECE_BYTES]

    def close(self) -> None:
        close = getattr(self._answer, "close", None)
        if close is not None:
            close()


class DeadlineBody:
    """A request's input whose reads end with `BodyTimeout` once `deadline` (monotonic)
    has passed, however slowly the client trickles its bytes."""

    def __init__(self, body: Any, deadline: float, refusal: str) -> None:
        self._body = body
        self._deadline = deadline
        self._refusal = refusal
        self.timed_out = False

    def _bounded(self, read: Callable[..., Any], *args: Any) -> Any:
        left = self._deadline - time.monotonic()
        refusal = BodyTimeout(self._refusal)
        try:
            if left <= 0:
                raise refusal
            with gevent.Timeout(left, refusal):
                return read(*args)
        except BodyTimeout:
            self.timed_out = True
            raise

    def read(self, size: int | None = None) -> bytes:
        return self._bounded(self._body.read, size)  # type: ignore[no-any-return]

    def readline(self, size: int | None = None) -> bytes:
        return self._bounded(self._body.readline, size)  # type: ignore[no-any-return]

    def readlines(self, hint: int | None = None) -> list[bytes]:
        return self._bounded(self._body.readlines, hint)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line
