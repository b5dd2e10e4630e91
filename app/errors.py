"""The one place that turns an error into an RFC 9457 problem+json answer.

Stores and services raise the domain errors of `postback.errors`; `PROBLEMS`
gives each class its status, problem type (`urn:postback:problem:<slug>`),
title, headers and extension members, and an error is answered by the entry
of the nearest class in its MRO. An error no entry covers is a 500 whose
detail says nothing, its traceback logged. The API's own kinds live here:
`UnsupportedMediaType` (415), `LinkExpired` (410) and `NotCompleted` (409).

    InvalidInput            422  with `errors`: field → messages
    ├── Malformed           400
    │   ├── UnsupportedMediaType 415
    │   └── HostNotAllowed       400
    Unauthorized            401  with WWW-Authenticate: Bearer
    Forbidden               403
    NotFound                404
    ├── Expired             410
    │   └── LinkExpired     410  "Link expired"
    Conflict                409
    └── NotCompleted        409  "Job not completed", with `job_status`
    LimitExceeded           429  with Retry-After
    ├── RateLimited         429  and the RateLimit-* headers
    └── OverQuota           429  "Quota exceeded"
    BodyTimeout             408  and the connection closed (by `app.serving`)
    Unavailable             503  with Retry-After when known
    ├── RedisFault          503  with `cause`
    ├── NotReady            503  "Not ready", with `checks`
    └── NotDurable          503  a detail that says to retry with the same Idempotency-Key
    Misconfigured           503  a detail that says nothing of the configuration; logged

The names the API used before the domain tree (`ApiError`, `MalformedRequest`,
`ValidationFailed`) remain as aliases of the domain classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from app.allow import allowed_methods
from postback.errors import (
    Conflict,
    Expired,
    Forbidden,
    InvalidInput,
    LimitExceeded,
    Malformed,
    Misconfigured,
    NotFound,
    NotReady,
    PostbackError,
    RedisFault,
    Unauthorized,
    Unavailable,
)
from postback.faults import FaultWatch, classify
from postback.ratewindow import RateLimited
from worker.jobs import NotDurable
from worker.quotas import OverQuota

__all__ = [
    "PROBLEMS",
    "PROBLEM_JSON",
    "ApiError",
    "Conflict",
    "Forbidden",
    "LinkExpired",
    "MalformedRequest",
    "NotCompleted",
    "NotFound",
    "Problem",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "ValidationFailed",
    "problem",
    "problem_for",
    "register",
    "render",
]

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "urn:postback:problem:"
# A job stored but not confirmed on disk: the next fsync is about a second away.
NOT_DURABLE_RETRY_SECONDS = 1

# The names of the API's errors before the domain tree, kept for their importers.
ApiError = PostbackError
MalformedRequest = Malformed
ValidationFailed = InvalidInput


class UnsupportedMediaType(Malformed):
    """A body that is not declared as the media type the endpoint reads."""


class HostNotAllowed(Malformed):
    """A request whose Host is not in `POSTBACK_ALLOWED_HOSTS` (and no public URL is set)."""


class BodyTimeout(PostbackError):
    """A request body that did not arrive whole within `POSTBACK_API_BODY_TIMEOUT_SECONDS`."""


class LinkExpired(Expired):
    """A signed result link past its expiry."""


class NotCompleted(Conflict):
    """A job's result asked for before the job completed; `state` is the job's status."""

    def __init__(self, detail: str, /, *, state: str) -> None:
        super().__init__(detail, state=state)


def _no_headers(exc: Any) -> dict[str, str]:
    return {}


def _no_members(exc: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Problem:
    """How the API answers one kind of error.

    `headers` and `members` (extension members, RFC 9457 §3.2) are read from the
    error's attributes. `detail`, when set, is said instead of the error's own
    (which may hold what a caller must not see); `log`, when set, is logged as an
    error with the error's own detail (`%s`).
    """

    status: int
    title: str
    slug: str
    headers: Callable[[Any], dict[str, str]] = _no_headers
    members: Callable[[Any], dict[str, Any]] = _no_members
    detail: str | None = None
    log: str | None = None


def _retry_after(exc: Any) -> dict[str, str]:
    seconds = getattr(exc, "retry_after_seconds", None)
    return {} if seconds is None else {"Retry-After": str(seconds)}


def _bearer_challenge(exc: Any) -> dict[str, str]:
    return {"WWW-Authenticate": 'Bearer realm="postback"'}


def _rate_limit(exc: RateLimited) -> dict[str, str]:
    if exc.limit is None:
        return _retry_after(exc)
    return {
        "RateLimit-Limit": str(exc.limit),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(exc.retry_after_seconds),
        **_retry_after(exc),
    }


def _field_errors(exc: InvalidInput) -> dict[str, Any]:
    return {"errors": exc.errors} if exc.errors else {}


def _job_status(exc: NotCompleted) -> dict[str, Any]:
    # Not `status`: RFC 9457 gives that member to the HTTP status code.
    return {"job_status": exc.state}


def _cause(exc: RedisFault) -> dict[str, Any]:
    return {"cause": exc.cause}


def _checks(exc: NotReady) -> dict[str, Any]:
    return {"checks": exc.checks}


def _not_durable_retry(exc: Any) -> dict[str, str]:
    return {"Retry-After": str(NOT_DURABLE_RETRY_SECONDS)}


INTERNAL = Problem(500, "Internal Server Error", "internal", detail="an unexpected error occurred")

# Every error the API answers on purpose, by class. Kept whole here: a new kind of
# error gets its row, or is answered by its nearest base's.
PROBLEMS: dict[type[Exception], Problem] = {
    InvalidInput: Problem(422, "Validation failed", "validation-failed", members=_field_errors),
    Malformed: Problem(400, "Malformed request", "malformed-request", members=_field_errors),
    HostNotAllowed: Problem(400, "Host not allowed", "host-not-allowed"),
    UnsupportedMediaType: Problem(415, "Unsupported media type", "unsupported-media-type"),
    Unauthorized: Problem(401, "Unauthorized", "unauthorized", headers=_bearer_challenge),
    Forbidden: Problem(403, "Forbidden", "forbidden"),
    NotFound: Problem(404, "Not found", "not-found"),
    Expired: Problem(410, "Gone", "gone"),
    LinkExpired: Problem(410, "Link expired", "link-expired"),
    Conflict: Problem(409, "Conflict", "conflict"),
    NotCompleted: Problem(409, "Job not completed", "job-not-completed", members=_job_status),
    LimitExceeded: Problem(429, "Too many requests", "rate-limited", headers=_retry_after),
    RateLimited: Problem(429, "Too many requests", "rate-limited", headers=_rate_limit),
    # A partner's own doing, so a 429, telling it about its own jobs only.
    OverQuota: Problem(429, "Quota exceeded", "quota-exceeded", headers=_retry_after),
    # The server closes the connection after it (`app.serving`): the rest may still come.
    BodyTimeout: Problem(408, "Request timeout", "request-timeout"),
    Unavailable: Problem(503, "Service unavailable", "unavailable", headers=_retry_after),
    RedisFault: Problem(
        503, "Service unavailable", "unavailable", headers=_retry_after, members=_cause
    ),
    NotReady: Problem(503, "Not ready", "not-ready", headers=_retry_after, members=_checks),
    NotDurable: Problem(
        503,
        "Service unavailable",
        "unavailable",
        headers=_not_durable_retry,
        detail="the job could not be confirmed on disk; retry (with the same Idempotency-Key "
        "to be safe)",
        log="job not confirmed on disk: %s",
    ),
    Misconfigured: Problem(
        503,
        "Service unavailable",
        "unavailable",
        detail="the service is not configured to do this; its operator has been told",
        log="misconfigured: %s",
    ),
}


def problem_for(kind: type[BaseException]) -> Problem | None:
    """The entry of the nearest class in `kind`'s MRO that `PROBLEMS` names, or None."""
    for base in kind.__mro__:
        found = PROBLEMS.get(base)
        if found is not None:
            return found
    return None


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


