"""Lifecycle benchmarks: the cost of fsync acknowledgements, recovery time, memory per job.

    python -m bench.lifecycle [--quick]

Durability: jobs created and acknowledged per second by the job store, with
`fsync` (WAITAOF) against `everysec`, one client and eight, in the same run.
Recovery (P5): seconds from SIGKILL of a worker mid-job to that job finishing
on another worker, with the default lease. Memory: Redis bytes per retained
finished job (with its webhook event and indexes).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis

from bench.common import OWNER, clean_env, embedded_redis, submit
from callbacks.keys import DEFAULT_KEYS
from postback import timeline
from postback.settings import Settings
from worker import jobs as js
from worker.runtime import job_store


def durability(url: str, mode: str, *, jobs: int, threads: int) -> dict:
    """Create and acknowledge `jobs` jobs from `threads` clients; rate and latencies."""
    client = redis.Redis.from_url(url, max_connections=threads + 4)
    store = job_store(client, Settings(durability=mode))
    latencies: list[float] = []
    lock = threading.Lock()

    def one_client(count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            submit(store, {"n": 1})
            store.confirm_durable()
            with lock:
                latencies.append(time.perf_counter() - started)

    workers = [threading.Thread(target=one_client, args=(jobs // threads,)) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    client.close()
    return {
        "per_second": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def recovery(url: str, *, lease_seconds: float) -> float:
    """Seconds from SIGKILL of the worker running a 1 s job to the job completing elsewhere."""
    client = redis.Redis.from_url(url)
    client.flushall()
    store = job_store(client, Settings(durability="everysec"))
    env = clean_env(
        REDIS_URL=url, POSTBACK_JOB_LEASE_SECONDS=str(lease_seconds), POSTBACK_LOG_LEVEL="WARNING"
    )
    command = [sys.executable, "-m", "app.cli", "worker"]
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    second = None
    try:
        job_id = submit(store, {"seconds": 1}, type="sleep")
        while store.get(job_id).status != js.PROCESSING:
            time.sleep(0.01)
        second = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # the job is half done
        os.kill(first.pid, signal.SIGKILL)
        killed = time.monotonic()
        while store.get(job_id).status != js.COMPLETED:
            if time.monotonic() - killed > 120:
                raise TimeoutError("the job was not recovered in 120 s")
            time.sleep(0.02)
        return time.monotonic() - killed
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=15)
        client.close()


def memory_per_job(url: str, *, jobs: int, sample: int = 100) -> dict:
    """Redis bytes per finished job kept for retention (record, timeline, webhook event, indexes).

    `MEMORY USAGE` of a sample of jobs' own keys, plus each job's share of the
    sorted sets they are indexed in; and, as a cross-check that includes the
    keyspace's own overhead, the growth of `used_memory` over all `jobs`.
    """
    client = redis.Redis.from_url(url)
    client.flushall()
    store = job_store(client, Settings(durability="everysec"))
    before = client.info("memory")["used_memory"]
    job_ids = []
    for number in range(jobs):
        job_id = submit(store, {"order": number}, callback_url="https://hooks.example.com/in")
        store.start(job_id, run_id="bench", lease_seconds=60)
        store.finish(job_id, status=js.COMPLETED, result={"order": number}, run_id="bench")
        job_ids.append(job_id)
    # The RQ job hashes are gone once RQ runs a job (result_ttl=0): drop them as a worker would.
    for key in client.scan_iter("rq:job:*"):
        client.delete(key)
    client.delete(*(f"rq:queue:{name}" for name in js.QUEUES.values()))
    used = (client.info("memory")["used_memory"] - before) / jobs
    picked = job_ids[:: max(1, jobs // sample)]
    own = 0
    for job_id in picked:
        event_id = client.hget(js.job_key(job_id), "event_id").decode()
        for key in (
            js.job_key(job_id),
            timeline.key(job_id),
            DEFAULT_KEYS.message(event_id),
            DEFAULT_KEYS.delivery(event_id),
        ):
            own += client.memory_usage(key) or 0
    shared_keys = [
        js.partner_index(OWNER),
        js.partner_index(OWNER, js.COMPLETED),
        js.RETENTION_KEY,
        DEFAULT_KEYS.due(OWNER),
    ]
    shared = sum(client.memory_usage(key) or 0 for key in shared_keys)
    client.close()
    return {
        "memory_usage_bytes": own / len(picked) + shared / jobs,
        "used_memory_bytes": used,
        "jobs": jobs,
        "sample": len(picked),
    }


def worker_rss(url: str, *, jobs: int) -> dict:
    """A worker's resident memory (its job process) before and after running `jobs` echo jobs."""
    client = redis.Redis.from_url(url)
    client.flushall()
    store = job_store(client, Settings(durability="everysec"))
    env = clean_env(REDIS_URL=url, POSTBACK_LOG_LEVEL="WARNING")
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env=env, stderr=subprocess.DEVNULL
    )
    try:
        first = submit(store, {"n": 0})
        while store.get(first).status != js.COMPLETED:
            time.sleep(0.05)
        before = _rss_kib(process.pid)
        ids = [submit(store, {"n": n}) for n in range(jobs)]
        deadline = time.monotonic() + 600
        while store.get(ids[-1]).status != js.COMPLETED and time.monotonic() < deadline:
            time.sleep(0.2)
        return {"jobs": jobs, "rss_kib_after_1": before, "rss_kib_after_all": _rss_kib(process.pid)}
    finally:
        process.terminate()
        process.wait(timeout=15)
        client.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main(quick: bool = False, data_parent: str = ".") -> dict:
    with embedded_redis(data_parent) as (url, _):
        results: dict = {}
        count = 40 if quick else 800
        for threads in (1, 8):
            runs = {
                mode: [
                    durability(url, mode, jobs=count, threads=threads)
                    for _ in range(1 if quick else 3)
                ]
                for mode in ("everysec", "fsync")
            }
            summary = {
                mode: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                for mode, rs in runs.items()
            }
            summary["ratio_fsync_to_everysec"] = (
                summary["fsync"]["per_second"] / summary["everysec"]["per_second"]
            )
            results[f"durability_{threads}_clients"] = summary
        lease = 1.0 if quick else Settings().job_lease_seconds
        seconds = [recovery(url, lease_seconds=lease) for _ in range(1 if quick else 3)]
        results["p5_recovery_seconds"] = {
            "lease_seconds": lease,
            "median": statistics.median(seconds),
            "runs": seconds,
        }
        results["bytes_per_retained_job"] = memory_per_job(url, jobs=200 if quick else 5000)
        results["worker_rss"] = worker_rss(url, jobs=20 if quick else 10_000)
    return results


