"""What many circuits cost: `/metrics` and a page of `GET /v1/admin/circuits` with 10 and
with 100,000 open circuits (one per partner and destination).

Both should cost the same however many circuits there are: the open-circuit gauge is
one count, and a listing reads one page.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict

import redis

from app import create_app
from bench.common import embedded_redis
from callbacks import breaker as cb
from postback.settings import Settings

ADMIN_TOKEN = "bench-admin-token-0123456789"
SIZES = (10, 100_000)


def open_circuits(client: redis.Redis, count: int) -> None:
    """`count` open circuits, each past its threshold, written a thousand at a time."""
    breaker = cb.CircuitBreaker(client)
    for start in range(0, count, 1000):
        with client.pipeline(transaction=False) as pipe:
            for number in range(start, min(count, start + 1000)):
                dest = f"https://hooks-{number}.example.com:443"
                for _ in range(breaker.settings.threshold):
                    keys, args = breaker._record_call(f"ptn_{number % 50}", dest, False, None)
                    cb._RECORD.run(pipe, keys, args)
            pipe.execute()


def timed_ms(call, repeats: int) -> float:
    """The median of `repeats` timings of `call()`, in milliseconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(quick: bool = False) -> dict:
    sizes = (10, 2_000) if quick else SIZES
    results: dict = {}
    with embedded_redis(None) as (url, data):
        client = redis.Redis.from_url(url)
        settings = Settings.from_env({}, redis_url=url, data_dir=data, admin_token=ADMIN_TOKEN)
        app = create_app(asdict(settings), client=client)
        http = app.test_client()
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for size in sizes:
            client.flushall()
            open_circuits(client, size)

            def metrics() -> None:
                reply = http.get("/metrics")
                assert reply.status_code == 200

            def page(size: int = size) -> None:
                reply = http.get("/v1/admin/circuits?limit=50", headers=auth)
                assert reply.status_code == 200 and len(reply.json["items"]) == min(50, size)

            count_line = [
                line
                for line in http.get("/metrics").text.splitlines()
                if line.startswith("postback_open_circuits ")
            ]
            results[str(size)] = {
                "metrics_ms": timed_ms(metrics, 20),
                "page_of_50_ms": timed_ms(page, 20),
                "open_circuits_gauge": float(count_line[0].split()[1]),
            }
        client.close()
    return results


def report(results: dict) -> str:
    lines = ["circuits: /metrics and a page of 50 from GET /v1/admin/circuits, medians of 20"]
    for size, figures in results.items():
        lines.append(
            f"   {int(size):>7,} open circuits: /metrics {figures['metrics_ms']:.1f} ms, "
            f"page {figures['page_of_50_ms']:.1f} ms "
            f"(gauge {figures['open_circuits_gauge']:.0f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10 and 2,000 circuits")
    print(report(main(parser.parse_args().quick)))
