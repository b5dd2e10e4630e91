"""The API under gunicorn, for `postback serve` and `postback up`.

Each API process is an event loop (gevent): a connection costs a greenlet, not
a thread, so long-polls, slow clients and idle keep-alive connections wait
without holding anything another request needs. Blocking calls made by the app
(Redis, DNS) yield to the loop once gevent has patched the standard library,
which gunicorn does in each worker process before the app is built.
"""

from __future__ import annotations

import math
from typing import Any

from gunicorn.app.base import BaseApplication

from postback.resources import raise_file_limit
from postback.settings import Settings

WORKER_CLASS = "app.serving.ApiWorker"
# What gunicorn reads of a request before the app does; past these it answers 414 or 431
# (as problem+json, see `app.server_errors`). 8190 bytes is the longest request line
# gunicorn accepts at all: room for a circuit cursor and a destination filter together.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_BYTES = 8190


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any], settings: Settings) -> None:
        self.options = options
        # Read by `app.serving.ApiWorker` in each worker process.
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each gunicorn worker after the fork: no Redis socket is shared.
        from app import create_app

        return create_app(settings=self.settings)


def options(settings: Settings, *, host: str, port: int) -> dict[str, Any]:
    """The gunicorn settings `postback serve` runs with."""
    return {
        "bind": f"{host}:{port}",
        "workers": settings.api_workers,
        "worker_class": WORKER_CLASS,
        "worker_connections": settings.api_worker_connections,
        # Non-zero keeps connections alive; `app.serving.ApiWorker` applies the exact bounds.
        "keepalive": max(1, math.ceil(settings.api_keepalive_seconds)),
        "limit_request_line": MAX_REQUEST_LINE_BYTES,
        "limit_request_fields": MAX_HEADER_FIELDS,
        "limit_request_field_size": MAX_HEADER_FIELD_BYTES,
        "timeout": 60,
        "graceful_timeout": 5,
        "accesslog": None,
        "logger_class": "app.access.GunicornLogger",
        "loglevel": settings.log_level.lower(),
        "proc_name": "postback-api",
        # One API per data dir may run on a machine; a shared control socket would clash.
        "control_socket_disable": True,
    }


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Serve the API on host:port until SIGTERM/SIGINT."""
    raise_file_limit()
    _Gunicorn(options(settings, host=host, port=port), settings).run()
