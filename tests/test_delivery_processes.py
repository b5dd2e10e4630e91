"""Real delivery processes: one attempt at a time across them, partners isolated on one host,
a shared rate limit, and silent destinations kept to their share."""

from __future__ import annotations

import collections
import contextlib
import subprocess
import threading
import time
from dataclasses import replace

from callbacks.breaker import CircuitBreaker
from callbacks.model import DeliveryStatus, destination
from tests.helpers import SECRET_OWNER, add_event
from tests.hostile import Hostile
from tests.processes import POSTBACK, cli_env, eventually, stop_process
from tests.receiver import Receiver, Reply
from worker.process import dispatcher


def delivery_processes(redis_url, count, **env):
    """`count` `postback deliver` processes on `redis_url` with `env` on top of the test's."""
    environment = cli_env(REDIS_URL=redis_url, POSTBACK_LOG_LEVEL="WARNING", **env)
    return [subprocess.Popen([*POSTBACK, "deliver"], env=environment) for _ in range(count)]


def all_delivered(outbox, ids):
    return all(
        (d := outbox.get(i)) is not None and d.status == DeliveryStatus.DELIVERED for i in ids
    )


def test_two_delivery_processes_racing_a_circuits_closing_acknowledge_each_webhook_once(
    outbox, redis_url, redis_client
):
    """A destination failing for a while, then healthy: with two delivery processes, every
    webhook-id is acknowledged exactly once and every attempt log runs 1..n without repeats."""
    with Receiver(Reply(500)) as receiver:
        ids = [add_event(outbox, receiver.url) for _ in range(30)]
        processes = delivery_processes(
            redis_url,
            2,
            POSTBACK_BREAKER_COOLDOWN_SECONDS="1",
            POSTBACK_RETRY_BASE_SECONDS="0.2",
            POSTBACK_RETRY_MAX_SECONDS="1",
            POSTBACK_DELIVERY_TIMEOUT_SECONDS="2",
        )
        try:
            time.sleep(3)
            receiver.default = Reply(200)
            eventually(lambda: all_delivered(outbox, ids), timeout_seconds=60, what="all delivered")
        finally:
            for process in processes:
                stop_process(process, grace_seconds=10)
    acknowledged = collections.Counter(
        r.headers["webhook-id"] for r in receiver.received if r.status == 200
    )
    assert set(acknowledged) == set(ids)
    assert [i for i, n in acknowledged.items() if n > 1] == []
    for event_id in ids:
        numbers = [a["attempt"] for a in outbox.attempts(event_id)]
        assert numbers == list(range(1, outbox.get(event_id).attempts + 1))
    dest = destination(receiver.url)
    assert CircuitBreaker(redis_client).state(SECRET_OWNER, dest)["state"] == "closed"


def test_two_partners_on_one_host_one_failing_the_other_delivered(outbox, settings, redis_client):
    """Partner A's webhooks answered 500 open A's circuit; partner B's to the same host are all
    delivered at the first attempt and B's circuit holds no state."""
    from callbacks.secrets import SecretStore
    from callbacks.signing import generate_secret

    SecretStore(redis_client).set("ptn_b", generate_secret())
    delivery = dispatcher(settings, redis_client)
    with Receiver(by_path={"/a": Reply(500), "/b": Reply(200)}) as host:
        base = host.url.rsplit("/", 1)[0]
        a_ids = [add_event(outbox, f"{base}/a") for _ in range(20)]
        b_ids = [add_event(outbox, f"{base}/b", owner="ptn_b") for _ in range(10)]
        stop = threading.Event()
        loop = threading.Thread(target=delivery.run, args=(stop,))
        loop.start()
        try:
            eventually(lambda: all_delivered(outbox, b_ids), timeout_seconds=20, what="B delivered")
        finally:
            stop.set()
            loop.join(timeout=20)
    dest = destination(host.url)
    assert all(outbox.get(i).attempts == 1 for i in b_ids)
    assert delivery.breaker.state(SECRET_OWNER, dest)["state"] == "open"
    assert not redis_client.exists(delivery.breaker.keys.circuit(f"{dest} ptn_b"))
    assert sum(outbox.get(i).attempts for i in a_ids) >= 5


