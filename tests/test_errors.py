"""The error tree: one root, every kind answered by one table, stores raising domain errors."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from flask import Flask

from app.errors import PROBLEM_JSON, problem_for
from postback.errors import (
    Conflict,
    InvalidInput,
    LimitExceeded,
    Malformed,
    Misconfigured,
    NotFound,
    PostbackError,
    RedisFault,
    Unauthorized,
    Unavailable,
)
from postback.ratewindow import RateLimited
from worker.jobs import NotDurable
from worker.quotas import BacklogFull

# Modules whose import has effects beyond defining things (a gevent worker class).
_SKIPPED = {"app.serving"}


def _import_everything() -> None:
    for package in ("postback", "callbacks", "worker", "app"):
        module = importlib.import_module(package)
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{package}."):
            # A `__main__` module runs its command when imported.
            if info.name not in _SKIPPED and not info.name.endswith(".__main__"):
                importlib.import_module(info.name)


def _tree(root: type[BaseException]) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for sub in root.__subclasses__():
        found += [sub, *_tree(sub)]
    return found


def test_every_class_below_the_root_has_an_answer_that_is_not_a_500():
    """Every subclass of PostbackError in the code base maps to a 4xx or 503 by the table."""
    _import_everything()
    classes = set(_tree(PostbackError))
    assert {"Shed", "PartnerDisabled", "BacklogFull", "HandlerError", "UnsafeUrl"} <= {
        c.__name__ for c in classes
    }
    unanswered = {c.__qualname__ for c in classes if problem_for(c) is None}
    assert unanswered == set()
    statuses = {c.__qualname__: problem_for(c).status for c in classes}  # type: ignore[union-attr]
    assert {n: s for n, s in statuses.items() if not (400 <= s < 500 or s == 503)} == {}
    assert problem_for(PostbackError) is None
    # Answered by its own row whatever its bases (it joins the tree under Unavailable).
    assert problem_for(NotDurable).status == 503  # type: ignore[union-attr]


def test_every_error_of_postback_is_under_the_one_root():
    """The exceptions of every package are PostbackErrors, of the kind their name says."""
    from app.errors import LinkExpired, MalformedRequest, ValidationFailed
    from app.partners_store import PartnerDisabled
    from app.shedding import Shed
    from app.strictjson import InvalidJson
    from app.throttle import TooManyRequests
    from callbacks.errors import CallbacksError, SecretError, UnsafeUrl
    from postback.connection import RedisNotFound
    from postback.embedded import EmbeddedRedisError
    from postback.ratewindow import KeyChanged
    from postback.settings import SettingsError
    from worker.quotas import OverQuota, RetainedBytesFull
    from worker.registry import HandlerError

    kinds = {
        InvalidInput: [ValidationFailed, CallbacksError, SecretError, UnsafeUrl],
        Malformed: [MalformedRequest, InvalidJson],
        Unauthorized: [KeyChanged],
        NotFound: [LinkExpired],
        Conflict: [PartnerDisabled],
        LimitExceeded: [RateLimited, TooManyRequests, OverQuota, BacklogFull, RetainedBytesFull],
        Unavailable: [Shed, RedisFault, EmbeddedRedisError],
        Misconfigured: [SettingsError, HandlerError, RedisNotFound],
    }
    for kind, members in kinds.items():
        assert [m for m in members if not issubclass(m, kind)] == [], kind
    # What callers caught before still catches them.
    assert issubclass(SettingsError, ValueError) and issubclass(UnsafeUrl, ValueError)


def test_the_signals_between_handler_and_worker_stay_outside_the_tree():
    """JobCancelled and JobTimedOut escape `except Exception`; RetryableError is outside too."""
    from worker.errors import JobCancelled, JobTimedOut, RetryableError

    assert not issubclass(JobCancelled, Exception) and not issubclass(JobTimedOut, Exception)
    assert not issubclass(RetryableError, PostbackError)


def test_errors_carry_their_context_as_attributes():
    """Each kind keeps what it is about: ids, limits, retry times, the offending value."""
    from app.partners_store import PartnerDisabled
    from postback.settings import SettingsError
    from worker.quotas import RetainedBytesFull

    missing = NotFound(kind="job", id="job_1")
    assert (missing.detail, missing.kind, missing.id) == ("no job job_1", "job", "job_1")
    assert BacklogFull("full", used=3, limit=3).retry_after_seconds == 5
    assert RetainedBytesFull("full", used=9, limit=8).retry_after_seconds == 300
    limited = RateLimited("0.25", limit=10)
    assert (limited.reset, limited.limit, limited.retry_after_seconds) == ("0.25", 10, 1)
    disabled = PartnerDisabled("ptn_1")
    assert (disabled.partner_id, disabled.state) == ("ptn_1", "disabled")
    bad = SettingsError("POSTBACK_X", "y", "an integer")
    assert (bad.name, bad.value, bad.expected) == ("POSTBACK_X", "y", "an integer")


def _raising(app: Flask, exc: BaseException) -> Any:
    def view() -> None:
        raise exc

    app.add_url_rule("/raise", "raise", view)
    return app.test_client().get("/raise")


@pytest.mark.parametrize(
    ("make", "status", "slug", "title", "detail", "headers", "members"),
    [
        (
            lambda: InvalidInput("bad", errors={"x": ["no"]}),
            422,
            "validation-failed",
            "Validation failed",
            "bad",
            {},
            {"errors": {"x": ["no"]}},
        ),
        (
            lambda: Malformed("unreadable"),
            400,
            "malformed-request",
            "Malformed request",
            "unreadable",
            {},
            {},
        ),
        (
            lambda: Unauthorized(),
            401,
            "unauthorized",
            "Unauthorized",
            "a valid bearer token is required",
            {"WWW-Authenticate": 'Bearer realm="postback"'},
            {},
        ),
        (
            lambda: NotFound(kind="job", id="job_1"),
            404,
            "not-found",
            "Not found",
            "no job job_1",
            {},
            {},
        ),
        (
            lambda: Conflict("ended", state="completed"),
            409,
            "conflict",
            "Conflict",
            "ended",
            {},
            {},
        ),
        (
            lambda: RateLimited("2.5", limit=10, detail="too fast"),
            429,
            "rate-limited",
            "Too many requests",
            "too fast",
            {
                "RateLimit-Limit": "10",
                "RateLimit-Remaining": "0",
                "RateLimit-Reset": "3",
                "Retry-After": "3",
            },
            {},
        ),
        (
            lambda: BacklogFull("3 waiting", used=3, limit=3),
            429,
            "quota-exceeded",
            "Quota exceeded",
            "3 waiting",
            {"Retry-After": "5"},
            {},
        ),
        (
            lambda: RedisFault("gone", cause="unreachable", retry_after_seconds=5),
            503,
            "unavailable",
            "Service unavailable",
            "gone",
            {"Retry-After": "5"},
            {"cause": "unreachable"},
        ),
        (
            lambda: NotDurable("WAITAOF failed"),
            503,
            "unavailable",
            "Service unavailable",
            "the job could not be confirmed on disk; retry (with the same Idempotency-Key to be "
            "safe)",
            {"Retry-After": "1"},
            {},
        ),
        (
            lambda: Misconfigured("POSTBACK_SECRET='hunter2' is wrong"),
            503,
            "unavailable",
            "Service unavailable",
            "the service is not configured to do this; its operator has been told",
            {},
            {},
        ),
        (
            lambda: PostbackError("a kind nobody gave a row"),
            500,
            "internal",
            "Internal Server Error",
            "an unexpected error occurred",
            {},
            {},
        ),
    ],
)
def test_the_table_renders_each_kind_as_problem_json(
    app, make, status, slug, title, detail, headers, members
):
    """A domain error raised in a view is answered by its row: status, type, title, headers."""
    reply = _raising(app, make())
    assert reply.status_code == status and reply.mimetype == PROBLEM_JSON
    assert reply.json == {
        "type": f"urn:postback:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "/raise",
        **members,
    }
    assert {name: reply.headers.get(name) for name in headers} == headers


def test_a_store_conflict_is_a_409_problem(client, partner, app, redis_client):
    """The idempotency store raises Conflict (state "processing") for a key that the
    marker of an earlier version holds; the API answers 409."""
    import json

    from app import idempotency as idem

    store = app.extensions["postback"].idempotency
    body = {"type": "echo"}
    marker = {"state": "processing", "fingerprint": idem.fingerprint(body)}
    redis_client.set(store.record_key(partner["id"], "order-7"), json.dumps(marker), ex=60)
    with pytest.raises(Conflict) as raised:
        store.lookup(partner["id"], "order-7", idem.fingerprint(body))
    assert raised.value.state == "processing"
    reply = client.post(
        "/v1/jobs", json=body, headers={**partner["headers"], "Idempotency-Key": "order-7"}
    )
    assert reply.status_code == 409 and reply.mimetype == PROBLEM_JSON
    assert reply.json["type"] == "urn:postback:problem:conflict"
    assert reply.json["detail"] == (
        "a request with this Idempotency-Key is still being processed; retry"
    )


def test_a_partner_past_its_waits_gets_a_429_from_the_store(settings, redis_client, partner):
    """Waits raises LimitExceeded past POSTBACK_PARTNER_MAX_WAITS: a 429 with Retry-After: 1."""
    from dataclasses import asdict, replace

    from app import create_app

    app = create_app(asdict(replace(settings, partner_max_waits=1)), client=redis_client)
    client = app.test_client()
    job = client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"]).json
    waits = app.extensions["postback"].waits
    with waits.hold(partner["id"], 30):
        with pytest.raises(LimitExceeded) as raised, waits.hold(partner["id"], 30):
            pass
        assert (raised.value.limit, raised.value.retry_after_seconds) == (1, 1)
        reply = client.get(f"/v1/jobs/{job['id']}?wait=5", headers=partner["headers"])
    assert reply.status_code == 429 and reply.mimetype == PROBLEM_JSON
    assert reply.json["type"] == "urn:postback:problem:rate-limited"
    assert reply.json["title"] == "Too many requests"
    assert "POSTBACK_PARTNER_MAX_WAITS=1" in reply.json["detail"]
    assert reply.headers["Retry-After"] == "1"
    # The partner's rate-limit headers still come with it.
    assert "RateLimit-Limit" in reply.headers


def test_a_disabled_partner_is_a_409_naming_it(client, partner, admin_headers):
    """The partner store raises PartnerDisabled, a Conflict: rotating its key is a 409."""
    pid = partner["id"]
    assert client.delete(f"/v1/admin/partners/{pid}", headers=admin_headers).status_code == 204
    reply = client.post(f"/v1/admin/partners/{pid}/rotate-key", headers=admin_headers)
    assert reply.status_code == 409 and reply.mimetype == PROBLEM_JSON
    assert reply.json["detail"] == f"partner {pid} is disabled"
