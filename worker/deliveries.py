"""What a job's webhook deliveries leave behind: timeline entries and metrics.

`callbacks` reports each attempt, delivery, dead letter and replay to this
observer; the writes it queues join the delivery's own atomic step, so the
job's timeline and Postback's metrics say exactly what the outbox recorded.
"""

from __future__ import annotations

import redis

from callbacks.model import Attempt, Delivery
from postback import clock, timeline
from postback import metrics as pm


class JobTimeline:
    """The observer Postback wires into its outbox: the job's timeline and the metrics."""

    def on_attempt(
        self, writes: redis.client.Pipeline, delivery: Delivery, attempt: Attempt
    ) -> None:
        timeline.record(
            writes,
            delivery.message.subject,
            timeline.Event.DELIVERY_ATTEMPT,
            attempt=attempt.number,
            status_code=attempt.status_code,
            duration_ms=attempt.duration_ms,
            outcome=str(attempt.outcome),
        )
        pm.counter(writes, "postback_delivery_attempts_total", {"outcome": str(attempt.outcome)})
        pm.observe(writes, "postback_delivery_attempt_seconds", attempt.duration_ms / 1000)

    def on_delivered(self, writes: redis.client.Pipeline, delivery: Delivery) -> None:
        timeline.record(
            writes, delivery.message.subject, timeline.Event.DELIVERED, webhook_id=delivery.id
        )
        lag = clock.now() - delivery.message.created_at
        pm.observe(writes, "postback_delivery_lag_seconds", lag)

    def on_dead(
        self, writes: redis.client.Pipeline, delivery: Delivery, dead_letter_id: str
    ) -> None:
        timeline.record(
            writes,
            delivery.message.subject,
            timeline.Event.DEAD_LETTERED,
            webhook_id=delivery.id,
            dead_letter_id=dead_letter_id,
        )

    def on_reopened(
        self, writes: redis.client.Pipeline, delivery: Delivery, *, replay: bool
    ) -> None:
        event = timeline.Event.REPLAYED if replay else timeline.Event.REDELIVERY
        timeline.record(writes, delivery.message.subject, event, webhook_id=delivery.id)
