"""The circuit breaker: shared through Redis, atomic, one probe in half-open across processes."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from callbacks.breaker import CLOSED, HALF_OPEN, OPEN, BreakerSettings, CircuitBreaker
from callbacks.outbox import DUE_KEY, Event, Outbox, destination
from postback import clock

DEST = "https://hooks.example.com:443"


@pytest.fixture
def fake_now(monkeypatch):
    """A clock the test moves by hand (the breaker compares wall-clock times)."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    return now


def breaker_for(client, **overrides):
    settings = BreakerSettings(**{"threshold": 3, "cooldown_seconds": 10, **overrides})
    return CircuitBreaker(client, settings)


def test_destination_is_scheme_host_port():
    """Default ports are made explicit and case is folded; paths do not matter."""
    assert destination("HTTPS://Hooks.Example.com/a?b") == DEST
    assert destination("http://10.0.0.1:8080/x") == "http://10.0.0.1:8080"
    assert destination("http://[::1]/x") == "http://[::1]:80"


def test_the_circuit_opens_after_threshold_consecutive_failures(redis_client, fake_now):
    """Three failures in a row open it; a success in between resets the count."""
    breaker = breaker_for(redis_client)
    breaker.record(DEST, ok=False)
    breaker.record(DEST, ok=False)
    breaker.record(DEST, ok=True)
    assert breaker.state(DEST)["state"] == CLOSED
    for _ in range(3):
        breaker.record(DEST, ok=False)
    state = breaker.state(DEST)
    assert state["state"] == OPEN and state["consecutive_failures"] == 3
    permit = breaker.acquire(DEST)
    assert not permit.allowed and permit.retry_at == fake_now[0] + 10


def test_a_permit_is_clean_only_while_the_circuit_has_no_state(redis_client, fake_now):
    """Only a destination with no failures on record gives a clean permit (no report needed)."""
    breaker = breaker_for(redis_client)
    assert breaker.acquire(DEST).clean
    breaker.record(DEST, ok=False)
    permit = breaker.acquire(DEST)
    assert permit.allowed and not permit.clean
    breaker.record(DEST, ok=True)
    assert breaker.acquire(DEST).clean
    assert not redis_client.exists(f"pb:cb:circuit:{DEST}")


def test_half_open_lets_exactly_one_probe_through(redis_client, fake_now):
    """After the cooldown one caller probes; the others are deferred until it reports."""
    breaker = breaker_for(redis_client)
    for _ in range(3):
        breaker.record(DEST, ok=False)
    fake_now[0] += 10
    assert breaker.state(DEST)["state"] == HALF_OPEN
    permits = [breaker.acquire(DEST) for _ in range(5)]
    assert [p.allowed for p in permits] == [True, False, False, False, False]
    probe = permits[0].probe
    assert probe
    # A straggler's success from before the circuit opened does not close it.
    assert breaker.record(DEST, ok=True) == HALF_OPEN
    assert breaker.record(DEST, ok=True, probe=probe) == CLOSED
    assert breaker.acquire(DEST).allowed


def test_a_failed_probe_reopens_with_a_doubled_cooldown(redis_client, fake_now):
    """Each consecutive re-open doubles the cooldown, up to the maximum."""
    breaker = breaker_for(redis_client, max_cooldown_seconds=35)
    for _ in range(3):
        breaker.record(DEST, ok=False)
    cooldowns = []
    opened_at = fake_now[0]
    for _ in range(3):
        fake_now[0] = breaker.acquire(DEST).retry_at or fake_now[0]
        cooldowns.append(fake_now[0] - opened_at)
        permit = breaker.acquire(DEST)
        assert permit.allowed
        assert breaker.record(DEST, ok=False, probe=permit.probe) == OPEN
        opened_at = fake_now[0]
    fake_now[0] = breaker.acquire(DEST).retry_at
    cooldowns.append(fake_now[0] - opened_at)
    assert cooldowns == [10, 20, 35, 35]


def test_a_probe_that_never_reports_is_replaced_after_its_lease(redis_client, fake_now):
    """If the probing worker dies, another may probe once the probe lease lapses."""
    breaker = breaker_for(redis_client, probe_lease_seconds=5)
    for _ in range(3):
        breaker.record(DEST, ok=False)
    fake_now[0] += 10
    assert breaker.acquire(DEST).allowed
    assert not breaker.acquire(DEST).allowed
    fake_now[0] += 5
    assert breaker.acquire(DEST).allowed


def test_reset_closes_a_circuit_and_lists_drop_it(redis_client, fake_now):
    """An admin reset closes the circuit; closed circuits leave the list."""
    breaker = breaker_for(redis_client)
    for _ in range(3):
        breaker.record(DEST, ok=False)
    assert [c["destination"] for c in breaker.all()] == [DEST]
    assert breaker.reset(DEST)
    assert breaker.acquire(DEST).allowed
    assert breaker.all() == []


def _race_for_probe(url, start_at, results):
    import redis

    breaker = CircuitBreaker(redis.Redis.from_url(url), BreakerSettings(threshold=3))
    while time.time() < start_at:
        pass
    results.put(sum(breaker.acquire(DEST).allowed for _ in range(20)))


def test_processes_racing_in_half_open_get_one_probe_between_them(redis_url, redis_client):
    """Four processes asking at the same instant after the cooldown get one probe in all."""
    breaker = CircuitBreaker(redis_client, BreakerSettings(threshold=3, cooldown_seconds=0.5))
    for _ in range(3):
        breaker.record(DEST, ok=False)
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    start_at = time.time() + 2.0
    processes = [
        context.Process(target=_race_for_probe, args=(redis_url, start_at, results))
        for _ in range(4)
    ]
    for process in processes:
        process.start()
    try:
        allowed = sum(results.get(timeout=30) for _ in processes)
    finally:
        for process in processes:
            process.join(timeout=10)
    assert allowed == 1


def open_with_a_deferred_event(redis_client, now, event_id):
    """An open circuit for DEST holding back one event for an hour; returns the breaker."""
    outbox = Outbox(redis_client)
    outbox.add(Event(id=event_id, owner="ptn_1", url=DEST + "/hook", body=b"{}"))
    breaker = breaker_for(redis_client)
    for _ in range(3):
        breaker.record(DEST, ok=False)
    outbox.defer(event_id, now + 3600, circuit_of=DEST)
    return breaker


def test_closing_a_circuit_makes_its_deferred_events_due_now(redis_client, fake_now):
    """Events deferred by an open circuit fall due the moment the circuit closes."""
    breaker = open_with_a_deferred_event(redis_client, fake_now[0], "msg_1")
    fake_now[0] += 10
    probe = breaker.acquire(DEST).probe
    assert breaker.record(DEST, ok=True, probe=probe) == CLOSED
    assert redis_client.zscore(DUE_KEY, "msg_1") == fake_now[0]


def test_a_reset_makes_deferred_events_due_now(redis_client, fake_now):
    """An admin reset also releases the events the circuit held back."""
    breaker = open_with_a_deferred_event(redis_client, fake_now[0], "msg_2")
    breaker.reset(DEST)
    assert redis_client.zscore(DUE_KEY, "msg_2") == fake_now[0]
