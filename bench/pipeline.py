"""Pipeline benchmark (P2): jobs per second from accepted to webhook delivered.

    python -m bench.pipeline [--quick]

Postback: `echo` jobs with a callback URL are created in the job store, then
`postback worker` processes (1, then 2) run them and deliver their signed
webhooks to a local receiver answering at once (`bench.receiver`, its own
process). A run lasts from the first job's start to the last webhook's
settlement (both recorded in Redis), so worker start-up is not counted.
Baseline, on the same Redis: an RQ `SimpleWorker` draining as many no-op jobs
(`bench.baseline_tasks`), timed around `work(burst=True)` in its process.

Goals: Postback with 1 worker ÷ baseline >= 0.8; the 2 ÷ 1 worker factor is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq import Queue
from rq.registry import FailedJobRegistry

from bench import baseline_tasks
from bench.common import OWNER, ROOT, clean_env, embedded_redis, spawn, stop_group, submit, tail
from bench.delivery import receivers
from callbacks.keys import DEFAULT_KEYS
from callbacks.model import DeliveryStatus
from callbacks.outbox import Outbox
from callbacks.secrets import SecretStore
from callbacks.signing import generate_secret
from postback.embedded import free_port
from postback.settings import Settings
from worker import jobs as js
from worker.runtime import job_store

BASELINE_QUEUE = "bench:noop"
BATCH = 500


def baseline(client: redis.Redis, url: str, *, jobs: int) -> float:
    """No-op jobs per second drained by one RQ SimpleWorker (in its own process)."""
    client.flushall()
    queue = Queue(BASELINE_QUEUE, connection=client)
    for first in range(0, jobs, BATCH):
        queue.enqueue_many(
            [
                # As Postback enqueues its jobs (worker.jobs): no RQ timeout, no kept result.
                Queue.prepare_data(
                    baseline_tasks.noop, args=(n,), timeout=-1, result_ttl=0, failure_ttl=86400
                )
                for n in range(first, min(first + BATCH, jobs))
            ]
        )
    command = [sys.executable, "-m", "bench.baseline_tasks", "--url", url, "--queue", queue.name]
    done = subprocess.run(
        command, env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=600, check=True
    )
    seconds = json.loads(done.stdout.strip().splitlines()[-1])["seconds"]
    failed = FailedJobRegistry(queue=queue).count
    if queue.count or failed:
        raise RuntimeError(f"RQ baseline: {queue.count} jobs left, {failed} failed")
    return jobs / seconds


def postback(
    client: redis.Redis, url: str, callback_url: str, logs: Path, *, jobs: int, workers: int
) -> dict:
    """Jobs per second from first start to last delivery, with `workers` worker processes."""
    client.flushall()
    SecretStore(client).set(OWNER, generate_secret())
    store = job_store(client, Settings(durability="everysec"))
    job_ids = [submit(store, {"order": n}, callback_url=callback_url) for n in range(jobs)]
    env = clean_env(
        REDIS_URL=url,
        POSTBACK_CALLBACK_ALLOW_CIDRS="127.0.0.0/8",
        POSTBACK_LOG_LEVEL="WARNING",
    )
    processes: list[tuple[subprocess.Popen, Path]] = []
    try:
        launched = time.monotonic()
        for number in range(workers):
            log = logs / f"worker-{number}.log"
            # Its own group: the RQ scheduler process it forks is stopped with it.
            command = [sys.executable, "-m", "app.cli", "worker"]
            processes.append((spawn(command, env, log), log))
        settled = _wait_delivered(client, job_ids, processes, deadline=launched + 600)
        wall = time.monotonic() - launched
    finally:
        for process, _ in processes:
            stop_group(process)
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(js.job_key(job_id), "started_at")
        started = [float(value) for value in pipe.execute()]
    seconds = max(settled) - min(started)
    return {"per_second": jobs / seconds, "seconds": seconds, "wall_seconds": wall}


def _wait_delivered(
    client: redis.Redis,
    job_ids: list[str],
    processes: list[tuple[subprocess.Popen, Path]],
    *,
    deadline: float,
) -> list[float]:
    """Wait until every job's webhook is delivered; their settlement times."""
    wait_finished(client, len(job_ids), processes, deadline=deadline)
    return settlements(client, job_ids)


