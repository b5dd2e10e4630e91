"""Correlation: one request id from the submission to the webhook, and W3C trace context.

Every request gets an `X-Request-ID` (the caller's, if it is sane, else a new
one), echoed on the response and bound to every log line of the request. A job
keeps the id (and a valid `traceparent`) of the request that submitted it; its
worker logs carry them and its webhook sends them as `x-request-id` and `traceparent`.
"""

from __future__ import annotations

import os
import re

from flask import Flask, Response, g, request

from app import access
from postback import logs

HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


def request_id() -> str:
    """This request's id."""
    return g.request_id


def traceparent() -> str | None:
    """The request's W3C `traceparent`, if it carried a valid one."""
    value = request.headers.get("traceparent", "").strip().lower()
    return value if _TRACEPARENT.fullmatch(value) else None


def register(app: Flask) -> None:
    access.register(app)

    @app.before_request
    def assign() -> None:
        given = request.headers.get(HEADER, "").strip()
        g.request_id = given if _SANE_ID.fullmatch(given) else os.urandom(16).hex()
        g.log_context = logs.push(request_id=g.request_id)

    @app.after_request
    def echo(response: Response) -> Response:
        if "request_id" in g:
            response.headers[HEADER] = g.request_id
        return response

    @app.teardown_request
    def forget(exc: BaseException | None) -> None:
        token = g.pop("log_context", None)
        if token is not None:
            logs.pop(token)
