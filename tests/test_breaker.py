"""The circuit breaker: per partner and destination, atomic, one probe in half-open for all."""

from __future__ import annotations

import asyncio
import multiprocessing
import time

import pytest
import redis.asyncio

from callbacks.breaker import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSettings,
    CircuitBreaker,
    circuit_id,
    counts_against,
    reset_circuits,
)
from callbacks.model import Message, destination
from callbacks.outbox import Outbox
from postback import clock

DEST = "https://hooks.example.com:443"
A, B = "ptn_a", "ptn_b"


@pytest.fixture
def fake_now(monkeypatch):
    """A clock the test moves by hand (the breaker compares wall-clock times)."""
    now = [1_800_000_000.0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    return now


def breaker_for(client, **overrides):
    settings = BreakerSettings(**{"threshold": 3, "cooldown_seconds": 10, **overrides})
    return CircuitBreaker(client, settings)


def fail(breaker, times, owner=A, dest=DEST):
    for _ in range(times):
        breaker.record(owner, dest, healthy=False)


def test_destination_is_scheme_host_port():
    """Default ports are made explicit and case is folded; paths do not matter."""
    assert destination("HTTPS://Hooks.Example.com/a?b") == DEST
    assert destination("http://10.0.0.1:8080/x") == "http://10.0.0.1:8080"
    assert destination("http://[::1]/x") == "http://[::1]:80"


def test_only_answers_that_say_the_host_is_unwell_count():
    """No answer, 5xx, 408 and 429 count against a circuit; other 4xx (an answer) do not."""
    assert all(counts_against(code) for code in (None, 500, 502, 503, 504, 408, 429))
    assert not any(counts_against(code) for code in (200, 204, 302, 400, 401, 404, 410, 422))


def test_the_circuit_opens_after_threshold_consecutive_failures(redis_client, fake_now):
    """Three failures in a row open it; a success in between resets the count."""
    breaker = breaker_for(redis_client)
    fail(breaker, 2)
    breaker.record(A, DEST, healthy=True)
    assert breaker.state(A, DEST)["state"] == CLOSED
    fail(breaker, 3)
    state = breaker.state(A, DEST)
    assert state["state"] == OPEN and state["consecutive_failures"] == 3
    permit = breaker.acquire(A, DEST)
    assert not permit.allowed and permit.retry_at == fake_now[0] + 10
    assert permit.generation == fake_now[0]


def test_one_partners_failures_leave_another_partners_circuit_closed(redis_client, fake_now):
    """Partner A opening its circuit to a host does not hold back partner B's webhooks."""
    breaker = breaker_for(redis_client)
    fail(breaker, 10, owner=A)
    assert not breaker.acquire(A, DEST).allowed
    permit = breaker.acquire(B, DEST)
    assert permit.allowed and permit.clean
    assert breaker.state(B, DEST)["state"] == CLOSED


def test_a_permit_is_clean_only_while_the_circuit_has_no_state(redis_client, fake_now):
    """Only a destination with no failures on record gives a clean permit (no report needed)."""
    breaker = breaker_for(redis_client)
    assert breaker.acquire(A, DEST).clean
    fail(breaker, 1)
    permit = breaker.acquire(A, DEST)
    assert permit.allowed and not permit.clean
    breaker.record(A, DEST, healthy=True)
    assert breaker.acquire(A, DEST).clean
    assert not redis_client.exists(breaker.keys.circuit(circuit_id(A, DEST)))


def test_half_open_lets_exactly_one_probe_through(redis_client, fake_now):
    """After the cooldown one caller probes; the others wait until it reports."""
    breaker = breaker_for(redis_client)
    fail(breaker, 3)
    fake_now[0] += 10
    assert breaker.state(A, DEST)["state"] == HALF_OPEN
    permits = [breaker.acquire(A, DEST) for _ in range(5)]
    assert [p.allowed for p in permits] == [True, False, False, False, False]
    probe = permits[0].probe
    assert probe
    # A straggler's success from before the circuit opened does not close it.
    assert breaker.record(A, DEST, healthy=True) == (HALF_OPEN, None)
    state, generation = breaker.record(A, DEST, healthy=True, probe=probe)
    assert state == CLOSED and generation == fake_now[0] - 10
    assert breaker.acquire(A, DEST).allowed


def test_a_failed_probe_reopens_with_a_doubled_cooldown(redis_client, fake_now):
    """Each consecutive re-open doubles the cooldown, up to the maximum."""
    breaker = breaker_for(redis_client, max_cooldown_seconds=35)
    fail(breaker, 3)
    cooldowns = []
    opened_at = fake_now[0]
    for _ in range(3):
        fake_now[0] = breaker.acquire(A, DEST).retry_at or fake_now[0]
        cooldowns.append(fake_now[0] - opened_at)
        permit = breaker.acquire(A, DEST)
        assert permit.allowed
        assert breaker.record(A, DEST, healthy=False, probe=permit.probe)[0] == OPEN
        opened_at = fake_now[0]
    fake_now[0] = breaker.acquire(A, DEST).retry_at
    cooldowns.append(fake_now[0] - opened_at)
    assert cooldowns == [10, 20, 35, 35]


def test_a_probe_that_never_reports_is_replaced_after_its_lease(redis_client, fake_now):
    """If the probing process dies, another may probe once the probe lease lapses."""
    breaker = breaker_for(redis_client, probe_lease_seconds=5)
    fail(breaker, 3)
    fake_now[0] += 10
    assert breaker.acquire(A, DEST).allowed
    assert not breaker.acquire(A, DEST).allowed
    fake_now[0] += 5
    assert breaker.acquire(A, DEST).allowed


def test_circuits_page_by_destination_then_partner(redis_client, fake_now):
    """Listing pages with limit and cursor, can keep to one destination, and drops reset ones."""
    breaker = breaker_for(redis_client)
    other = "https://other.example.com:443"
    for owner in ("ptn_c", A, B):
        fail(breaker, 1, owner=owner)
    fail(breaker, 3, owner=A, dest=other)
    first, cursor = breaker.page(limit=2)
    assert [(c["destination"], c["partner_id"]) for c in first] == [(DEST, A), (DEST, B)]
    rest, end = breaker.page(limit=2, cursor=cursor)
    assert [(c["destination"], c["partner_id"]) for c in rest] == [(DEST, "ptn_c"), (other, A)]
    assert end is None and rest[1]["state"] == OPEN
    only, _ = breaker.page(limit=10, destination=other)
    assert [c["partner_id"] for c in only] == [A]
    assert breaker.reset(A, other)
    assert breaker.page(limit=10, destination=other) == ([], None)
    assert breaker.acquire(A, other).allowed


def test_quiet_circuits_are_forgotten_and_the_open_gauge_is_a_count(redis_client, fake_now):
    """A closed circuit with a few failures expires; the index sweep drops it; open ones count."""
    breaker = breaker_for(redis_client, forget_seconds=60)
    fail(breaker, 1, owner=A)
    fail(breaker, 3, owner=B)
    key = breaker.keys.circuit(circuit_id(A, DEST))
    assert redis_client.pexpiretime(key) == int((fake_now[0] + 60) * 1000)
    assert breaker.open_count() == 1
    fake_now[0] += 61
    redis_client.delete(key)  # what the server's expiry does at that time
    assert breaker.sweep() == 1
    assert [c["partner_id"] for c in breaker.page(limit=10)[0]] == [B]


def _race_for_probe(url, start_at, results):
    import redis

    breaker = CircuitBreaker(redis.Redis.from_url(url), BreakerSettings(threshold=3))
    while time.time() < start_at:
        pass
    results.put(sum(breaker.acquire(A, DEST).allowed for _ in range(20)))


def test_processes_racing_in_half_open_get_one_probe_between_them(redis_url, redis_client):
    """Four processes asking at the same instant after the cooldown get one probe in all."""
    breaker = CircuitBreaker(redis_client, BreakerSettings(threshold=3, cooldown_seconds=0.5))
    fail(breaker, 3)
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


def park(redis_client, outbox, claimed, *, generation, until):
    """`Outbox.apark` of `claimed` behind A's circuit to DEST; whether it was parked."""

    async def run():
        outbox.aredis = redis.asyncio.Redis(**redis_client.connection_pool.connection_kwargs)
        try:
            group = circuit_id(A, DEST)
            return await outbox.apark(claimed, group=group, generation=generation, until=until)
        finally:
            await outbox.aredis.aclose()

    return asyncio.run(run())


def parked_behind_an_open_circuit(redis_client, now, message_id):
    """A delivery to DEST claimed and parked behind A's open circuit; (breaker, outbox)."""
    outbox = Outbox(redis_client)
    outbox.add(Message(id=message_id, owner=A, body=b"{}", created_at=now), DEST + "/hook")
    breaker = breaker_for(redis_client)
    fail(breaker, 3)
    permit = breaker.acquire(A, DEST)
    (claimed,) = outbox.claim(limit=10, lease_seconds=60)
    assert park(redis_client, outbox, claimed, generation=permit.generation, until=now + 3600)
    return breaker, outbox


def test_closing_a_circuit_lets_its_parked_deliveries_go_at_once(redis_client, fake_now):
    """Deliveries parked by an open circuit fall due the moment its probe closes it."""
    breaker, outbox = parked_behind_an_open_circuit(redis_client, fake_now[0], "msg_1")
    assert outbox.claim(limit=10, lease_seconds=60) == []
    fake_now[0] += 10
    probe = breaker.acquire(A, DEST).probe
    state, generation = breaker.record(A, DEST, healthy=True, probe=probe)
    assert state == CLOSED
    assert outbox.unpark(circuit_id(A, DEST), generation) == 1
    assert [c.delivery.id for c in outbox.claim(limit=10, lease_seconds=60)] == ["msg_1"]


def test_a_delivery_parked_after_its_circuit_closed_is_due_at_once(redis_client, fake_now):
    """Parking that loses the race with the closing (its generation let go) is due now."""
    outbox = Outbox(redis_client)
    breaker = breaker_for(redis_client)
    fail(breaker, 3)
    generation = breaker.acquire(A, DEST).generation
    fake_now[0] += 10
    probe = breaker.acquire(A, DEST).probe
    _, closed = breaker.record(A, DEST, healthy=True, probe=probe)
    outbox.unpark(circuit_id(A, DEST), closed)
    assert closed == generation
    outbox.add(Message(id="msg_3", owner=A, body=b"{}", created_at=fake_now[0]), DEST + "/h")
    (claimed,) = outbox.claim(limit=10, lease_seconds=60)
    assert park(redis_client, outbox, claimed, generation=generation, until=fake_now[0] + 3600)
    assert [c.delivery.id for c in outbox.claim(limit=10, lease_seconds=60)] == ["msg_3"]


def test_letting_parked_deliveries_go_never_touches_one_in_flight(redis_client, fake_now):
    """A parked delivery that a dispatcher has claimed since stays with that dispatcher."""
    _, outbox = parked_behind_an_open_circuit(redis_client, fake_now[0], "msg_4")
    fake_now[0] += 3600
    (held,) = outbox.claim(limit=10, lease_seconds=60)
    assert outbox.unpark(circuit_id(A, DEST), fake_now[0]) == 0
    assert outbox.claim(limit=10, lease_seconds=60) == []
    assert held.delivery.id == "msg_4"


def test_a_reset_lets_parked_deliveries_go(redis_client, fake_now):
    """An admin reset of every partner's circuit to a host also releases what they held back."""
    breaker, outbox = parked_behind_an_open_circuit(redis_client, fake_now[0], "msg_2")
    reset = reset_circuits(breaker, outbox, DEST)
    assert [c["partner_id"] for c in reset] == [A]
    assert [c.delivery.id for c in outbox.claim(limit=10, lease_seconds=60)] == ["msg_2"]
