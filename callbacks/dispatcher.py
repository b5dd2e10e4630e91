"""The delivery loop: claim due events, post them from a thread pool, settle each attempt.

Many requests are in flight per process, bounded globally and per destination,
so a slow receiver holds a few threads, not the loop. Before each attempt the
destination's circuit breaker is asked; an open circuit defers the event
without spending an attempt. Retries are scheduled in Redis, never slept on.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from callbacks import outbox as ob
from callbacks.breaker import CircuitBreaker, Permit
from callbacks.deadletters import DeadLetters
from callbacks.errors import SecretError
from callbacks.outbox import Attempt, Outbox
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.secrets import SecretStore
from callbacks.sender import Response, Sender
from callbacks.signing import headers as signed_headers
from postback import clock, logs
from postback import metrics as pm

log = logging.getLogger(__name__)

# Attempt outcomes, as the attempt log records them.
SUCCEEDED = "succeeded"
FAILED = "failed"
GONE = "gone"

# An event whose destination has no free slot here waits about this long.
BUSY_DEFER_SECONDS = 0.5
EXPIRE_EVERY_SECONDS = 60.0


class Dispatcher:
    """Delivers due events until stopped; `deliver_once` makes a single attempt."""

    def __init__(
        self,
        outbox: Outbox,
        secrets: SecretStore,
        sender: Sender,
        breaker: CircuitBreaker,
        *,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        concurrency: int = 256,
        per_destination: int = 48,
        poll_seconds: float = 0.05,
        dead_letter_retention_seconds: float = 0,
    ) -> None:
        self.outbox = outbox
        self.secrets = secrets
        self.sender = sender
        self.breaker = breaker
        self.policy = policy
        self.concurrency = concurrency
        self.per_destination = per_destination
        self.poll_seconds = poll_seconds
        self.dead_letter_retention_seconds = dead_letter_retention_seconds
        self._free = concurrency
        self._in_flight: dict[str, int] = {}
        self._waiting: dict[str, collections.deque[str]] = {}
        self._lock = threading.Condition()

    @property
    def lease_seconds(self) -> float:
        """How long a claimed event stays ours: one attempt, with room to settle it."""
        return self.policy.timeout_seconds * 2 + 5

    def run(self, stop: threading.Event) -> None:
        """Claim and deliver until `stop` is set; in-flight attempts finish first."""
        next_expiry = time.monotonic()
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="delivery") as pool:
            while not stop.is_set():
                with self._lock:
                    free = self._free
                claimed = []
                if free:
                    claimed = self.outbox.claim(limit=free, lease_seconds=self.lease_seconds)
                for event_id, event in claimed:
                    with self._lock:
                        self._free -= 1
                    pool.submit(self._deliver_and_release, event_id, event)
                if self.dead_letter_retention_seconds and time.monotonic() >= next_expiry:
                    DeadLetters(self.outbox.redis).expire(self.dead_letter_retention_seconds)
                    next_expiry = time.monotonic() + EXPIRE_EVERY_SECONDS
                if not claimed or len(claimed) < free:
                    stop.wait(self.poll_seconds)
                else:
                    with self._lock:
                        # Every slot is busy: wait for one to free up.
                        self._lock.wait_for(lambda: self._free > 0 or stop.is_set(), timeout=1)
        self._release_waiting()

    def _deliver_and_release(self, event_id: str, event: dict[str, Any] | None) -> None:
        """Deliver a claimed event, then whatever waits here for the same destination."""
        try:
            if event is None:
                self._guarded(event_id, None)
                return
            dest = event["destination"]
            if not self._take_slot(dest, event_id):
                return
            # The first attempt uses the record read with the claim; events that
            # waited in line here are read again when their turn comes.
            self._guarded(event_id, event)
            while (current := self._next_for(dest)) is not None:
                self._guarded(current, self.outbox.get(current))
        finally:
            with self._lock:
                self._free += 1
                self._lock.notify_all()

    def _guarded(self, event_id: str, event: dict[str, Any] | None) -> None:
        try:
            self._deliver_bound(event_id, event)
        except Exception:
            # The claim lapses and the event falls due again: nothing is lost.
            log.exception("delivery attempt of %s crashed", event_id)

    def _take_slot(self, dest: str, event_id: str) -> bool:
        """Take a slot of `dest`; if all are busy, wait in line here or, past that, in Redis."""
        with self._lock:
            if self._in_flight.get(dest, 0) < self.per_destination:
                self._in_flight[dest] = self._in_flight.get(dest, 0) + 1
                return True
            line = self._waiting.setdefault(dest, collections.deque())
            if len(line) < self.per_destination:
                line.append(event_id)
                return False
        self.outbox.defer(event_id, clock.now() + BUSY_DEFER_SECONDS * random.uniform(1, 2))
        return False

    def _next_for(self, dest: str) -> str | None:
        """The next event waiting for `dest` (keeping the slot), or None (giving it back)."""
        with self._lock:
            line = self._waiting.get(dest)
            if line:
                return line.popleft()
            self._waiting.pop(dest, None)
            self._in_flight[dest] -= 1
            if not self._in_flight[dest]:
                del self._in_flight[dest]
            return None

    def _release_waiting(self) -> None:
        """On stop: hand events still waiting here back to the schedule, due now."""
        with self._lock:
            waiting = [event_id for line in self._waiting.values() for event_id in line]
            self._waiting.clear()
        for event_id in waiting:
            self.outbox.defer(event_id, clock.now())

    def deliver_once(self, event_id: str) -> str | None:
        """Make one attempt at `event_id` (or defer it) and settle it; returns its status."""
        return self._deliver_bound(event_id, self.outbox.get(event_id))

    def _deliver_bound(self, event_id: str, event: dict[str, Any] | None) -> str | None:
        """`_deliver` with the event's context bound to every log line."""
        if event is None:
            return self._deliver(event_id, None)
        with logs.bind(
            webhook_id=event_id,
            job_id=event["subject"],
            partner_id=event["owner"],
            destination=event["destination"],
            request_id=event["headers"].get("x-request-id"),
        ):
            return self._deliver(event_id, event)

    def _deliver(self, event_id: str, event: dict[str, Any] | None) -> str | None:
        if event is None or event["status"] in (ob.DELIVERED, ob.DEAD):
            self.outbox.redis.zrem(ob.DUE_KEY, event_id)
            return None
        if clock.now() - event["round_started_at"] >= self.policy.window_seconds:
            self.outbox.settle(
                event, None, status=ob.DEAD, error=event["last_error"] or "retry window exhausted"
            )
            return ob.DEAD
        dest = event["destination"]
        permit = self.breaker.acquire(dest)
        if not permit.allowed:
            retry_at = permit.retry_at or clock.now() + 1
            self.outbox.defer(event_id, retry_at, circuit_of=dest)
            return event["status"]
        return self._attempt(event, permit)

    def _attempt(self, event: dict[str, Any], permit: Permit) -> str:
        at = clock.now()
        try:
            secrets = self.secrets.signing_secrets(event["owner"])
            headers = signed_headers(secrets, event["id"], int(at), event["body"])
        except SecretError as exc:
            response = Response(status_code=None, duration_ms=0, error=f"signing: {exc}")
        else:
            response = self.sender.post(
                event["url"], event["body"], {**event["headers"], **headers}
            )
        responded = response.ok or response.status_code == 410
        if not (responded and permit.clean):
            self.breaker.record(event["destination"], ok=responded, probe=permit.probe)
        status, outcome, next_at = self._judge(event, response)
        attempt = Attempt(
            attempt=event["attempts"] + 1,
            at=at,
            status_code=response.status_code,
            duration_ms=response.duration_ms,
            error=response.error,
            outcome=outcome,
        )

        def measure(pipe: Any) -> None:
            pm.counter(pipe, "postback_delivery_attempts_total", {"outcome": outcome})
            pm.observe(pipe, "postback_delivery_attempt_seconds", response.duration_ms / 1000)
            if status == ob.DELIVERED:
                pm.observe(pipe, "postback_delivery_lag_seconds", clock.now() - event["created_at"])

        self.outbox.settle(event, attempt, status=status, next_at=next_at, also=measure)
        log.info(
            "delivery attempt %s of %s: %s (%s, %d ms)",
            attempt.attempt,
            event["id"],
            outcome,
            response.status_code or response.error,
            response.duration_ms,
        )
        return status

    def _judge(self, event: dict[str, Any], response: Response) -> tuple[str, str, float | None]:
        """(delivery status, attempt outcome, next due time) after one attempt."""
        if response.ok:
            return ob.DELIVERED, SUCCEEDED, None
        if response.status_code == 410:
            return ob.DEAD, GONE, None
        age = clock.now() - event["round_started_at"]
        if self.policy.gives_up(event["round_attempts"] + 1, age):
            return ob.DEAD, FAILED, None
        retry_after = response.retry_after_seconds if response.status_code in (429, 503) else None
        delay = self.policy.delay_seconds(
            event["round_attempts"] + 1, retry_after_seconds=retry_after
        )
        return ob.RETRYING, FAILED, clock.now() + delay
