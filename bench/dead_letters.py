"""Dead-letter store at scale: the cost of a page, and of replaying every letter.

python -m bench.dead_letters [--count 100000] [--trace-memory]

The replay is timed without tracing; `--trace-memory` runs it under
`tracemalloc` to report the peak of Python memory instead (tracing slows every
allocation, so that run's time is not comparable).

The dead letters are made without HTTP: each message is stored with its
delivery, claimed, and settled dead (error "HTTP 500") under its claim.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import redis

from bench.common import OWNER, embedded_redis
from callbacks.deadletters import DeadLetters, Filter
from callbacks.model import DeliveryStatus, Message
from callbacks.outbox import Outbox, Settlement
from postback import ids

BATCH = 1000
URL = "https://hooks.example.com/in"


def make_dead(outbox: Outbox, count: int) -> int:
    """Store `count` messages of the bench's partner, each dead (claimed, then settled dead);
    returns how many were settled dead."""
    with outbox.redis.pipeline(transaction=False) as pipe:
        for start in range(0, count, BATCH):
            for _ in range(min(BATCH, count - start)):
                message = Message(id=ids.new_id("msg"), owner=OWNER, type="job.failed", body=b"{}")
                outbox.add(message, URL, pipeline=pipe)
            pipe.execute()
    dead = 0
    # A claim takes at most BATCH due deliveries (fairly across owners); until none is left.
    while claimed := outbox.claim(limit=BATCH, lease_seconds=60):
        for item in claimed:
            dead += outbox.settle(item, Settlement(status=DeliveryStatus.DEAD, error="HTTP 500"))
    return dead


def main(count: int, trace_memory: bool = False) -> dict:
    """`count` dead letters, then the time of the first page of 100, and of replaying them all
    (or, with `trace_memory`, the peak of Python memory the replay takes)."""
    with embedded_redis(None) as (url, _), redis.Redis.from_url(url) as client:
        made = make_dead(Outbox(client), count)
        if made != count:
            raise RuntimeError(f"{made} of {count} deliveries were settled dead")
        store = DeadLetters(client)
        started = time.monotonic()
        store.page(Filter(), limit=100)
        page_ms = (time.monotonic() - started) * 1000
        if trace_memory:
            tracemalloc.start()
        started = time.monotonic()
        replayed = store.replay_matching(Filter())
        replay_seconds = time.monotonic() - started
        measured = {"replay_seconds": replay_seconds}
        if trace_memory:
            measured = {
                "replay_seconds_traced": replay_seconds,
                "replay_peak_python_kib": tracemalloc.get_traced_memory()[1] // 1024,
            }
            tracemalloc.stop()
    page = {"first_page_of_100_ms": page_ms}
    return {"dead_letters": count, **page, "replayed": replayed, **measured}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--trace-memory", action="store_true", help="report peak Python memory")
    args = parser.parse_args()
    print(main(args.count, args.trace_memory))
