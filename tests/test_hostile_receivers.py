"""Receivers that trickle, hang, lie or crash the parser: every attempt ends at its deadline,
is recorded, and counts where it should."""

from __future__ import annotations

import pytest

from callbacks.breaker import circuit_id
from callbacks.model import DeliveryStatus, destination
from tests.helpers import SECRET_OWNER, add_event
from tests.hostile import Hostile
from worker.process import dispatcher

DEADLINE_SECONDS = 1.0


@pytest.fixture
def delivery(settings, redis_client):
    """A dispatcher whose attempts have a 1 s deadline."""
    deliver = dispatcher(settings, redis_client)
    deliver.sender.timeout_seconds = DEADLINE_SECONDS
    return deliver


def failures_on_record(delivery, url):
    """The consecutive failures the breaker holds for the test owner's circuit to `url`."""
    return delivery.breaker.state(SECRET_OWNER, destination(url))["consecutive_failures"]


@pytest.mark.parametrize(
    "mode", ["trickle_status", "trickle_headers", "trickle_body", "continue_forever", "hang"]
)
def test_an_answer_withheld_or_trickled_is_a_timeout_at_the_deadline(mode, outbox, delivery):
    """Whatever the receiver withholds, the attempt is a recorded `timeout` within deadline + 1 s,
    the connection is closed, the breaker counts it and the delivery is retried."""
    with Hostile(mode, interval_seconds=0.1) as receiver:
        event_id = add_event(outbox, receiver.url)
        delivery.drain()
        (attempt,) = outbox.attempts(event_id)
        receiver.wait_closed(1, timeout_seconds=5)
    assert attempt["error"] == "timeout" and attempt["status_code"] is None
    assert attempt["attempt"] == 1 and attempt["outcome"] == "failed"
    assert DEADLINE_SECONDS * 1000 <= attempt["duration_ms"] <= (DEADLINE_SECONDS + 1) * 1000
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.RETRYING and record.attempts == 1
    assert failures_on_record(delivery, receiver.url) == 1


def test_a_connection_closed_mid_answer_is_a_recorded_failure(outbox, delivery):
    """A body cut short by the receiver is a failed attempt with its reason, counted against it."""
    with Hostile("close_mid_answer") as receiver:
        event_id = add_event(outbox, receiver.url)
        delivery.drain()
        assert len(receiver.wait_for(1)) == 1
    (attempt,) = outbox.attempts(event_id)
    assert attempt["status_code"] is None and attempt["error"] == "connection closed"
    assert outbox.get(event_id).status == DeliveryStatus.RETRYING
    assert failures_on_record(delivery, receiver.url) == 1


def test_a_huge_answer_is_read_only_up_to_the_cap(outbox, delivery):
    """A 10 MiB answer body is not read: 64 KiB at most, then the connection is closed."""
    with Hostile("big_body", status=200) as receiver:
        event_id = add_event(outbox, receiver.url)
        delivery.drain()
        (seen,) = receiver.wait_closed(1, timeout_seconds=5)
    assert outbox.get(event_id).status == DeliveryStatus.DELIVERED
    # Kernel buffers hold some of what was sent beyond what the client read.
    assert seen.bytes_sent < 2 * 1024 * 1024


@pytest.mark.parametrize("value", ["²", "١٢٠", "1.5", "-3", "Sunday, 06-Nov-94 08:49:37 GMT"])
def test_a_retry_after_that_is_not_strictly_valid_is_ignored(value, outbox, delivery):
    """A Retry-After other than ASCII digits or an IMF-fixdate cannot crash an attempt: it is
    recorded, and the retry follows the backoff policy."""
    with Hostile("answer", status=503, headers=(("Retry-After", value),)) as receiver:
        event_id = add_event(outbox, receiver.url)
        delivery.drain()
        assert len(receiver.wait_for(1)) == 1
    (attempt,) = outbox.attempts(event_id)
    assert attempt["status_code"] == 503 and attempt["error"] == "HTTP 503"
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.RETRYING
    assert record.next_attempt_at - record.last_attempt_at <= delivery.policy.max_seconds + 1


def test_a_4xx_from_a_receiver_that_answered_is_retried_but_not_held_against_the_host(
    outbox, delivery
):
    """A 404 is a failed attempt of that webhook; the host's circuit records nothing."""
    with Hostile("answer", status=404) as receiver:
        event_id = add_event(outbox, receiver.url)
        delivery.drain()
    assert outbox.get(event_id).status == DeliveryStatus.RETRYING
    assert outbox.attempts(event_id)[0]["status_code"] == 404
    circuit = delivery.breaker.keys.circuit(circuit_id(SECRET_OWNER, destination(receiver.url)))
    assert not outbox.redis.exists(circuit)
