"""Redis faults by name: which one an exception is, what it means, and how to wait it out.

`classify(exc)` names the fault behind a Redis exception, or returns None for an
error that is not the server's condition (a bug: a wrong type, a bad script).
Every process uses it: the API to answer 503 naming the cause, `/readyz` to
report it, workers and delivery processes to wait and retry instead of crashing.
`FaultWatch` logs a component's faults once per change of state, not per retry.

redis-py raises, for the conditions named here::

    RedisError
    ├── ConnectionError          unreachable (refused, reset, closed; no primary known to Sentinel)
    │   ├── AuthenticationError  auth (NOAUTH, WRONGPASS)
    │   ├── BusyLoadingError     LOADING
    │   └── PrimaryMoved         READONLY from the primary Sentinel named (postback.resend)
    ├── TimeoutError             timeout (frozen, overloaded or lost server)
    └── ResponseError
        ├── ReadOnlyError        READONLY (a replica, e.g. after a failover)
        ├── OutOfMemoryError     OOM (maxmemory reached under noeviction)
        └── (plain)              MISCONF, BUSY, MASTERDOWN, NOREPLICAS: by the error code
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

import redis
import redis.exceptions

from postback.resend import PrimaryMoved

T = TypeVar("T")


class Cause(StrEnum):
    """The name of a Redis fault, as `cause` in API answers, /readyz and logs."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    LOADING = "loading"
    BUSY = "busy"
    MISCONF = "misconf"
    READONLY = "readonly"
    MASTERDOWN = "masterdown"
    NOREPLICAS = "noreplicas"
    OOM = "oom"
    # Not the server's: this process had no connection free (every one busy) in time.
    OVERLOADED = "overloaded"


@dataclass(frozen=True)
class Fault:
    """A named Redis fault: what to tell a caller, and when to ask it to come back."""

    cause: Cause
    detail: str
    retry_after_seconds: int


# Conditions that pass by themselves within seconds, and those that need an operator.
_SOON_SECONDS = 5
_LATER_SECONDS = 30
_DETAILS: dict[Cause, tuple[str, int]] = {
    Cause.UNREACHABLE: ("the job store is unreachable", _SOON_SECONDS),
    Cause.AUTH: ("the job store refused Postback's credentials", _LATER_SECONDS),
    Cause.LOADING: ("the job store is loading its data (LOADING)", _SOON_SECONDS),
    Cause.BUSY: ("the job store is busy running a script (BUSY)", _SOON_SECONDS),
    Cause.MISCONF: (
        "the job store refuses writes: its disk is full or its last save failed (MISCONF)",
        _LATER_SECONDS,
    ),
    Cause.READONLY: ("the job store is a read-only replica (READONLY)", _SOON_SECONDS),
    Cause.MASTERDOWN: (
        "the job store is a replica that lost its primary (MASTERDOWN)",
        _SOON_SECONDS,
    ),
    Cause.NOREPLICAS: (
        "the job store refuses writes: too few of its replicas are in reach (NOREPLICAS)",
        _SOON_SECONDS,
    ),
    Cause.OOM: ("the job store is out of memory (OOM)", _LATER_SECONDS),
    Cause.OVERLOADED: (
        "too many requests at once: no connection to the job store was free in time",
        1,
    ),
}

# Error replies by their code, the first word of the server's message. In a
# pipeline redis-py prefixes the message with the failing command.
_CODES = {
    "MISCONF": Cause.MISCONF,
    "BUSY": Cause.BUSY,
    "MASTERDOWN": Cause.MASTERDOWN,
    "NOREPLICAS": Cause.NOREPLICAS,
    "READONLY": Cause.READONLY,
    "OOM": Cause.OOM,
    "LOADING": Cause.LOADING,
    "NOAUTH": Cause.AUTH,
    "WRONGPASS": Cause.AUTH,
}
# What redis-py's BlockingConnectionPool raises when no connection is free in time.
_POOL_EXHAUSTED = "No connection available."
_CODE = re.compile(r"(?:^|of pipeline caused error: )([A-Z]+)\b")


def fault(cause: Cause, *, timeout_seconds: float | None) -> Fault:
    """The fault named `cause`; a timeout's detail says how long was waited, if known."""
    if cause is Cause.TIMEOUT:
        waited = "in time" if timeout_seconds is None else f"within {timeout_seconds:g} s"
        return Fault(cause, f"the job store did not answer {waited}", _SOON_SECONDS)
    detail, retry_after = _DETAILS[cause]
    return Fault(cause, detail, retry_after)


