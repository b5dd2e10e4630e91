"""Dead-letter store at scale: the cost of a page, and of replaying every letter.

python -m bench.dead_letters [--count 100000]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import redis

from bench.common import OWNER, embedded_redis
from callbacks.deadletters import DeadLetters, Filter
from callbacks.outbox import DEAD, Event, Outbox
from postback import ids

BATCH = 1000


def main(count: int) -> dict:
    with embedded_redis(None) as (url, _), redis.Redis.from_url(url) as client:
        outbox = Outbox(client)
        for _ in range(0, count, BATCH):
            events = [
                Event(
                    id=ids.new_id("msg"),
                    owner=OWNER,
                    body=b"{}",
                    url="https://hooks.example.com/in",
                )
                for _ in range(BATCH)
            ]
            with client.pipeline(transaction=False) as pipe:
                for event in events:
                    outbox.add(event, pipeline=pipe)
                pipe.execute()
            for event in events:
                outbox.settle(outbox.get(event.id), None, status=DEAD, error="HTTP 500")
        store = DeadLetters(client)
        started = time.monotonic()
        store.page(Filter(), limit=100)
        page_ms = (time.monotonic() - started) * 1000
        tracemalloc.start()
        started = time.monotonic()
        replayed = store.replay_matching(Filter())
        replay_seconds = time.monotonic() - started
        peak_kib = tracemalloc.get_traced_memory()[1] // 1024
        tracemalloc.stop()
    return {
        "dead_letters": count,
        "first_page_of_100_ms": page_ms,
        "replayed": replayed,
        "replay_seconds": replay_seconds,
        "replay_peak_python_kib": peak_kib,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    print(main(parser.parse_args().count))
