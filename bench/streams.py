"""Event-stream benchmark (P9): change → message latency with 2,000 streams open, ÷ with 10.

    python -m bench.streams [--quick] [--streams 2000] [--few 10] [--rate 200] [--seconds 10]

Postback's API (`postback serve`, its default 2 gevent workers) on the
embedded Redis, no worker running: every job stays queued until the benchmark
changes it. A reader process (`bench.stream_reader`, asyncio and aiohttp)
holds `GET /v1/jobs/{id}/events` open on jobs of one partner (whose
POSTBACK_PARTNER_MAX_WAITS is raised to hold them all) and timestamps every
message as its bytes arrive. Each phase makes `--streams` queued jobs, opens
the streams, and then changes every job the same way at known instants:

- progress: `--rate` reports a second for `--seconds` (the job store's
  `set_progress`, as a handler's `ctx.progress` does), measured from the
  instant before the call to its `progress` message;
- a burst: every job reports progress in one pipeline, measured from the
  instant before it to each `progress` message;
- cancels: `POST /v1/jobs/{id}/cancel` on every job at `--rate` a second,
  measured from the `cancelled` entry's `at` (ms, taken as the API writes it)
  to the `cancelled` and `end` messages; every stream must then close.

In the main phase every job is watched. The baseline phases, one before and one
after it, make the same changes to as many jobs with only `--few` of them
watched, each watched job changed every 0.5 s or so (progress is coalesced to
one message per 100 ms; changes further apart each get their own): the ratio
of the two is what holding 2,000 streams open costs a change's message.
Between the main phase and the second baseline, `--streams` long-polls
(`?wait=30`) on queued jobs are cancelled at `--rate`: the long-poll a stream
replaces, under the same load. The API processes'
memory (RSS, and PSS, summed over gunicorn's workers) is read before the
streams open, with them open and after they closed, with the subscriptions and
waits the API still holds then.

Goals: p99 change → message <= 250 ms with 2,000 streams open; no message lost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import redis
import requests

from bench.accept import _percentile, _postback
from bench.common import clean_env, embedded_redis, stop_group, tail
from bench.longpoll import api_rss_mib, open_waits
from bench.usage import Meter, api_pss_mib
from postback import timeline
from postback.embedded import free_port
from postback.settings import Durability, Settings
from worker.jobs import JobStore
from worker.records import done_channel, job_key
from worker.runtime import job_store

# How often a watched job changes in the baseline phases (see the module docstring).
FEW_SPACING_SECONDS = 0.5
# Progress values stay below 100 (a job's progress is a percentage).
MOST_REPORTS_PER_JOB = 98
# Requests in flight at once from the pacer (cancels take a few ms each under load).
PACER_THREADS = 16
# How long the reader has, after the last change, to see every stream close.
SETTLE_SECONDS = 10.0
# The API's hub unsubscribes idle channels about once a second; waited for up to this.
UNSUBSCRIBED_WITHIN_SECONDS = 10.0
# The figures taken in every phase, and the ones the report sets against the baseline.
KINDS = ("progress", "burst", "cancelled", "end")


@dataclass(frozen=True)
class Shape:
    streams: int
    few: int
    rate: float
    seconds: float
    # The quiet spells around the burst (and the window idle streams' CPU is read over).
    quiet_seconds: float = 2.0
    longpolls: bool = True


# The quiet spells stay above the 100 ms a stream coalesces progress over: the burst after
# the last reports must be a message of its own.
QUICK = Shape(streams=20, few=4, rate=80.0, seconds=0.25, quiet_seconds=0.3)
FULL = Shape(streams=2000, few=10, rate=200.0, seconds=10.0)


def spread(jobs: int, watched: int) -> list[int]:
    """`watched` job indexes spread evenly over `jobs` (all of them when equal)."""
    return [number * jobs // watched for number in range(watched)]


def progress_plan(jobs: int, watched: list[int], reports: int, rate: float) -> list[int]:
    """The job index of each of `reports` progress reports made at `rate`.

    With every job watched they go round robin; otherwise every k-th report goes
    to the next watched job (each watched job changes about every
    `FEW_SPACING_SECONDS`), the rest round robin over the others.
    """
    chosen = set(watched)
    others = [job for job in range(jobs) if job not in chosen]
    every = max(1, round(rate * FEW_SPACING_SECONDS / len(watched))) if others else 1
    plan = []
    for number in range(reports):
        if number % every == 0:
            plan.append(watched[number // every % len(watched)])
        else:
            plan.append(others[(number - number // every - 1) % len(others)])
    return plan


def numbered(plan: list[int], jobs: int) -> tuple[list[tuple[int, int]], list[int]]:
    """Each report of `plan` as (job, value), a job's values counting from 1; and each of
    the `jobs` jobs' next value (for the burst after them). ValueError past
    `MOST_REPORTS_PER_JOB`."""
    counts = [0] * jobs
    schedule = []
    for job in plan:
        counts[job] += 1
        schedule.append((job, counts[job]))
    if max(counts, default=0) > MOST_REPORTS_PER_JOB:
        raise ValueError(f"more than {MOST_REPORTS_PER_JOB} progress reports for a job")
    return schedule, [count + 1 for count in counts]


def _at(text: str) -> float:
    """Epoch seconds of an RFC 3339 `at` (ms precision: up to 1 ms early)."""
    return datetime.fromisoformat(text).timestamp()


def _figures(latencies: list[float], expected: int) -> dict:
    """p50/p99/max in ms of `latencies` (seconds), and how many of `expected` never came."""
    ordered = sorted(latencies)
    return {
        "latencies_ms": [round(value * 1000, 2) for value in ordered],
        "count": len(ordered),
        "lost": expected - len(ordered),
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "max_ms": (ordered[-1] if ordered else math.nan) * 1000,
    }


def paced(count: int, rate: float, action: Callable[[int], Any]) -> list[Any]:
    """`action(i)` for i < count, the i-th started at i / rate seconds (open loop)."""
    start = time.monotonic() + 0.05
    with ThreadPoolExecutor(PACER_THREADS) as pool:
        futures = []
        for number in range(count):
            delay = start + number / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(action, number))
        return [future.result() for future in futures]


@contextlib.contextmanager
def reader(
    kind: str, base: str, key: str, job_ids: list[str], data: Path, seconds: float
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """A `bench.stream_reader` process on `job_ids` (stopped at the end) and its out file."""
    name = f"{kind}-{len(job_ids)}-{secrets.token_hex(3)}"
    jobs_file, out, log = (data / f"{name}.{ext}" for ext in ("jobs", "json", "log"))
    jobs_file.write_text("\n".join(job_ids) + "\n")
    command = [sys.executable, "-m", "bench.stream_reader", kind, base, key, str(jobs_file)]
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [*command, str(out), "--seconds", str(seconds)],
            env=clean_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        yield process, out
    finally:
        stop_group(process)
        if process.stdout is not None:
            process.stdout.close()


def wait_until_open(process: subprocess.Popen, out: Path, seconds: float) -> None:
    """Until the reader says every stream has had its first message."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], seconds)
    line = process.stdout.readline() if readable else b""
    if line.strip() != b"open":
        log = out.with_suffix(".log")
        raise RuntimeError(
            f"the streams were not all open after {seconds:.0f} s ({line!r}):\n{tail(log)}"
        )


