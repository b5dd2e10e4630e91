"""The delivery loop: claim due events, post them from a thread pool, settle each attempt.

Many requests are in flight per process, so a slow receiver holds one thread,
not the loop. Retries are scheduled in Redis (the outbox's due set), never slept on.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from callbacks import outbox as ob
from callbacks.errors import SecretError
from callbacks.outbox import Attempt, Outbox
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.secrets import SecretStore
from callbacks.sender import Response, Sender
from callbacks.signing import headers as signed_headers
from postback import clock

log = logging.getLogger(__name__)

# Attempt outcomes, as the attempt log records them.
SUCCEEDED = "succeeded"
FAILED = "failed"
GONE = "gone"


class Dispatcher:
    """Delivers due events until stopped; `deliver_once` makes a single attempt."""

    def __init__(
        self,
        outbox: Outbox,
        secrets: SecretStore,
        sender: Sender,
        *,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        concurrency: int = 32,
        poll_seconds: float = 0.05,
    ) -> None:
        self.outbox = outbox
        self.secrets = secrets
        self.sender = sender
        self.policy = policy
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self._slots = threading.BoundedSemaphore(concurrency)

    @property
    def lease_seconds(self) -> float:
        """How long a claimed event stays ours: one attempt, with room to settle it."""
        return self.policy.timeout_seconds * 2 + 5

    def run(self, stop: threading.Event) -> None:
        """Claim and deliver until `stop` is set; in-flight attempts finish first."""
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="delivery") as pool:
            while not stop.is_set():
                free = self._free_slots()
                ids = (
                    self.outbox.claim(limit=free, lease_seconds=self.lease_seconds) if free else []
                )
                for event_id in ids:
                    self._slots.acquire()
                    pool.submit(self._deliver_and_release, event_id)
                if len(ids) < max(free, 1):
                    stop.wait(self.poll_seconds)

    def _free_slots(self) -> int:
        free = 0
        while self._slots.acquire(blocking=False):
            free += 1
        for _ in range(free):
            self._slots.release()
        return free

    def _deliver_and_release(self, event_id: str) -> None:
        try:
            self.deliver_once(event_id)
        except Exception:
            # The claim lapses and the event falls due again: nothing is lost.
            log.exception("delivery attempt crashed", extra={"event_id": event_id})
        finally:
            self._slots.release()

    def deliver_once(self, event_id: str) -> str | None:
        """Make one attempt at `event_id` and settle it; returns the new delivery status."""
        event = self.outbox.get(event_id)
        if event is None or event["status"] in (ob.DELIVERED, ob.DEAD):
            self.outbox.redis.zrem(ob.DUE_KEY, event_id)
            return None
        attempt_number = event["attempts"] + 1
        at = clock.now()
        try:
            secrets = self.secrets.signing_secrets(event["owner"])
            headers = signed_headers(secrets, event["id"], int(at), event["body"])
        except SecretError as exc:
            response = Response(status_code=None, duration_ms=0, error=f"signing: {exc}")
        else:
            response = self.sender.post(event["url"], event["body"], headers)
        status, outcome, next_at = self._judge(event, attempt_number, response)
        attempt = Attempt(
            attempt=attempt_number,
            at=at,
            status_code=response.status_code,
            duration_ms=response.duration_ms,
            error=response.error,
            outcome=outcome,
        )
        self.outbox.settle(event_id, attempt, status=status, next_at=next_at)
        log.info(
            "delivery attempt",
            extra={
                "event_id": event_id,
                "attempt": attempt_number,
                "outcome": outcome,
                "status_code": response.status_code,
                "duration_ms": response.duration_ms,
            },
        )
        return status

    def _judge(
        self, event: dict, attempt_number: int, response: Response
    ) -> tuple[str, str, float | None]:
        """(delivery status, attempt outcome, next due time) after one attempt."""
        if response.ok:
            return ob.DELIVERED, SUCCEEDED, None
        if response.status_code == 410:
            return ob.DEAD, GONE, None
        age = clock.now() - event["created_at"]
        if self.policy.gives_up(attempt_number, age):
            return ob.DEAD, FAILED, None
        retry_after = response.retry_after_seconds if response.status_code in (429, 503) else None
        delay = self.policy.delay_seconds(attempt_number, retry_after_seconds=retry_after)
        return ob.RETRYING, FAILED, clock.now() + delay