def report(results: dict) -> str:
    lines = []
    for clients in (1, 8):
        row = results[f"durability_{clients}_clients"]
        lines.append(
            f"durability, {clients} client(s): fsync {row['fsync']['per_second']:.0f}/s, "
            f"everysec {row['everysec']['per_second']:.0f}/s, "
            f"ratio {row['ratio_fsync_to_everysec']:.2f}"
        )
    p5 = results["p5_recovery_seconds"]
    lines.append(
        f"P5 recovery after SIGKILL: median {p5['median']:.2f} s "
        f"(lease {p5['lease_seconds']} s; goal <= 15)"
    )
    memory = results["bytes_per_retained_job"]
    lines.append(
        f"Redis bytes per retained job: {memory['memory_usage_bytes']:.0f} (MEMORY USAGE, "
        f"sample of {memory['sample']}); used_memory growth {memory['used_memory_bytes']:.0f}"
    )
    rss = results["worker_rss"]
    lines.append(
        f"worker RSS: {rss['rss_kib_after_1']} KiB after 1 job, "
        f"{rss['rss_kib_after_all']} KiB after {rss['jobs']} more"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--data-parent", default=".", help="where the bench's data dir goes")
    args = parser.parse_args()
    print(json.dumps(main(args.quick, args.data_parent), indent=2))