def collect(process: subprocess.Popen, out: Path, held: Callable[[], dict]) -> dict:
    """The reader's results once every stream has closed, or `SETTLE_SECONDS` from now.

    A reader still reading then has streams that never ended: what the API holds
    for the phase's jobs (`held()`) is recorded as `stalled` before it is stopped.
    """
    result: dict[str, Any] = {"stalled": None}
    try:
        process.wait(timeout=SETTLE_SECONDS)
    except subprocess.TimeoutExpired:
        result["stalled"] = held()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    if process.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"the reader failed ({process.returncode}):\n{tail(out.with_suffix('.log'))}"
        )
    return result | json.loads(out.read_text())


class Bench:
    """One `postback serve`, its partner, and the changes this process makes."""

    def __init__(
        self, url: str, base: str, key: str, partner_id: str, data: Path, master: int
    ) -> None:
        self.client = redis.Redis.from_url(url)
        self.store: JobStore = job_store(self.client, Settings(durability=Durability.EVERYSEC))
        self.base = base
        self.key = key
        self.partner_id = partner_id
        self.data = data
        # `postback serve` is gunicorn's master; the API processes are its children.
        self.master = master
        self.sessions = threading.local()

    def jobs(self, count: int) -> list[str]:
        """`count` queued `sleep` jobs of the partner (no worker will run them)."""
        return [
            self.store.create(
                partner_id=self.partner_id,
                type="sleep",
                input={"seconds": 1},
                callback_url=None,
                timeout_seconds=60,
            ).id
            for _ in range(count)
        ]

    def _session(self) -> requests.Session:
        if not hasattr(self.sessions, "session"):
            self.sessions.session = requests.Session()
            self.sessions.session.headers["Authorization"] = f"Bearer {self.key}"
        return self.sessions.session

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job through the API; whether it was accepted."""
        try:
            reply = self._session().post(f"{self.base}/v1/jobs/{job_id}/cancel", timeout=30)
        except requests.RequestException:
            return False
        # 200: a queued job is cancelled at once (202 is for a running one).
        return reply.status_code in (200, 202)

    def progress(self, job_ids: list[str], schedule: list[tuple[int, int]], rate: float) -> list:
        """Report `schedule`'s (job, value) progress in turn at `rate`; (job, value,
        instant) each, the instant taken just before the report."""

        def report(number: int) -> tuple[int, int, float]:
            job, value = schedule[number]
            instant = time.time()
            self.store.set_progress(job_ids[job], value)
            return job, value, instant

        return paced(len(schedule), rate, report)

    def burst(self, job_ids: list[str], values: list[int]) -> list[tuple]:
        """Every job reports its progress of `values` in one pipeline, as `set_progress`
        does; (job, value, instant) each, the instant taken just before the pipeline."""
        with self.client.pipeline(transaction=False) as pipe:
            for job_id, value in zip(job_ids, values, strict=True):
                pipe.hset(job_key(job_id), "progress", str(value))
                pipe.publish(timeline.channel(job_id), timeline.NEWS_PROGRESS)
            instant = time.time()
            pipe.execute()
        return [(job, value, instant) for job, value in enumerate(values)]

    def held(self, job_ids: list[str], channel: Callable[[str], str] = timeline.channel) -> dict:
        """What the API holds for `job_ids`: their subscribed channels (a stream's, or a
        long-poll's `done_channel`), the partner's waits."""
        channels = [channel(job_id) for job_id in job_ids]
        counts = cast(list, self.client.pubsub_numsub(*channels)) if channels else []
        return {
            "channels": sum(int(count) > 0 for _, count in counts),
            "waits": open_waits(self.client),
        }

    def cancels(self, job_ids: list[str], rate: float) -> int:
        """Cancel every job at `rate`; how many cancels were refused or failed."""
        return sum(not ok for ok in paced(len(job_ids), rate, lambda n: self.cancel(job_ids[n])))


def _watched(changes: list[tuple], stream_of: dict[int, int]) -> list[tuple]:
    """The `(job, value, instant)` changes of watched jobs, as (stream, value, instant)."""
    return [(stream_of[job], value, at) for job, value, at in changes if job in stream_of]


def _progress_latencies(result: dict, changes: list[tuple]) -> dict:
    """From each (stream, value, instant) change to the stream's `progress` message of it."""
    heard: dict[tuple[int, int], float] = {}
    for stream, event, arrived, _, progress in result["arrivals"]:
        if event == "progress":
            heard.setdefault((stream, progress), arrived)
    latencies = [heard[(s, v)] - at for s, v, at in changes if (s, v) in heard]
    return _figures(latencies, len(changes))


def _end_latencies(result: dict, event: str, streams: int) -> dict:
    """From each job's `cancelled` entry (its `at`) to the `event` message on its stream."""
    at = {s: _at(when) for s, name, _, when, _ in result["arrivals"] if name == "cancelled"}
    arrived = {s: when for s, name, when, _, _ in result["arrivals"] if name == event}
    return _figures([arrived[s] - at[s] for s in arrived if s in at], streams)


def _failures(result: dict) -> dict:
    outcomes = result["outcomes"]
    return {
        "refused": sum(o["status"] != 200 for o in outcomes),
        "errors": sum("error" in o for o in outcomes),
        "not_ended": sum(not o.get("ended") for o in outcomes),
    }


def stream_phase(bench: Bench, shape: Shape, watched: int) -> dict:
    """`shape.streams` jobs, `watched` of them with a stream open, all changed alike
    (progress, a burst, cancels); the latencies of the watched ones, memory and CPU."""
    job_ids = bench.jobs(shape.streams)
    chosen = spread(len(job_ids), watched)
    stream_of = {job: stream for stream, job in enumerate(chosen)}
    plan = progress_plan(len(job_ids), chosen, int(shape.rate * shape.seconds), shape.rate)
    schedule, after = numbered(plan, len(job_ids))
    quiet = shape.quiet_seconds
    bound = 120 + watched / 20 + shape.seconds + len(job_ids) / shape.rate + SETTLE_SECONDS
    streamed = [job_ids[job] for job in chosen]
    figures: dict[str, Any] = {"streams": watched, "jobs": len(job_ids), "rate": shape.rate}
    with reader("stream", bench.base, bench.key, streamed, bench.data, bound) as (process, out):
        started = time.monotonic()
        wait_until_open(process, out, bound)
        figures["open_seconds"] = time.monotonic() - started
        figures["rss_open_mib"] = api_rss_mib(bench.master)
        figures["pss_open_mib"] = api_pss_mib(bench.master)
        meter = Meter(bench.master)
        time.sleep(quiet)
        figures["idle_usage"] = meter.read(0)
        meter = Meter(bench.master)
        steady = bench.progress(job_ids, schedule, shape.rate)
        figures["progress_usage"] = meter.read(len(steady))
        time.sleep(quiet / 2)
        surge = bench.burst(job_ids, after)
        time.sleep(quiet / 2)
        meter = Meter(bench.master)
        figures["cancel_failures"] = bench.cancels(job_ids, shape.rate)
        figures["cancel_usage"] = meter.read(len(job_ids))
        result = collect(process, out, lambda: bench.held(streamed))
    figures["progress"] = _progress_latencies(result, _watched(steady, stream_of))
    figures["burst"] = _progress_latencies(result, _watched(surge, stream_of))
    figures["cancelled"] = _end_latencies(result, "cancelled", watched)
    figures["end"] = _end_latencies(result, "end", watched)
    figures["reader_cpu_seconds"] = result["cpu_seconds"]
    figures["stalled"] = result["stalled"]
    return figures | _failures(result)


def poll_phase(bench: Bench, count: int, rate: float) -> dict:
    """Hold `count` long-polls on queued jobs, cancel the jobs at `rate`, read the answers."""
    job_ids = bench.jobs(count)
    bound = 60 + count / rate + SETTLE_SECONDS
    with reader("poll", bench.base, bench.key, job_ids, bench.data, bound) as (process, out):
        deadline = time.monotonic() + 60
        while open_waits(bench.client) < count:
            if process.poll() is not None or time.monotonic() > deadline:
                log = tail(out.with_suffix(".log"))
                raise RuntimeError(f"{open_waits(bench.client)} of {count} long-polls open\n{log}")
            time.sleep(0.1)
        meter = Meter(bench.master)
        failures = bench.cancels(job_ids, rate)
        usage = meter.read(count)
        result = collect(process, out, lambda: bench.held(job_ids, done_channel))
    return {
        "long_polls": count,
        "cancelled": _end_latencies(result, "cancelled", count),
        "cancel_usage": usage,
        "cancel_failures": failures,
        "stalled": result["stalled"],
        **_failures(result),
    }


def released(bench: Bench) -> dict:
    """Once the streams have closed: how long until the API held no subscription and no
    wait any more (up to `UNSUBSCRIBED_WITHIN_SECONDS`), and what it still held then."""
    started = time.monotonic()
    while True:
        channels = len(cast(list, bench.client.pubsub_channels("pb:job:*")))
        waits = open_waits(bench.client)
        elapsed = time.monotonic() - started
        if not (channels or waits) or elapsed > UNSUBSCRIBED_WITHIN_SECONDS:
            return {"seconds": elapsed, "channels": channels, "waits": waits}
        time.sleep(0.1)


def main(shape: Shape = FULL, data_parent: str = ".") -> dict:
    """The phases in order (baseline, main, long-polls, baseline); see the module docstring."""
    with embedded_redis(data_parent) as (url, data):
        admin_token = secrets.token_hex(16)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        waits = {"POSTBACK_PARTNER_MAX_WAITS": str(shape.streams + 100)}
        with _postback(url, "everysec", port, admin_token, data / "api.log", **waits) as api:
            partner = requests.post(
                f"{base}/v1/admin/partners",
                json={"name": "bench"},
                headers={"Authorization": f"Bearer {admin_token}"},
                timeout=10,
            ).json()
            bench = Bench(url, base, partner["api_key"], partner["id"], data, api.pid)
            results: dict[str, Any] = {"shape": asdict(shape)}
            results["few_before"] = stream_phase(bench, shape, shape.few)
            released(bench)
            results["rss_before_mib"] = api_rss_mib(api.pid)
            results["pss_before_mib"] = api_pss_mib(api.pid)
            results["many"] = stream_phase(bench, shape, shape.streams)
            results["released"] = released(bench)
            results["rss_after_mib"] = api_rss_mib(api.pid)
            if shape.longpolls:
                results["long_polls"] = poll_phase(bench, shape.streams, shape.rate)
            results["few_after"] = stream_phase(bench, shape, shape.few)
            bench.client.close()
    return _summarize(results, shape.streams)


def _summarize(results: dict, streams: int) -> dict:
    """Per-stream memory, the baseline (both baseline phases pooled) and the ratios."""
    many = results["many"]
    results["per_stream_kib"] = {
        "rss": (many["rss_open_mib"] - results["rss_before_mib"]) * 1024 / streams,
        "pss": (many["pss_open_mib"] - results["pss_before_mib"]) * 1024 / streams,
    }
    results["baseline"], results["ratio_p50"], results["ratio_p99"] = {}, {}, {}
    phases = (results["few_before"], results["few_after"])
    for kind in KINDS:
        pooled = [value / 1000 for phase in phases for value in phase[kind]["latencies_ms"]]
        expected = sum(phase[kind]["count"] + phase[kind]["lost"] for phase in phases)
        baseline = results["baseline"][kind] = _figures(pooled, expected)
        for q in ("p50", "p99"):
            results[f"ratio_{q}"][kind] = many[kind][f"{q}_ms"] / baseline[f"{q}_ms"]
    # The raw latencies made the figures above; the results keep the figures.
    for figures in _nested(results):
        figures.pop("latencies_ms", None)
    return results


def _nested(tree: dict) -> Iterator[dict]:
    yield tree
    for value in tree.values():
        if isinstance(value, dict):
            yield from _nested(value)


def _line(figure: dict) -> str:
    return f"p50 {figure['p50_ms']:.1f} / p99 {figure['p99_ms']:.1f} / max {figure['max_ms']:.1f}"


def _stalled(held: dict | None) -> str:
    if held is None:
        return ""
    return (
        f" (the API still held {held['channels']} of their channels and {held['waits']} waits "
        f"{SETTLE_SECONDS:.0f} s after the last change)"
    )


def report(results: dict) -> str:
    many, base, polls = results["many"], results["baseline"], results.get("long_polls")
    ratio, few = results["ratio_p99"], results["few_before"]["streams"]
    lost = sum(many[kind]["lost"] for kind in KINDS)
    failed = many["refused"] + many["errors"] + many["cancel_failures"]
    lines = [
        f"P9 event streams: {many['streams']} open on one `postback serve` (opened in "
        f"{many['open_seconds']:.1f} s); changes to {many['jobs']} jobs at {many['rate']:.0f}/s; "
        f"ms with all watched | with {few} watched | p99 ratio (goal p99 <= 250 ms)",
    ]
    labels = ("progress", "burst", "cancel → cancelled", "cancel → end")
    for kind, label in zip(KINDS, labels, strict=True):
        lines.append(f"   {label}: {_line(many[kind])} | {_line(base[kind])} | {ratio[kind]:.2f}")
    if polls:
        lines.append(
            f"   {polls['long_polls']} long-polls instead, cancel → answer: "
            f"{_line(polls['cancelled'])}; p99 streams ÷ long-polls "
            f"{many['cancelled']['p99_ms'] / polls['cancelled']['p99_ms']:.2f}; API CPU "
            f"{polls['cancel_usage']['api_cpu_ms_per_change']:.2f} ms per cancel; failed "
            f"{polls['refused'] + polls['errors'] + polls['cancel_failures'] + polls['not_ended']}"
        )
    per, gone = results["per_stream_kib"], results["released"]
    idle, progress, cancel = (many[f"{k}_usage"] for k in ("idle", "progress", "cancel"))
    lines += [
        f"   lost messages {lost}; failed requests {failed}; streams not ended {many['not_ended']}"
        + _stalled(many["stalled"]),
        f"   API memory: RSS {results['rss_before_mib']:.0f} → {many['rss_open_mib']:.0f} MiB, "
        f"{per['rss']:.1f} KiB per stream (PSS {per['pss']:.1f} KiB); "
        f"{results['rss_after_mib']:.0f} MiB after they closed, when {gone['channels']} channels "
        f"and {gone['waits']} waits were still held {gone['seconds']:.1f} s later",
        f"   API CPU: {idle['api_cores'] * 100:.1f} % of a core with the streams idle; "
        f"{progress['api_cpu_ms_per_change']:.2f} ms per progress report, "
        f"{cancel['api_cpu_ms_per_change']:.2f} ms per cancel (the machine "
        f"{progress['machine_busy'] * 100:.0f} % and {cancel['machine_busy'] * 100:.0f} % busy); "
        f"reader {many['reader_cpu_seconds']:.1f} s",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny run of seconds")
    parser.add_argument("--streams", type=int, help=f"streams open at once ({FULL.streams})")
    parser.add_argument("--few", type=int, help=f"streams open in the baseline ({FULL.few})")
    parser.add_argument("--rate", type=float, help=f"changes a second ({FULL.rate:.0f})")
    parser.add_argument("--seconds", type=float, help=f"of progress reports ({FULL.seconds:.0f})")
    parser.add_argument("--no-long-polls", action="store_true", help="skip the long-poll phase")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args()
    chosen = QUICK if args.quick else FULL
    shape = Shape(
        streams=args.streams or chosen.streams,
        few=args.few or chosen.few,
        rate=args.rate or chosen.rate,
        seconds=args.seconds or chosen.seconds,
        quiet_seconds=chosen.quiet_seconds,
        longpolls=not args.no_long_polls,
    )
    outcome = main(shape)
    if args.json:
        Path(args.json).write_text(json.dumps(outcome, indent=2))
    print(report(outcome))
