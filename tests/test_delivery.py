"""Reliable delivery against real receivers: outcomes, backoff, the breaker, dead letters."""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from callbacks.breaker import circuit_id
from callbacks.deadletters import DeadLetters, Filter
from callbacks.model import DeliveryStatus, destination
from callbacks.policy import RetryPolicy
from postback import clock
from tests.helpers import SECRET_OWNER, add_event
from tests.receiver import Receiver, Reply
from worker.process import dispatcher


def run_due(delivery, *, rounds=1):
    """Attempt every delivery due now, `rounds` times (waiting out the short backoff between)."""
    for number in range(rounds):
        if number:
            time.sleep(delivery.policy.max_seconds + 0.01)
        delivery.drain()


@pytest.fixture
def delivery(settings, redis_client):
    return dispatcher(settings, redis_client)


def test_a_claim_reads_each_delivery_with_its_message(outbox, redis_client):
    """Claimed deliveries come with their messages and a token; a vanished one is dropped."""
    kept = add_event(outbox, "http://127.0.0.1:9/a")
    gone = add_event(outbox, "http://127.0.0.1:9/b")
    redis_client.delete(outbox.keys.message(gone))
    (claimed,) = outbox.claim(limit=10, lease_seconds=60)
    assert claimed.delivery.id == kept and claimed.token
    assert claimed.delivery.message.body == b'{"type":"job.completed"}'
    assert claimed.delivery.claim == claimed.token
    assert outbox.claim(limit=10, lease_seconds=60) == [], "claimed deliveries are leased"
    assert outbox.counts()["scheduled"] == 1


def test_500_then_200_is_delivered_on_the_second_attempt(outbox, delivery, receiver):
    """A failed attempt is retried, with the same webhook-id and a fresh valid signature."""
    receiver.reply(Reply(500))
    event_id = add_event(outbox, receiver.url)
    run_due(delivery, rounds=2)
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id
    Webhook(outbox.secret).verify(second.body, second.headers)
    assert outbox.get(event_id).status == DeliveryStatus.DELIVERED
    assert [a["outcome"] for a in outbox.attempts(event_id)] == ["failed", "succeeded"]
    assert [a["status_code"] for a in outbox.attempts(event_id)] == [500, 200]


def test_410_dead_letters_at_once(outbox, delivery, receiver, redis_client):
    """A 410 Gone ends delivery after one attempt and stores a dead letter."""
    receiver.reply(Reply(410))
    event_id = add_event(outbox, receiver.url)
    run_due(delivery, rounds=2)
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.DEAD and record.attempts == 1
    assert len(receiver.received) == 1
    (letter,) = DeadLetters(redis_client).page(Filter(), limit=10)[0]
    assert letter.id == event_id and letter.last_error == "HTTP 410"


def test_retry_after_on_429_sets_the_next_attempt(outbox, settings, redis_client, receiver):
    """A 429 with Retry-After waits that long (within the policy's bounds)."""
    policy = replace(dispatcher(settings, redis_client).policy, base_seconds=1, max_seconds=60)
    delivery = dispatcher(settings, redis_client)
    delivery.policy = policy
    receiver.reply(Reply(429, headers=(("Retry-After", "30"),)))
    event_id = add_event(outbox, receiver.url)
    before = clock.now()
    run_due(delivery)
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.RETRYING
    assert 29 <= record.next_attempt_at - before <= 31


def test_redirects_are_failed_attempts(outbox, delivery, receiver):
    """A 302 is not followed: the Location is never requested and the attempt failed."""
    receiver.reply(Reply(302, headers=(("Location", receiver.url + "/moved"),)))
    event_id = add_event(outbox, receiver.url)
    run_due(delivery)
    assert [r.path for r in receiver.received] == ["/hook"]
    assert outbox.attempts(event_id)[0]["status_code"] == 302
    assert outbox.get(event_id).status == DeliveryStatus.RETRYING


