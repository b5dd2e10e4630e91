"""The access log, and gunicorn's own lines, in Postback's log format.

Every request answered by the app writes one line to the logger
`postback.access`: `method`, `path` as the URL rule that matched
(`/v1/jobs/<job_id>`, never the raw path with its ids or query; null when no
rule matched), `status`, `duration_ms` and `request_id`. gunicorn's error and
access loggers write through the same handler setup (`GunicornLogger`, its
`logger_class`), so a process's stderr is one stream of JSON lines.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask, Response, g, request
from gunicorn.glogging import Logger

from postback import logs

log = logging.getLogger("postback.access")


def register(app: Flask) -> None:
    """Time every request of `app` and log one access line when it is answered."""

    @app.before_request
    def start() -> None:
        g.access_started = time.perf_counter()

    @app.after_request
    def written(response: Response) -> Response:
        if log.isEnabledFor(logging.INFO):
            log.info("request", extra=line(response))
        return response


def line(response: Response) -> dict[str, Any]:
    """The fields of the access line for `response` to the current request."""
    started = g.get("access_started")
    rule = request.url_rule
    return {
        "method": request.method,
        "path": rule.rule if rule is not None else None,
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3)
        if started is not None
        else None,
        "request_id": g.get("request_id"),
    }


class GunicornLogger(Logger):  # type: ignore[misc]
    """gunicorn's logger with Postback's formatter and context on its handlers."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                logs.format_like_postback(handler)