def classify(exc: BaseException, *, timeout_seconds: float | None) -> Fault | None:
    """The Redis fault behind `exc`, or None if `exc` is no fault of the server's state.

    `timeout_seconds` is the client's timeout, for a timeout's detail.
    """
    cause = _cause(exc)
    return None if cause is None else fault(cause, timeout_seconds=timeout_seconds)


def _cause(exc: BaseException) -> Cause | None:
    if isinstance(exc, redis.exceptions.BusyLoadingError):
        return Cause.LOADING
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return Cause.AUTH
    if isinstance(exc, PrimaryMoved):
        return Cause.READONLY
    if isinstance(exc, redis.ConnectionError) and str(exc) == _POOL_EXHAUSTED:
        return Cause.OVERLOADED
    if isinstance(exc, redis.ConnectionError):
        return Cause.UNREACHABLE
    if isinstance(exc, redis.TimeoutError):
        return Cause.TIMEOUT
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return Cause.READONLY
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return Cause.OOM
    if isinstance(exc, redis.ResponseError):
        code = getattr(exc, "status_code", None)
        if code is None:
            match = _CODE.search(str(exc.args[0]) if exc.args else "")
            code = match.group(1) if match else None
        return _CODES.get(code) if code else None
    return None


def pause_seconds(failures: int, *, max_seconds: float = 5.0) -> float:
    """How long to wait before trying again after `failures` in a row: from about 0.25 s,
    doubling, jittered, at most `max_seconds` (so work resumes soon after Redis does)."""
    return min(max_seconds, 0.25 * 2 ** max(0, failures - 1)) * random.uniform(0.5, 1.0)


def patiently(
    step: Callable[[], T],
    *,
    watch: FaultWatch,
    timeout_seconds: float | None,
    within_seconds: float | None = None,
) -> T:
    """`step()`, called again after each Redis fault (pausing longer each time) until it
    succeeds, the faults logged through `watch`. An error that is no fault is raised at
    once; with `within_seconds`, so is a fault once that long has passed."""
    deadline = None if within_seconds is None else time.monotonic() + within_seconds
    while True:
        try:
            result = step()
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=timeout_seconds)
            if found is None or (deadline is not None and time.monotonic() >= deadline):
                raise
            time.sleep(pause_seconds(watch.failed(found)))
            continue
        watch.recovered()
        return result


class FaultWatch:
    """Logs one component's Redis faults once per change of state.

    `failed(fault)` logs when a fault starts or its cause changes (and, with
    `repeat_seconds`, again while it lasts); `recovered()` logs once when Redis
    answers again. Log records carry `component` and `redis_fault` (the cause)
    or `redis_recovered_after_seconds`. Safe to share between threads.
    """

    def __init__(
        self,
        component: str,
        *,
        logger: logging.Logger | None = None,
        repeat_seconds: float | None = None,
    ) -> None:
        self.component = component
        self.log = logger or logging.getLogger(__name__)
        self.repeat_seconds = repeat_seconds
        self.failures = 0
        self._cause: Cause | None = None
        self._since = 0.0
        self._logged_at = 0.0
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        return self._cause is not None

    def failed(self, fault: Fault) -> int:
        """Note a failure from `fault`; how many failures in a row there have been."""
        with self._lock:
            now = time.monotonic()
            self.failures += 1
            changed = fault.cause != self._cause
            due = self.repeat_seconds is not None and now - self._logged_at >= self.repeat_seconds
            if self._cause is None:
                self._since = now
            self._cause = fault.cause
            if changed or due:
                self._logged_at = now
                self.log.warning(
                    "%s: %s; waiting for it",
                    self.component,
                    fault.detail,
                    extra={"component": self.component, "redis_fault": str(fault.cause)},
                )
            return self.failures

    def recovered(self) -> None:
        """Note that Redis answered; logs once if it had been failing."""
        if self._cause is None:
            return
        with self._lock:
            if self._cause is None:
                return
            seconds = round(time.monotonic() - self._since, 1)
            self._cause = None
            self.failures = 0
            self.log.info(
                "%s: the job store answers again after %.1f s",
                self.component,
                seconds,
                extra={"component": self.component, "redis_recovered_after_seconds": seconds},
            )
