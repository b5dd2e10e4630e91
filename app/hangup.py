"""Whether the client of a long request has hung up, heard without polling.

A long-poll sleeps without reading its connection, so a client that goes away
is not noticed until the wait ends, and its place among the partner's waits
(`POSTBACK_PARTNER_MAX_WAITS`) stays taken all that time: a client that gives
up and asks again finds itself refused by its own abandoned waits. Under the
gevent server the connection's socket is watched by the event loop while the
request sleeps (no greenlet, no timer); when it turns readable the sleeper is
woken and looks: an end of stream is a hang-up, anything else (a pipelined
request) is left for the server to read after this answer, and the watch ends.

Outside the gevent server (the test client, another WSGI server) nothing is
watched and a wait runs to its end, as before.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any, Protocol


class Wakeable(Protocol):
    """What a hang-up wakes: a `threading.Event`, an `app.hub.Watch`."""

    def set(self) -> None: ...


class Hangup:
    """The watch on one request's connection; `gone()` after it was woken."""

    def __init__(self, sock: Any, woken: Wakeable) -> None:
        self._sock = sock
        self._woken = woken
        self._watcher: Any = None
        self._readable = False
        self._gone = False

    def _start(self) -> None:
        import gevent

        self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        # In the event loop: mark and wake the sleeper, which reads (the loop may not).
        self._stop()
        self._readable = True
        self._woken.set()

    def _stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    def gone(self) -> bool:
        """Whether the client has closed its side of the connection."""
        if self._readable and not self._gone:
            self._readable = False
            try:
                peeked = self._sock.recv(1, socket.MSG_PEEK)
            except OSError:
                peeked = b""
            self._gone = not peeked
        return self._gone


class _Never(Hangup):
    def __init__(self) -> None:
        super().__init__(None, threading.Event())

    def gone(self) -> bool:
        return False


@contextlib.contextmanager
def watch(environ: dict[str, Any], woken: Wakeable) -> Iterator[Hangup]:
    """Watch the request's connection while inside; a hang-up sets `woken`."""
    sock = environ.get("gunicorn.socket")
    if sock is None or not _under_gevent():
        yield _Never()
        return
    hangup = Hangup(sock, woken)
    hangup._start()
    try:
        yield hangup
    finally:
        hangup._stop()


def _under_gevent() -> bool:
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("socket"))
