"""Claims on deliveries: fencing tokens, renewal, fair shares across partners, attempt numbering."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from callbacks.deadletters import DeadLetters
from callbacks.model import Attempt, DeliveryStatus, Outcome
from callbacks.outbox import Outbox, Settlement
from postback import clock
from tests.helpers import add_event
from worker.process import dispatcher


def attempt_of(claimed, *, status_code=500):
    return Attempt(
        number=claimed.delivery.attempts + 1,
        at=clock.now(),
        status_code=status_code,
        duration_ms=5,
        error=f"HTTP {status_code}",
        outcome=Outcome.FAILED,
    )


def retry(claimed):
    return Settlement(
        status=DeliveryStatus.RETRYING, attempt=attempt_of(claimed), next_at=clock.now() + 3600
    )


def test_only_the_live_claim_can_record_an_attempt(outbox):
    """After a claim lapses and another dispatcher claims the delivery, the first one's
    outcome is discarded: one attempt recorded, numbered 1."""
    event_id = add_event(outbox, "http://127.0.0.1:9/hook")
    (stale,) = outbox.claim(limit=10, lease_seconds=0.1)
    time.sleep(0.2)
    (live,) = outbox.claim(limit=10, lease_seconds=60)
    assert live.token != stale.token
    assert outbox.settle(live, retry(live))
    assert not outbox.settle(stale, retry(stale))
    assert not outbox.settle(
        stale,
        Settlement(status=DeliveryStatus.DELIVERED, attempt=attempt_of(stale, status_code=200)),
    )
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.RETRYING and record.attempts == 1
    assert [a["attempt"] for a in outbox.attempts(event_id)] == [1]


def test_a_claim_settled_once_cannot_settle_again(outbox):
    """A token is spent by its settlement: a second outcome from the same holder is stale."""
    event_id = add_event(outbox, "http://127.0.0.1:9/hook")
    (claimed,) = outbox.claim(limit=10, lease_seconds=60)
    ok = Settlement(status=DeliveryStatus.DELIVERED, attempt=attempt_of(claimed, status_code=200))
    assert outbox.settle(claimed, ok)
    assert not outbox.settle(claimed, retry(claimed))
    assert outbox.get(event_id).status == DeliveryStatus.DELIVERED
    assert len(outbox.attempts(event_id)) == 1


def test_renewal_keeps_a_held_claim_alive_and_reports_lost_ones(outbox, redis_client):
    """A renewed claim does not lapse; a claim someone else took since is reported lost."""
    kept = add_event(outbox, "http://127.0.0.1:9/a")
    add_event(outbox, "http://127.0.0.1:9/b")
    claims = {c.delivery.id: c for c in outbox.claim(limit=10, lease_seconds=0.3)}

    async def renew(held):
        outbox.aredis = redis.asyncio.Redis(**redis_client.connection_pool.connection_kwargs)
        try:
            return await outbox.arenew(held, lease_seconds=60)
        finally:
            await outbox.aredis.aclose()

    assert asyncio.run(renew([claims[kept]])) == set()
    time.sleep(0.4)
    (taken,) = outbox.claim(limit=10, lease_seconds=60)
    assert taken.delivery.id != kept
    assert asyncio.run(renew(list(claims.values()))) == {taken.delivery.id}


def test_a_claim_shares_its_limit_fairly_among_partners(outbox):
    """One partner's backlog of 300 does not keep two others' few deliveries waiting."""
    for _ in range(300):
        add_event(outbox, "http://127.0.0.1:9/big", owner="ptn_big")
    small = {add_event(outbox, "http://127.0.0.1:9/s", owner="ptn_small") for _ in range(3)}
    tiny = {add_event(outbox, "http://127.0.0.1:9/t", owner="ptn_tiny")}
    claimed = outbox.claim(limit=12, lease_seconds=60)
    ids = {c.delivery.id for c in claimed}
    assert len(claimed) == 12
    assert small | tiny <= ids
    assert sum(c.delivery.owner == "ptn_big" for c in claimed) == 8


def test_attempt_numbers_run_on_across_rounds_without_repeats(outbox, settings, redis_client):
    """Three failed attempts, a replay, two more: the log is numbered 1 to 5, as `attempts` says."""
    delivery = dispatcher(settings, redis_client)
    event_id = add_event(outbox, "http://127.0.0.1:9/refused")
    for _ in range(3):
        delivery.drain()
        time.sleep(settings.retry_max_seconds + 0.01)
    record = outbox.get(event_id)
    assert record.status == DeliveryStatus.DEAD
    assert DeadLetters(redis_client).replay(record.dead_letter_id)
    for _ in range(2):
        delivery.drain()
        time.sleep(settings.retry_max_seconds + 0.01)
    record = outbox.get(event_id)
    numbers = [a["attempt"] for a in outbox.attempts(event_id)]
    assert numbers == list(range(1, record.attempts + 1)) and record.attempts >= 5


def test_giving_back_unattempted_spends_nothing(outbox, redis_client):
    """A delivery given back (its lane full, or the process stopping) keeps its attempt count."""
    event_id = add_event(outbox, "http://127.0.0.1:9/hook")
    (claimed,) = outbox.claim(limit=10, lease_seconds=60)

    async def give_back():
        outbox.aredis = redis.asyncio.Redis(**redis_client.connection_pool.connection_kwargs)
        try:
            await outbox.arelease([(claimed, clock.now())])
        finally:
            await outbox.aredis.aclose()

    asyncio.run(give_back())
    record = outbox.get(event_id)
    assert record.attempts == 0 and record.claim == "" and outbox.attempts(event_id) == []
    assert [c.delivery.id for c in Outbox(redis_client).claim(limit=5, lease_seconds=5)] == [
        event_id
    ]
