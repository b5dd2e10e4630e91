"""The API under gunicorn, for `postback serve` and `postback up`."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from postback.settings import Settings


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
            "worker_class": "gthread",
            "threads": 8,
            "timeout": 60,
            "graceful_timeout": 5,
            "accesslog": None,
            "loglevel": settings.log_level.lower(),
            "proc_name": "postback-api",
            # One API per data dir may run on a machine; a shared control socket would clash.
            "control_socket_disable": True,
        }
    ).run()
