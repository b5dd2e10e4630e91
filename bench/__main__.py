"""`python -m bench [--quick]`: every benchmark, one table, results in bench/results.json.

Each figure is set against a baseline measured in the same run on the same
machine (see BENCHMARKS.md for the method and the latest figures).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench import (
    accept,
    dead_letters,
    delivery,
    failover,
    io_model,
    lifecycle,
    longpoll,
    pipeline,
    streams,
)

RESULTS = Path(__file__).with_name("results.json")


def run(quick: bool) -> dict:
    """Run every benchmark; returns {name: results}."""
    sections = {
        "accept": (accept.main, accept.report),
        "longpoll": (lambda q: longpoll.main(q, 200 if q else 2000), longpoll.report),
        "streams": (lambda q: streams.main(streams.QUICK if q else streams.FULL), streams.report),
        "pipeline": (pipeline.main, pipeline.report),
        "delivery": (delivery.main, delivery.report),
        "io_model": (io_model.main, io_model.report),
        "lifecycle": (lifecycle.main, lifecycle.report),
        "dead_letters": (
            lambda q: dead_letters.main(1000 if q else 100_000),
            lambda r: (
                f"dead letters: first page {r['first_page_of_100_ms']:.0f} ms, "
                f"replay of {r['replayed']} in {r['replay_seconds']:.1f} s"
            ),
        ),
        "failover": (
            lambda q: failover.main(failover.QUICK if q else failover.FULL),
            failover.report,
        ),
    }
    results: dict = {
        "quick": quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for name, (measure, report) in sections.items():
        started = time.monotonic()
        results[name] = measure(quick)
        print(f"== {name} ({time.monotonic() - started:.0f} s)")
        print(report(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run in seconds")
    args = parser.parse_args()
    results = run(args.quick)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"results written to {RESULTS.name}")


if __name__ == "__main__":
    main()