def explain(exc: BaseException) -> tuple[Problem, str]:
    """The entry that answers `exc` (INTERNAL if none) and the detail to say, logging what
    the entry asks to (an unknown error's traceback, a misconfiguration)."""
    found = problem_for(type(exc))
    if found is None:
        log.error("unhandled error", exc_info=exc)
        found = INTERNAL
    elif found.log is not None:
        log.error(found.log, exc)
    return found, str(exc) if found.detail is None else found.detail


def render(exc: BaseException) -> Response:
    """The problem+json answer to `exc`, from its entry in `PROBLEMS` (a 500 if none)."""
    found, detail = explain(exc)
    return problem(
        found.status,
        found.title,
        detail,
        slug=found.slug,
        headers=found.headers(exc),
        members=found.members(exc),
    )


def http_problem(exc: HTTPException) -> Response:
    """The problem+json answer to a routing or protocol error (404, 405, 413, ...)."""
    status = exc.code or 500
    headers = {}
    if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        headers["Allow"] = ", ".join(allowed_methods(exc.valid_methods))  # type: ignore[attr-defined]
    slug = status_slug(exc.name or "error")
    return problem(status, exc.name or "Error", exc.description or "", slug=slug, headers=headers)


def register(app: Flask) -> None:
    """Route every exception the app can raise to a problem+json response."""

    # Flask picks the handler of the nearest registered class; `render` then finds the
    # nearest entry, so one handler serves every row (NotDurable included, whatever
    # its bases).
    kinds: list[type[Exception]] = [PostbackError, *PROBLEMS]
    for kind in kinds:
        app.register_error_handler(kind, render)

    app.register_error_handler(HTTPException, http_problem)

    # Redis faults: a 503 naming the cause (never its message, which may hold data), logged
    # when a fault starts or changes and once a minute while it lasts, not per request.
    watch = FaultWatch("the API", logger=log, repeat_seconds=60)

    @app.errorhandler(redis.RedisError)
    def redis_error(exc: redis.RedisError) -> Response:
        timeout_seconds = app.config["SETTINGS"].redis_timeout_seconds
        found = classify(exc, timeout_seconds=timeout_seconds)
        if found is None:
            return render(exc)
        g.redis_fault = found
        watch.failed(found)
        return render(
            RedisFault(
                found.detail, cause=str(found.cause), retry_after_seconds=found.retry_after_seconds
            )
        )

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        return render(exc)
