"""API errors, and the one place that turns every error into RFC 9457 problem+json.

Exceptions::

    ApiError                   status, title, detail, problem type
    ├── MalformedRequest       400
    ├── Unauthorized           401 (with WWW-Authenticate: Bearer)
    ├── Forbidden              403
    ├── NotFound               404
    ├── Conflict               409
    ├── UnsupportedMediaType   415
    ├── ValidationFailed       422 (with `errors`: field → messages)
    └── Unavailable            503

A partner past one of its quotas (`worker.quotas.OverQuota`) is a 429.
Redis faults (`postback.faults`) are 503s too, each naming its cause (`cause`),
with a Retry-After; so is a request shed while Redis times out (`app.shedding`).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.allow import allowed_methods
from app.shedding import Shed
from postback.faults import Fault, FaultWatch, classify
from worker.jobs import NotDurable
from worker.quotas import BacklogFull, OverQuota

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:postback:problem:"
# Retry-After of a partner over its quota: its queued jobs start within seconds;
# retained bytes are freed only as its finished jobs pass their retention.
BACKLOG_RETRY_SECONDS = 5
QUOTA_RETRY_SECONDS = 300


class ApiError(Exception):
    """An error the API reports to its caller."""

    status = 500
    title = "Internal Server Error"
    slug = "internal"

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class MalformedRequest(ApiError):
    status, title, slug = 400, "Malformed request", "malformed-request"


class Unauthorized(ApiError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str = "a valid bearer token is required") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="postback"'})


class Forbidden(ApiError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ApiError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(ApiError):
    status, title, slug = 409, "Conflict", "conflict"


class UnsupportedMediaType(ApiError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media-type"


class ValidationFailed(ApiError):
    status, title, slug = 422, "Validation failed", "validation-failed"


class Unavailable(ApiError):
    status, title, slug = 503, "Service unavailable", "unavailable"


def status_slug(title: str) -> str:
    """The problem-type slug of an HTTP status's title: "URI Too Long" → "uri-too-long"."""
    return title.lower().replace(" ", "-")


def problem_document(
    status: int, title: str, detail: str, *, slug: str, instance: str | None
) -> dict[str, Any]:
    """The members of a problem: `type`, `title`, `status`, `detail` and, if known, `instance`."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance is not None:
        body["instance"] = instance
    return body


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    errors: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
    members: dict[str, Any] | None = None,
) -> Response:
    """A problem+json response; `members` are extension members (RFC 9457 §3.2)."""
    body = problem_document(status, title, detail, slug=slug, instance=request.path)
    if errors:
        body["errors"] = errors
    body.update(members or {})
    response = jsonify(body)
    response.status_code = status
    response.mimetype = PROBLEM_JSON
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def fault_problem(fault: Fault) -> Response:
    """The 503 for a Redis fault: its detail, its `cause` and a Retry-After."""
    return problem(
        503,
        Unavailable.title,
        fault.detail,
        slug=Unavailable.slug,
        headers={"Retry-After": str(fault.retry_after_seconds)},
        members={"cause": str(fault.cause)},
    )


def register(app: Flask) -> None:
    """Route every exception the app can raise to a problem+json response."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Response:
        return problem(
            exc.status, exc.title, exc.detail, slug=exc.slug, errors=exc.errors, headers=exc.headers
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            allowed = allowed_methods(exc.valid_methods)  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(allowed)
        slug = status_slug(exc.name or "error")
        return problem(
            status, exc.name or "Error", exc.description or "", slug=slug, headers=headers
        )

    # Redis faults: a 503 naming the cause (never its message, which may hold data), logged
    # when a fault starts or changes and once a minute while it lasts, not per request.
    watch = FaultWatch("the API", logger=log, repeat_seconds=60)

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError) -> Response:
        timeout_seconds = app.config["SETTINGS"].redis_timeout_seconds
        found = classify(exc, timeout_seconds=timeout_seconds)
        if found is None:
            return unexpected(exc)
        g.redis_fault = found
        watch.failed(found)
        return fault_problem(found)

    @app.errorhandler(Shed)
    def shed(exc: Shed) -> Response:
        return fault_problem(exc.fault)

    @app.errorhandler(NotDurable)
    def not_durable(exc: NotDurable) -> Response:
        log.error("job not confirmed on disk: %s", exc)
        detail = (
            "the job could not be confirmed on disk; retry (with the same Idempotency-Key "
            "to be safe)"
        )
        return problem(
            503, Unavailable.title, detail, slug=Unavailable.slug, headers={"Retry-After": "1"}
        )

    @app.errorhandler(OverQuota)
    def over_quota(exc: OverQuota) -> Response:
        # Its own doing, so a 429, telling it about its own jobs only.
        backlog = isinstance(exc, BacklogFull)
        retry_seconds = BACKLOG_RETRY_SECONDS if backlog else QUOTA_RETRY_SECONDS
        return problem(
            429,
            "Quota exceeded",
            str(exc),
            slug="quota-exceeded",
            headers={"Retry-After": str(retry_seconds)},
        )

    @app.errorhandler(Exception)
    def unexpected(exc: BaseException) -> Response:
        log.exception("unhandled error")
        return problem(500, ApiError.title, "an unexpected error occurred", slug=ApiError.slug)