def test_a_receiver_that_hangs_times_out(outbox, delivery, receiver):
    """An answer slower than the timeout is a failed attempt with error `timeout`."""
    delivery.sender.timeout_seconds = 0.3
    receiver.reply(Reply(200, delay_seconds=1.5))
    event_id = add_event(outbox, receiver.url)
    run_due(delivery)
    (attempt,) = outbox.attempts(event_id)
    assert attempt["error"] == "timeout" and attempt["status_code"] is None
    assert attempt["duration_ms"] < 1200


def test_a_refused_connection_is_retried_then_dead_lettered(outbox, delivery, redis_client):
    """With nobody listening, every attempt fails; after the budget the event is dead."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    event_id = add_event(outbox, f"http://127.0.0.1:{port}/hook")
    run_due(delivery, rounds=3)
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.DEAD and record.attempts == 3
    assert {a["error"] for a in outbox.attempts(event_id)} == {"connection refused"}
    assert [a["attempt"] for a in outbox.attempts(event_id)] == [1, 2, 3]
    letter = DeadLetters(redis_client).get(record.dead_letter_id)
    assert letter.last_error == "connection refused" and letter.dead_at


def test_an_open_circuit_parks_without_spending_attempts(outbox, delivery, receiver):
    """While the circuit is open, due deliveries are parked until it may close, unlogged."""
    dest = destination(receiver.url)
    for _ in range(delivery.breaker.settings.threshold):
        delivery.breaker.record(SECRET_OWNER, dest, healthy=False)
    event_id = add_event(outbox, receiver.url)
    run_due(delivery)
    record = outbox.get(event_id)
    assert record.attempts == 0 and outbox.attempts(event_id) == []
    assert record.next_attempt_at >= clock.now() + delivery.breaker.settings.cooldown_seconds - 2
    assert receiver.received == []
    assert redis_client_of(outbox).sismember(
        outbox.keys.parked(circuit_id(SECRET_OWNER, dest)), event_id
    )


def redis_client_of(outbox):
    return outbox.redis


def test_the_retry_window_dead_letters_an_old_event(outbox, delivery, receiver):
    """An event older than the window is given up without a further attempt."""
    event_id = add_event(outbox, receiver.url, created_at=clock.now() - 10)
    delivery.policy = replace(delivery.policy, window_seconds=5)
    run_due(delivery)
    assert outbox.get(event_id).status == DeliveryStatus.DEAD
    assert receiver.received == []


def test_a_slow_destination_does_not_hold_up_the_others(outbox, settings, redis_client):
    """With one receiver hanging, a healthy one gets all its deliveries meanwhile."""
    delivery = dispatcher(settings, redis_client)
    delivery.sender.timeout_seconds = 3
    with Receiver(Reply(200, delay_seconds=2.5)) as slow, Receiver() as fast:
        # More than the slow lane's first window (2): some wait behind the slow answers.
        slow_ids = [add_event(outbox, slow.url) for _ in range(4)]
        fast_ids = [add_event(outbox, fast.url) for _ in range(20)]
        stop = threading.Event()
        loop = threading.Thread(target=delivery.run, args=(stop,))
        started = time.monotonic()
        loop.start()
        try:
            fast.wait_for(20, timeout_seconds=10)
            fast_done = time.monotonic() - started
            # The slow destination's lane narrows as it answers slowly (2.5 s each): bounded
            # generously, as its pace is the lane's to set.
            slow.wait_for(4, timeout_seconds=40)
        finally:
            stop.set()
            loop.join(timeout=10)
    assert fast_done < 2.0, "healthy deliveries waited for the slow receiver"
    assert all(outbox.get(i).status == DeliveryStatus.DELIVERED for i in fast_ids + slow_ids)


def test_per_destination_limit_bounds_requests_in_flight(outbox, settings, redis_client):
    """No more than `per_destination` requests reach one destination at a time."""
    delivery = dispatcher(settings, redis_client)
    delivery.per_destination = 2
    in_flight, peak, lock = [0], [0], threading.Lock()

    with Receiver(Reply(200, delay_seconds=0.3)) as slow:
        original = slow.server.RequestHandlerClass.do_POST

        def counting(handler):
            with lock:
                in_flight[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            try:
                original(handler)
            finally:
                with lock:
                    in_flight[0] -= 1

        slow.server.RequestHandlerClass.do_POST = counting
        for _ in range(6):
            add_event(outbox, slow.url)
        stop = threading.Event()
        loop = threading.Thread(target=delivery.run, args=(stop,))
        loop.start()
        try:
            slow.wait_for(6, timeout_seconds=15)
        finally:
            stop.set()
            loop.join(timeout=10)
    assert peak[0] == 2


@given(
    base=st.floats(0.001, 1000),
    cap=st.floats(0.001, 100_000),
    attempts=st.integers(1, 200),
    retry_after=st.none() | st.floats(0, 1_000_000),
)
def test_backoff_bounds_hold_for_any_policy(base, cap, attempts, retry_after):
    """Every delay lies within its jittered bound, or within [bound, max] for Retry-After."""
    policy = RetryPolicy(base_seconds=base, max_seconds=cap)
    ceiling = min(cap, base * 2 ** (attempts - 1))
    delay = policy.delay_seconds(attempts, retry_after_seconds=retry_after)
    assert delay <= cap + 1e-9
    if retry_after is None:
        assert 0.5 * ceiling - 1e-9 <= delay <= ceiling + 1e-9
    else:
        assert delay >= min(0.5 * ceiling, cap) - 1e-9
        assert delay >= min(retry_after, cap) - 1e-9


def test_dead_letters_hold_everything_needed_to_redeliver(outbox, delivery, receiver, redis_client):
    """A dead letter keeps the body as sent, webhook-id, owner, subject, URL, attempts, error."""
    receiver.reply(Reply(410))
    event_id = add_event(outbox, receiver.url)
    run_due(delivery)
    (letter,) = DeadLetters(redis_client).page(Filter(owner=SECRET_OWNER), limit=5)[0]
    assert json.loads(letter.message.body) == {"type": "job.completed"}
    assert letter.id == event_id
    assert letter.message.subject == "job_x" and letter.url == receiver.url
    assert letter.attempts == 1 and letter.dead_at is not None


def test_retention_removes_only_old_dead_letters(
    outbox, delivery, receiver, redis_client, monkeypatch
):
    """Dead letters older than the retention are removed; newer ones stay."""
    receiver.reply(Reply(410), Reply(410))
    real_now = clock.now()
    monkeypatch.setattr(clock, "now", lambda: real_now - 3600)
    old_id = add_event(outbox, receiver.url, created_at=real_now - 3600)
    run_due(delivery)
    monkeypatch.undo()
    new_id = add_event(outbox, receiver.url)
    run_due(delivery)
    store = DeadLetters(redis_client)
    assert store.expire(retention_seconds=1800) == 1
    (left,) = store.page(Filter(), limit=10)[0]
    assert left.id == new_id and old_id != new_id


def test_the_library_keeps_to_the_key_prefix_it_is_given(settings, redis_url, receiver):
    """Built with its own prefix and no observer, `callbacks` writes nothing outside it."""
    from callbacks.breaker import CircuitBreaker
    from callbacks.dispatcher import Dispatcher
    from callbacks.keys import Keys
    from callbacks.outbox import Outbox
    from callbacks.secrets import SecretStore
    from callbacks.signing import generate_secret
    from worker.process import dispatcher as postback_dispatcher

    # A database of its own: nothing else in the session writes there.
    redis_client = redis.Redis.from_url(redis_url, db=7)
    redis_client.flushdb()
    keys = Keys("lib:")
    postback = postback_dispatcher(settings, redis_client)
    secrets = SecretStore(redis_client, keys=keys)
    secrets.set("owner", generate_secret())
    outbox = Outbox(redis_client, keys=keys)
    library = Dispatcher(
        outbox,
        secrets,
        postback.sender,
        CircuitBreaker(redis_client, keys=keys),
        aclient=postback.aclient,
        max_rate_per_second=100,
    )
    receiver.reply(Reply(500))
    sent = [add_event(outbox, receiver.url, owner="owner") for _ in range(2)]
    library.drain()
    statuses = sorted(outbox.get(i).status for i in sent)
    assert statuses == [DeliveryStatus.DELIVERED, DeliveryStatus.RETRYING]
    assert {key.decode().split(":", 1)[0] for key in redis_client.scan_iter()} == {"lib"}
