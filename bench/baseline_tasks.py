"""The pipeline benchmark's baseline: an RQ SimpleWorker draining no-op jobs.

    python -m bench.baseline_tasks --url REDIS_URL --queue NAME

Works the queue in burst mode (until it is empty) and prints, as JSON, the
seconds `work(burst=True)` took (the interpreter's start-up is not counted).
"""

from __future__ import annotations

import argparse
import json
import time

import redis
from rq import Queue, SimpleWorker


def noop(number: int) -> None:
    """The baseline's job: nothing."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--queue", required=True)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    worker = SimpleWorker([Queue(args.queue, connection=client)], connection=client)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
