"""What one answer from a receiver means: for its delivery, and for its lane's share.

Pure functions of the retry policy, the delivery and the `Response` (no I/O):
the courier asks them after each attempt and does what they say. What the
answer means for the destination's circuit is the breaker's own rule
(`callbacks.breaker.counts_against`).
"""

from __future__ import annotations

from callbacks.claims import Settlement
from callbacks.lanes import Signal
from callbacks.model import Attempt, Delivery, DeliveryStatus, Outcome
from callbacks.policy import RetryPolicy
from callbacks.sender import Response
from postback import clock

# Answers whose `Retry-After` is honoured.
RETRY_AFTER_STATUSES = frozenset({429, 503})
# The receiver says the endpoint is gone for good: no further attempt.
GONE_STATUS = 410


def settlement(policy: RetryPolicy, delivery: Delivery, response: Response) -> Settlement:
    """How `delivery` leaves its holder after the attempt that got `response`: delivered,
    dead (410, or out of attempts or time), or retrying after the policy's delay."""
    attempt = Attempt(
        number=delivery.attempts + 1,
        at=clock.now() - response.duration_ms / 1000,
        status_code=response.status_code,
        duration_ms=response.duration_ms,
        error=response.error,
        outcome=Outcome.SUCCEEDED
        if response.ok
        else Outcome.GONE
        if response.status_code == GONE_STATUS
        else Outcome.FAILED,
    )
    if response.ok:
        return Settlement(status=DeliveryStatus.DELIVERED, attempt=attempt)
    if response.status_code == GONE_STATUS:
        return Settlement(status=DeliveryStatus.DEAD, attempt=attempt)
    age = clock.now() - delivery.round_started_at
    if policy.gives_up(delivery.round_attempts + 1, age):
        return Settlement(status=DeliveryStatus.DEAD, attempt=attempt)
    retry_after = (
        response.retry_after_seconds if response.status_code in RETRY_AFTER_STATUSES else None
    )
    delay = policy.delay_seconds(delivery.round_attempts + 1, retry_after_seconds=retry_after)
    return Settlement(status=DeliveryStatus.RETRYING, attempt=attempt, next_at=clock.now() + delay)


def lane_signal(response: Response, timeout_seconds: float) -> Signal:
    """What `response` says about its lane's share: no answer, throttled, a fast success
    (within a third of the attempt's deadline), or merely an answer."""
    if response.status_code is None:
        return Signal.SILENT
    if response.throttled:
        return Signal.THROTTLE
    if response.ok and response.duration_ms / 1000 <= timeout_seconds / 3:
        return Signal.FAST
    return Signal.SLOW
