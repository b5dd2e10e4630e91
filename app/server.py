"""The API under gunicorn, for `postback serve` and `postback up`."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from app.server_errors import ThreadWorker
from postback.settings import Settings

# What gunicorn reads of a request before the app does; past these it answers 414 or 431
# (as problem+json, see `app.server_errors`). 8190 bytes is the longest request line
# gunicorn accepts at all: room for a circuit cursor and a destination filter together.
MAX_REQUEST_LINE_BYTES = 8190
MAX_HEADER_FIELDS = 100
MAX_HEADER_FIELD_BYTES = 8190


class _Gunicorn(BaseApplication):  # type: ignore[misc]
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each gunicorn worker after the fork: no Redis socket is shared.
        from app import create_app

        return create_app()


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Serve the API on host:port until SIGTERM/SIGINT."""
    _Gunicorn(
        {
            "bind": f"{host}:{port}",
            "workers": settings.api_workers,
            # gthread, with gunicorn's own error pages as problem+json.
            "worker_class": ThreadWorker,
            "threads": 8,
            "limit_request_line": MAX_REQUEST_LINE_BYTES,
            "limit_request_fields": MAX_HEADER_FIELDS,
            "limit_request_field_size": MAX_HEADER_FIELD_BYTES,
            "timeout": 60,
            "graceful_timeout": 5,
            "accesslog": None,
            "loglevel": settings.log_level.lower(),
            "proc_name": "postback-api",
            # One API per data dir may run on a machine; a shared control socket would clash.
            "control_socket_disable": True,
        }
    ).run()
