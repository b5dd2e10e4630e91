"""One root for every error Postback raises, and a shallow tree of what went wrong.

A class names a kind of failure, not the module it comes from; each carries its
context as attributes, and `str(exc)` (also `exc.detail`) is one sentence fit to
show the caller. Stores and services raise these, never HTTP errors: the API maps
each class to a status, a problem type and headers in one table (`app.errors`),
by the nearest class in the error's MRO that the table names.

Exceptions::

    PostbackError                       detail
    ├── InvalidInput (ValueError)       errors: field → messages, or None
    │   ├── Malformed                   input that cannot be read at all (a header's syntax)
    │   │   ├── InvalidJson             app.strictjson: a body that is not strict JSON
    │   │   └── UnsupportedMediaType    app.errors: a body not declared JSON
    │   └── CallbacksError              callbacks.errors: the delivery library refuses what
    │       ├── SecretError             it is given (a secret not `whsec_<base64>`,
    │       └── UnsafeUrl               a callback URL it must not call: url, reason, address)
    ├── Unauthorized                    no valid credentials
    │   └── KeyChanged                  postback.ratewindow: the API key no longer leads
    │                                   to the partner a script was told of
    ├── Forbidden                       valid credentials, not allowed here
    ├── NotFound                        kind, id
    │   └── Expired                     it was there; its time is up
    │       └── LinkExpired             app.errors: a signed result link past its expiry
    ├── Conflict                        state: what the thing is in, that forbids the change
    │   ├── PartnerDisabled             app.partners_store: partner_id
    │   └── NotCompleted                app.errors: a job's result before the job completed
    ├── LimitExceeded                   limit, retry_after_seconds
    │   ├── RateLimited                 postback.ratewindow: reset (seconds, as Redis gave it)
    │   └── OverQuota                   worker.quotas: used
    │       ├── RetainedBytesFull
    │       └── BacklogFull
    ├── Unavailable                     retry_after_seconds
    │   ├── RedisFault                  cause (a `postback.faults.Cause` value)
    │   │   └── Shed                    app.shedding: answered without asking Redis: fault
    │   ├── NotReady                    checks: per component, ok or failing and why
    │   ├── NotDurable                  worker.jobs: Redis did not confirm the write on disk
    │   └── EmbeddedRedisError          postback.embedded: could not start, find or stop it
    └── Misconfigured                   what the operator must fix before it can work
        ├── SettingsError (ValueError)  postback.settings: name, value, expected
        ├── HandlerError                worker.registry: a handler module or entry point
        └── RedisNotFound               postback.connection: no REDIS_URL, no embedded server

Every class is raised with its detail first and its context as keywords, so the
generic kinds serve directly (`NotFound(kind="partner", id=partner_id)`); a
subclass exists only where a caller catches it or the API answers it differently.

Outside the tree, on purpose, are the signals between a job's handler and the
worker (`worker.errors`): `RetryableError`, which a handler raises to be run
again, and `JobCancelled` and `JobTimedOut`, which the worker raises into a
handler. They steer a job rather than report a failure of Postback's, and an
`except PostbackError` must never catch one; the last two stay `BaseException`
so that a handler's `except Exception` cannot swallow them either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class PostbackError(Exception):
    """Root of every error Postback raises: `detail` says what went wrong, in one sentence."""

    def __init__(self, detail: str = "", /) -> None:
        super().__init__(detail)

    @property
    def detail(self) -> str:
        return str(self)


class InvalidInput(PostbackError, ValueError):
    """What was given is not acceptable; `errors` names each bad field and its messages."""

    def __init__(self, detail: str, /, *, errors: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.errors: dict[str, Any] | None = dict(errors) if errors else None


class Malformed(InvalidInput):
    """Input that cannot be read at all: not of the syntax it must have."""


class Unauthorized(PostbackError):
    """No valid credentials came with the request."""

    def __init__(self, detail: str = "a valid bearer token is required", /) -> None:
        super().__init__(detail)


class Forbidden(PostbackError):
    """The credentials are valid, but not for this."""


class NotFound(PostbackError):
    """No such thing: `kind` (e.g. "job") and `id`, when known; another owner's thing
    is as missing as one never made."""

    def __init__(
        self, detail: str | None = None, /, *, kind: str | None = None, id: str | None = None
    ) -> None:
        if detail is None:
            detail = f"no {kind} {id}" if kind and id else f"no such {kind or 'thing'}"
        super().__init__(detail)
        self.kind = kind
        self.id = id


class Expired(NotFound):
    """It was there, but its time is up."""


class Conflict(PostbackError):
    """The change does not fit the thing's `state` (e.g. "completed"), when known."""

    def __init__(self, detail: str, /, *, state: str | None = None) -> None:
        super().__init__(detail)
        self.state = state


class LimitExceeded(PostbackError):
    """One more would pass `limit` (when known); try again after `retry_after_seconds`."""

    def __init__(
        self,
        detail: str,
        /,
        *,
        limit: int | None = None,
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds


class Unavailable(PostbackError):
    """The service cannot do it now; try again after `retry_after_seconds`, when known."""

    def __init__(self, detail: str, /, *, retry_after_seconds: int | None = None) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds


class RedisFault(Unavailable):
    """Redis cannot serve: `cause` names the fault (`postback.faults.Cause`'s values)."""

    def __init__(self, detail: str, /, *, cause: str, retry_after_seconds: int) -> None:
        super().__init__(detail, retry_after_seconds=retry_after_seconds)
        self.cause = cause


class NotReady(Unavailable):
    """The service cannot take work: `checks` says, per component, `ok` or `failing`
    (with a `cause` and a `detail`) or `unknown` when it was not checked."""

    def __init__(
        self,
        detail: str,
        /,
        *,
        checks: Mapping[str, Mapping[str, str]],
        retry_after_seconds: int | None = None,
    ) -> None:
        super().__init__(detail, retry_after_seconds=retry_after_seconds)
        self.checks = {name: dict(check) for name, check in checks.items()}


class Misconfigured(PostbackError):
    """Postback is not set up so that it can work: its operator must fix it."""
