"""The gunicorn worker the API runs in: gevent, with deadlines on request heads.

gunicorn's gevent worker gives every connection a greenlet and bounds the wait
for each request head by `keepalive`. This worker bounds the first head of a
connection by `api_header_timeout_seconds` (a client that trickles its headers
is cut off) and the wait for a later one by `api_keepalive_seconds` (an idle
kept-alive connection is closed). A connection cut off this way gets no answer:
it has not sent a request to answer. What gunicorn refuses by itself (414,
431, malformed requests) is answered as problem+json (`app.server_errors`).
"""

from __future__ import annotations

import gc
import warnings
from typing import Any

import gevent
import gevent.local
from gevent.monkey import MonkeyPatchWarning
from gunicorn.workers.ggevent import GeventWorker

from app.server_errors import ProblemErrors


class ApiWorker(ProblemErrors, GeventWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        settings = self.app.settings
        self.header_timeout_seconds = settings.api_header_timeout_seconds
        self.keepalive_seconds = settings.api_keepalive_seconds
        self.connection = gevent.local.local()
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

    def handle_exit(self, sig: Any, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # Out of the signal handler: waits and streams end now, within the graceful timeout.
        gevent.spawn(self._stop_waits)

    def _stop_waits(self) -> None:
        services = getattr(self.wsgi, "extensions", {}).get("postback")
        if services is not None:
            services.hub.stop()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self.connection.served = 0
        super().handle(listener, client, addr)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        self.connection.served += 1
        return super().handle_request(listener_name, req, sock, addr)

    def timeout_ctx(self) -> gevent.Timeout:
        first = getattr(self.connection, "served", 0) == 0
        seconds = self.header_timeout_seconds if first else self.keepalive_seconds
        return gevent.Timeout(seconds, False)
