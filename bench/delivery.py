"""Delivery benchmarks: throughput to slow receivers, and isolation from a hanging one.

P3: deliveries per second from one dispatcher (one process) to a receiver that
    answers in 200 ms. Goal: at least 150.
P4: the delivery rate to healthy destinations while one destination hangs until
    the timeout, divided by the same rate without it (measured in the same run).
    Goal: at least 0.9.
"""

from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.common import OWNER, embedded_redis
from callbacks.outbox import DELIVERED, Event, Outbox, event_key
from callbacks.secrets import SecretStore
from callbacks.signing import generate_secret
from postback import ids
from postback.embedded import free_port
from postback.settings import Settings
from worker.process import dispatcher


@dataclass(frozen=True)
class Run:
    delivered: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds


@contextlib.contextmanager
def receivers(ports: list[int], *, delay: float, hang_ports: list[int] = ()) -> Iterator[None]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.receiver",
            "--ports",
            ",".join(map(str, ports)),
            "--hang-ports",
            ",".join(map(str, hang_ports)),
            "--delay",
            str(delay),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "ready"
        yield
    finally:
        process.kill()
        process.wait()


def deliver(
    client: redis.Redis,
    settings: Settings,
    urls: list[str],
    *,
    healthy: set[str],
    count_per_url: int,
) -> Run:
    """Queue `count_per_url` events per URL; time until every healthy one is delivered."""
    client.flushall()
    SecretStore(client).set(OWNER, generate_secret())
    outbox = Outbox(client)
    wanted = []
    with client.pipeline(transaction=False) as pipe:
        for number in range(count_per_url):
            for url in urls:
                event = Event(
                    id=ids.new_id("msg"),
                    owner=OWNER,
                    url=url,
                    body=b'{"type":"job.completed","data":{"n":%d}}' % number,
                )
                outbox.add(event, pipeline=pipe)
                if url in healthy:
                    wanted.append(event.id)
        pipe.execute()
    delivery = dispatcher(settings, client)
    stop = threading.Event()
    loop = threading.Thread(target=delivery.run, args=(stop,), daemon=True)
    started = time.monotonic()
    deadline = started + 600
    loop.start()
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(wanted)} deliveries not done in 600 s")
            with client.pipeline(transaction=False) as pipe:
                for event_id in wanted:
                    pipe.hget(event_key(event_id), "status")
                statuses = pipe.execute()
            if all(s == DELIVERED.encode() for s in statuses):
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        # Attempts still in flight (to a hanging receiver) end by the timeout.
        loop.join(timeout=settings.delivery_timeout_seconds * 2 + 5)
    return Run(delivered=len(wanted), seconds=elapsed)


def main(repeats: int = 3, per_destination_count: int = 600, timeout_seconds: float = 5.0) -> dict:
    with embedded_redis(None) as (url, _):
        client = redis.Redis.from_url(url)
        settings = Settings.from_env(
            {},
            redis_url=url,
            delivery_timeout_seconds=timeout_seconds,
            log_level="WARNING",
            # The receivers listen on loopback, which callback URLs may not reach otherwise.
            callback_allow_cidrs=("127.0.0.0/8",),
        )
        results: dict = {
            "settings": {
                "concurrency": settings.delivery_concurrency,
                "per_destination": settings.delivery_per_destination,
                "timeout_seconds": settings.delivery_timeout_seconds,
            }
        }
        try:
            # P3: one destination answering in 200 ms.
            port = free_port()
            with receivers([port], delay=0.2):
                target = f"http://127.0.0.1:{port}/hook"
                runs = [
                    deliver(
                        client,
                        settings,
                        [target],
                        healthy={target},
                        count_per_url=per_destination_count,
                    )
                    for _ in range(repeats)
                ]
            rates = [r.per_second for r in runs]
            results["p3_deliveries_per_second"] = {
                "median": statistics.median(rates),
                "runs": rates,
            }

            # P4: four healthy destinations (200 ms), with and without a fifth that hangs.
            healthy_ports = [free_port() for _ in range(4)]
            hang_port = free_port()
            with receivers(healthy_ports, delay=0.2, hang_ports=[hang_port]):
                healthy = [f"http://127.0.0.1:{p}/hook" for p in healthy_ports]
                hanging = f"http://127.0.0.1:{hang_port}/hook"
                ratios, without, with_hang = [], [], []
                for _ in range(repeats):
                    base = deliver(
                        client,
                        settings,
                        healthy,
                        healthy=set(healthy),
                        count_per_url=per_destination_count // 2,
                    )
                    sick = deliver(
                        client,
                        settings,
                        [*healthy, hanging],
                        healthy=set(healthy),
                        count_per_url=per_destination_count // 2,
                    )
                    without.append(base.per_second)
                    with_hang.append(sick.per_second)
                    ratios.append(sick.per_second / base.per_second)
            results["p4_isolation"] = {
                "ratio_median": statistics.median(ratios),
                "ratios": ratios,
                "healthy_per_second_without": without,
                "healthy_per_second_with_hang": with_hang,
            }
        finally:
            client.close()
    return results


def _rates(values: list[float]) -> str:
    return ", ".join(f"{value:.0f}" for value in values)


def report(results: dict) -> str:
    p3 = results["p3_deliveries_per_second"]
    p4 = results["p4_isolation"]
    lines = [
        f"settings: {results['settings']}",
        f"P3 deliveries/s to a 200 ms receiver, one process: median {p3['median']:.0f} "
        f"(runs {', '.join(f'{r:.0f}' for r in p3['runs'])}; goal >= 150)",
        f"P4 healthy rate with one hanging destination / without: median "
        f"{p4['ratio_median']:.2f} (runs {', '.join(f'{r:.2f}' for r in p4['ratios'])}; "
        f"goal >= 0.9)",
        f"   healthy deliveries/s without: {_rates(p4['healthy_per_second_without'])}"
        f"; with the hang: {_rates(p4['healthy_per_second_with_hang'])}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts, one run (seconds)")
    args = parser.parse_args()
    outcome = main(1, 20, 1.0) if args.quick else main()
    print(report(outcome))
    Path(__file__).with_name("results.json").write_text(json.dumps({"delivery": outcome}, indent=2))
