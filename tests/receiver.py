"""A real HTTP receiver on 127.0.0.1 that records what it is sent and answers as scripted."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from bench.receiver import Server


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when the request arrived, before any scripted delay.
    arrived_at: float = 0.0
    # The status it was answered with.
    status: int = 0


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay_seconds: float = 0.0


class Receiver:
    """Answers each POST with the next scripted `Reply` (then the reply for its path in
    `by_path`, then `default`), and records it."""

    def __init__(
        self, default: Reply | None = None, *, by_path: dict[str, Reply] | None = None
    ) -> None:
        self.default = default or Reply()
        self.by_path = by_path or {}
        self.script: queue.SimpleQueue[Reply] = queue.SimpleQueue()
        self.received: list[Received] = []
        self._arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                arrived_at = time.monotonic()
                length = int(self.headers.get("content-length", 0))
                body = self.rfile.read(length)
                try:
                    reply = outer.script.get_nowait()
                except queue.Empty:
                    reply = outer.by_path.get(self.path, outer.default)
                if reply.delay_seconds:
                    time.sleep(reply.delay_seconds)
                with outer._arrived:
                    outer.received.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            arrived_at,
                            reply.status,
                        )
                    )
                    outer._arrived.notify_all()
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def reply(self, *replies: Reply) -> None:
        for item in replies:
            self.script.put(item)

    def wait_for(self, count: int, timeout_seconds: float = 10.0) -> list[Received]:
        """Block until `count` requests have arrived (or fail after the timeout)."""
        with self._arrived:
            ok = self._arrived.wait_for(lambda: len(self.received) >= count, timeout_seconds)
        assert ok, f"receiver got {len(self.received)} of {count} requests"
        return list(self.received)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