def wait_finished(
    client: redis.Redis,
    jobs: int,
    processes: list[tuple[subprocess.Popen, Path]],
    *,
    deadline: float,
    partner_id: str = OWNER,
) -> None:
    """Wait until the partner's `jobs` jobs have finished and no webhook is due or in flight.

    It asks two counts every 50 ms (cheap: the workers share the machine); it
    raises if a process of `processes` exits, a job fails, or `deadline` passes.
    """
    completed = js.partner_index(partner_id, js.COMPLETED)
    while True:
        for process, log in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a worker exited with {process.returncode}:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {jobs} webhooks were not delivered in time")
        with client.pipeline(transaction=False) as pipe:
            pipe.zcard(completed)
            pipe.zcard(js.partner_index(partner_id, js.FAILED))
            finished, failed = pipe.execute()
        due = Outbox(client).counts()["scheduled"]
        if failed:
            raise RuntimeError(f"{failed} echo jobs failed")
        if finished == jobs and due == 0:
            return
        time.sleep(0.05)


def settlements(client: redis.Redis, job_ids: list[str]) -> list[float]:
    """Each job's webhook settlement time, read pipelined; raises if one is not delivered."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(js.job_key(job_id), "event_id")
        event_ids = pipe.execute()
    with client.pipeline(transaction=False) as pipe:
        for event_id in event_ids:
            pipe.hmget(DEFAULT_KEYS.delivery(event_id.decode()), "status", "settled_at")
        states = pipe.execute()
    undelivered = [status for status, _ in states if status != DeliveryStatus.DELIVERED.encode()]
    if undelivered:
        raise RuntimeError(f"{len(undelivered)} webhooks not delivered: {set(undelivered)}")
    return [float(settled_at) for _, settled_at in states]


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "runs": values}


def main(quick: bool = False, data_parent: str = ".") -> dict:
    jobs, repeats = (20, 1) if quick else (2000, 3)
    with embedded_redis(data_parent) as (url, data):
        client = redis.Redis.from_url(url)
        rq_runs: list[float] = []
        runs: dict[int, list[dict]] = {1: [], 2: []}
        try:
            port = free_port()
            with receivers([port], delay=0):
                callback_url = f"http://127.0.0.1:{port}/hook"
                for _ in range(repeats):
                    rq_runs.append(baseline(client, url, jobs=jobs))
                    for workers in (1, 2):
                        runs[workers].append(
                            postback(client, url, callback_url, data, jobs=jobs, workers=workers)
                        )
        finally:
            client.close()
    one = [r["per_second"] for r in runs[1]]
    two = [r["per_second"] for r in runs[2]]
    return {
        "settings": {"jobs": jobs, "repeats": repeats, "receiver_delay_seconds": 0.0},
        "baseline_per_second": _summary(rq_runs),
        "postback_1_worker_per_second": _summary(one),
        "postback_2_workers_per_second": _summary(two),
        "postback_wall_seconds": {str(n): [r["wall_seconds"] for r in runs[n]] for n in runs},
        "ratio_1_worker_to_baseline": _summary([p / b for p, b in zip(one, rq_runs, strict=True)]),
        "scaling_2_to_1": _summary([b / a for a, b in zip(one, two, strict=True)]),
    }


def _runs(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(results: dict) -> str:
    s = results["settings"]
    base = results["baseline_per_second"]
    one = results["postback_1_worker_per_second"]
    two = results["postback_2_workers_per_second"]
    ratio = results["ratio_1_worker_to_baseline"]
    scaling = results["scaling_2_to_1"]
    return "\n".join(
        [
            f"P2 pipeline: {s['jobs']} jobs x {s['repeats']} runs, echo -> signed webhook "
            f"to a local receiver (0 ms)",
            f"   RQ SimpleWorker, no-op jobs: {base['median']:.0f}/s (runs {_runs(base['runs'])})",
            f"   Postback 1 worker: {one['median']:.0f}/s (runs {_runs(one['runs'])}); "
            f"ratio to RQ {ratio['median']:.2f} (runs {_runs(ratio['runs'], 2)}; goal >= 0.8)",
            f"   Postback 2 workers: {two['median']:.0f}/s (runs {_runs(two['runs'])}); "
            f"scaling 2/1 {scaling['median']:.2f} (runs {_runs(scaling['runs'], 2)})",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 jobs, one run")
    parser.add_argument("--data-parent", default=".", help="where the bench's data dir goes")
    args = parser.parse_args()
    print(report(main(args.quick, args.data_parent)))
