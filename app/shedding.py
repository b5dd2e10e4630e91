"""While Redis times out, this API process answers at once instead of waiting on it again.

A frozen or overloaded Redis makes every request that reaches it wait the full
Redis timeout; with all of a process's threads waiting, even requests that need
no Redis queue up behind them. So once a request times out, the requests that
follow get the same 503 at once for `hold_seconds`; then one request goes
through as a probe. If the probe is answered the outage is over; if it times out
too, another hold begins. Only timeouts are shed this way: every other fault is
answered quickly by Redis itself. `/healthz`, `/readyz` and the documents are
never held back (`/readyz` asks Redis itself, within the timeout).
"""

from __future__ import annotations

import threading
import time

from flask import Flask, Response, g, request

from postback.errors import RedisFault
from postback.faults import Cause, Fault

# How long requests are answered without asking Redis after one timed out.
HOLD_SECONDS = 1.0
_EXEMPT_ENDPOINTS = {"health.healthz", "health.readyz", "health.openapi", "static"}
_EXEMPT_BLUEPRINTS = {"docs"}


class Shed(RedisFault):
    """A request answered without asking Redis, which just timed out: `fault` says so."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(
            fault.detail, cause=str(fault.cause), retry_after_seconds=fault.retry_after_seconds
        )
        self.fault = fault


class Shedder:
    """One API process's view of a Redis outage (thread-safe)."""

    def __init__(self, *, hold_seconds: float = HOLD_SECONDS, probe_seconds: float) -> None:
        self.hold_seconds = hold_seconds
        # A probe that never reported back (it cannot, normally) is replaced after this long.
        self.probe_seconds = probe_seconds
        self._lock = threading.Lock()
        self._fault: Fault | None = None
        self._held_until = 0.0
        self._probe_until: float | None = None

    def admit(self) -> bool:
        """Let a request go on to Redis (True if it is the outage's probe), or raise Shed."""
        with self._lock:
            if self._fault is None:
                return False
            now = time.monotonic()
            probing = self._probe_until is not None and now < self._probe_until
            if probing or now < self._held_until:
                raise Shed(self._fault)
            self._probe_until = now + self.probe_seconds
            return True

    def settle(self, fault: Fault | None, *, probe: bool) -> None:
        """After a request that went on: a timeout holds requests back; an answered probe ends
        the outage. (Other requests answered meanwhile may have started before it began.)"""
        with self._lock:
            if fault is not None and fault.cause is Cause.TIMEOUT:
                self._fault = fault
                self._held_until = time.monotonic() + self.hold_seconds
                self._probe_until = None
            elif probe:
                self._fault = None
                self._probe_until = None


def register(app: Flask, shedder: Shedder) -> None:
    """Hold requests back through `shedder` before they reach a view."""

    @app.before_request
    def hold_back() -> None:
        if (
            request.endpoint is None
            or request.endpoint in _EXEMPT_ENDPOINTS
            or request.blueprint in _EXEMPT_BLUEPRINTS
        ):
            return
        g.shedding_probe = shedder.admit()

    @app.after_request
    def settle(response: Response) -> Response:
        if "shedding_probe" in g:
            shedder.settle(g.get("redis_fault"), probe=g.shedding_probe)
        return response