def test_the_rate_limit_holds_across_delivery_processes(outbox, redis_url):
    """With POSTBACK_DELIVERY_MAX_RATE=4, two processes together start at most about four
    attempts a second to a destination."""
    with Receiver() as receiver:
        ids = [add_event(outbox, receiver.url) for _ in range(12)]
        processes = delivery_processes(redis_url, 2, POSTBACK_DELIVERY_MAX_RATE="4")
        try:
            eventually(lambda: all_delivered(outbox, ids), timeout_seconds=30, what="all delivered")
        finally:
            for process in processes:
                stop_process(process, grace_seconds=10)
    arrivals = sorted(r.arrived_at for r in receiver.received)
    assert len(arrivals) == 12
    # 12 attempts at 4 a second span 2.75 s; loopback jitter may bunch a pair a little.
    assert arrivals[-1] - arrivals[0] >= 2.2
    for start in arrivals:
        assert sum(start <= t < start + 1.0 for t in arrivals) <= 5


def test_silent_destinations_are_kept_to_a_quarter_of_the_capacity(outbox, settings, redis_client):
    """Four hanging destinations first take every slot; once they are known to be silent they
    hold at most a quarter of the capacity between them, and a healthy destination is served."""
    delivery = dispatcher(settings, redis_client)
    delivery.concurrency = 8
    delivery.sender.timeout_seconds = 1.0
    with contextlib.ExitStack() as stack:
        hangers = [stack.enter_context(Hostile("hang")) for _ in range(4)]
        healthy = stack.enter_context(Receiver())
        for hanger in hangers:
            for _ in range(10):
                add_event(outbox, hanger.url)
        healthy_ids = [add_event(outbox, healthy.url) for _ in range(20)]
        stop = threading.Event()
        loop = threading.Thread(target=delivery.run, args=(stop,))
        started = time.monotonic()
        loop.start()
        try:
            eventually(
                lambda: all_delivered(outbox, healthy_ids),
                timeout_seconds=30,
                what="healthy delivered",
            )
            time.sleep(max(0.0, started + 6 - time.monotonic()))
        finally:
            stop.set()
            loop.join(timeout=20)
        seen = [r for hanger in hangers for r in hanger.requests]
    # Every hanging attempt ends at its 1 s deadline: after 2.5 s all four are known silent.
    # (The receiver notices a close within 0.05 s: overlaps shorter than 0.1 s are not counted.)
    moments = [r.arrived_at for r in seen if r.arrived_at >= started + 2.5]
    assert moments, "the hanging destinations were still tried"
    for moment in moments:
        open_then = [
            r for r in seen if r.arrived_at <= moment and (r.closed_at or 1e18) > moment + 0.1
        ]
        assert len(open_then) <= delivery.concurrency // 4


def test_a_circuit_opens_without_a_burst_and_its_probe_releases_the_rest(
    outbox, settings, redis_client
):
    """Against a failing host, at most the threshold plus the lane's concurrency get through
    before the circuit opens; the successful probe then lets every parked webhook go at once
    (not one probe lease later)."""
    delivery = dispatcher(
        replace(settings, breaker_cooldown_seconds=1, retry_base_seconds=30, retry_max_seconds=60),
        redis_client,
    )
    with Receiver(Reply(500)) as host:
        ids = [add_event(outbox, host.url) for _ in range(40)]
        stop = threading.Event()
        loop = threading.Thread(target=delivery.run, args=(stop,))
        loop.start()
        try:
            dest = destination(host.url)
            eventually(
                lambda: delivery.breaker.state(SECRET_OWNER, dest)["state"] == "open",
                timeout_seconds=10,
                what="circuit open",
            )
            failed_before_open = len(host.received)
            # Those that failed wait out their 30 s backoff; the others were parked.
            parked = [i for i in ids if outbox.get(i).attempts == 0]
            host.default = Reply(200)
            eventually(
                lambda: all_delivered(outbox, parked),
                timeout_seconds=15,
                what="the parked webhooks delivered",
            )
        finally:
            stop.set()
            loop.join(timeout=20)
    threshold = delivery.breaker.settings.threshold
    assert failed_before_open <= threshold + 2  # a new lane's window is 2
    probe_answered = min(r.arrived_at for r in host.received if r.status == 200)
    released = sorted(r.arrived_at for r in host.received if r.status == 200)
    assert len(released) == len(parked)
    assert released[-1] - probe_answered < 3.0
