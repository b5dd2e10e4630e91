"""Accept benchmark (P1): `POST /v1/jobs` throughput and latency under gunicorn.

    python -m bench.accept [--quick]

Postback's API (`postback serve`: gunicorn, 2 gevent workers) is
loaded by a fixed number of concurrent clients (threads of this process, one
`requests.Session` each) for a fixed time after a warm-up, and compared with a
bare Flask app under the same gunicorn settings whose endpoint does one Redis
LPUSH (`bench.baseline_app`); that app under gthread (8 threads, the model the
API ran on before) shows what the server model itself costs. The same clients
against that app's `GET /ping` (no Redis) show what the load generator itself
can do. Then a fixed-rate load
at half of Postback's measured throughput gives the p99 of a loaded but not
saturated API. Both durability modes (`fsync`, `everysec`) are measured, and
every figure is the median of the runs, each run measuring every target.

Goals: Postback accepts/s ÷ baseline accepts/s >= 0.7; p99 at half load <= 10 ms.

    python -m bench.accept --replicas N [--replica-appendfsync everysec]

measures the same against the primary of an HA set with N replicas (`postback.ha`),
`replicated` durability (P10) beside the other two, each against the same primary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
import requests

from bench.common import clean_env, embedded_redis, replicated_redis, spawn, stop_group, tail
from postback.embedded import free_port

CLIENTS = 16
# Client processes the clients are spread over (threads in each).
PROCESSES = 2
API_WORKERS = 2
# As app/server.py runs the API (Settings.api_worker_connections).
WORKER_CONNECTIONS = 4096
# The thread model it ran before, measured beside it for comparison.
THREADS = 8
MODES = ("fsync", "everysec")
JOB = json.dumps({"type": "echo", "input": {"order": 1, "note": "bench"}}).encode()


@dataclass(frozen=True)
class Target:
    method: str
    url: str
    expect: int
    body: bytes | None = None
    token: str | None = None


def _load(
    target: Target,
    begin: float,
    warmup: float,
    seconds: float,
    threads: int,
    first: int,
    clients: int,
    rate: float | None,
) -> tuple[list[float], int]:
    """One client process: `threads` clients (numbers `first`...) from `begin` (monotonic).

    Returns the latencies (seconds) of the good answers to requests sent after the
    warm-up, and how many requests sent then failed.
    """
    headers = {"Content-Type": "application/json"} if target.body is not None else {}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    counted_from = begin + warmup
    until = counted_from + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def client(index: int) -> None:
        session = requests.Session()
        # Prepared once and sent as is: no per-request preparation or proxy lookups,
        # so the load generator spends as little CPU as it can (the server shares it).
        prepared = session.prepare_request(
            requests.Request(target.method, target.url, data=target.body, headers=headers)
        )
        interval = clients / rate if rate else 0.0
        # Paced clients are spread evenly over the interval.
        next_at = begin + interval * (first + index) / clients
        mine = latencies[index]
        time.sleep(max(0.0, begin - time.monotonic()))
        try:
            while True:
                if rate:
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at += interval
                sent = time.monotonic()
                if sent >= until:
                    break
                try:
                    response = session.send(prepared, timeout=30)
                    ok = response.status_code == target.expect
                except requests.RequestException:
                    ok = False
                if sent >= counted_from:
                    if ok:
                        mine.append(time.monotonic() - sent)
                    else:
                        errors[index] += 1
        finally:
            session.close()

    pool = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return [latency for mine in latencies for latency in mine], sum(errors)


class LoadGenerator:
    """`CLIENTS` concurrent clients: threads with a `requests.Session` each, spread over
    `PROCESSES` processes so that one interpreter's lock does not cap the load."""

    def __init__(self, clients: int = CLIENTS, processes: int = PROCESSES) -> None:
        self.clients = clients
        self.processes = processes
        self.pool = ProcessPoolExecutor(processes, mp_context=mp.get_context("spawn"))
        # Start every process now (imports included), not inside the first measurement.
        list(self.pool.map(time.sleep, [0.2] * processes))

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def measure(
        self, target: Target, *, seconds: float, warmup: float, rate: float | None = None
    ) -> dict:
        """Load `target`; count what is sent during `seconds` after `warmup` seconds.

        Without `rate` each client sends its next request as soon as the last one is
        answered (saturation); with it, each client paces itself to `rate / clients`
        per second. Latency runs from sending a request to having read its answer.
        """
        begin = time.monotonic() + 0.1
        shares = [self.clients // self.processes] * self.processes
        shares[0] += self.clients - sum(shares)
        parts = [
            self.pool.submit(
                _load, target, begin, warmup, seconds, share, sum(shares[:n]), self.clients, rate
            )
            for n, share in enumerate(shares)
        ]
        done: list[float] = []
        errors = 0
        for part in parts:
            latencies, failed = part.result()
            done.extend(latencies)
            errors += failed
        done.sort()
        return {
            "per_second": len(done) / seconds,
            "p50_ms": _percentile(done, 0.50) * 1000,
            "p95_ms": _percentile(done, 0.95) * 1000,
            "p99_ms": _percentile(done, 0.99) * 1000,
            "requests": len(done),
            "errors": errors,
        }


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (NaN when there are none)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(frozen=True)
class Launch:
    """How to start a server: its command, environment, and the URL that answers 200 once
    it is ready."""

    command: list[str]
    env: dict[str, str]
    ready_url: str


@contextlib.contextmanager
def _servers(launches: list[tuple[Launch, Path]]) -> Iterator[list[subprocess.Popen]]:
    """Gunicorn masters (each in its own process group, its stderr to its log) started at
    once, yielded once each answers its `ready_url`; stopped together at the end."""
    processes: list[subprocess.Popen] = []
    try:
        for launch, log in launches:
            processes.append(spawn(launch.command, launch.env, log))
        deadline = time.monotonic() + 60
        for process, (launch, log) in zip(processes, launches, strict=True):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{launch.command[2:4]} exited with {process.returncode}:\n{tail(log)}"
                    )
                with contextlib.suppress(requests.RequestException):
                    if requests.get(launch.ready_url, timeout=1).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{launch.ready_url} did not answer in 60 s:\n{tail(log)}")
                time.sleep(0.1)
        yield processes
    finally:
        # Every one told to stop first, so that their graceful shutdowns overlap.
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            stop_group(process)


@contextlib.contextmanager
def _server(launch: Launch, log: Path) -> Iterator[subprocess.Popen]:
    """One server of `_servers`: started, yielded once ready, stopped at the end."""
    with _servers([(launch, log)]) as (process,):
        yield process


def _postback(url: str, mode: str, port: int, admin_token: str, log: Path, **settings: str):
    """`postback serve` on `url` in durability `mode`, answering once ready."""
    return _server(_postback_launch(url, mode, port, admin_token, **settings), log)


def _postback_launch(url: str, mode: str, port: int, admin_token: str, **settings: str) -> Launch:
    """How `_postback` starts `postback serve`."""
    bounds = {
        # The bench's one partner queues every job it sends and no worker takes them:
        # at the default bounds (10,000 of a partner's jobs waiting) a fast run reaches
        # the bound within a measurement and is then answered 503, which is not what
        # P1 measures. The bounds are checked the same way whatever their values.
        "POSTBACK_MAX_BACKLOG": "100000000",
        "POSTBACK_PARTNER_MAX_BACKLOG": "100000000",
    }
    env = clean_env(
        **(bounds | settings),
        REDIS_URL=url,
        POSTBACK_ADMIN_TOKEN=admin_token,
        POSTBACK_RATE_LIMIT="1000000/second",
        POSTBACK_LOG_LEVEL="WARNING",
        POSTBACK_API_WORKERS=str(API_WORKERS),
        POSTBACK_DURABILITY=mode,
    )
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    return Launch(command, env, f"http://127.0.0.1:{port}/healthz")


def _baseline_launch(url: str, port: int, worker_class: str = "gevent") -> Launch:
    """The bare app under Postback's server settings (gevent), or under `worker_class`."""
    model = ["--worker-class", worker_class]
    if worker_class == "gevent":
        model += ["--worker-connections", str(WORKER_CONNECTIONS)]
    else:
        model += ["--threads", str(THREADS)]
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(API_WORKERS),
        *model,
        "--timeout",
        "60",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        "--no-control-socket",
        "bench.baseline_app:create_app()",
    ]
    return Launch(command, clean_env(REDIS_URL=url), f"http://127.0.0.1:{port}/ping")


def _partner_key(base: str, admin_token: str) -> str:
    response = requests.post(
        f"{base}/v1/admin/partners",
        json={"name": "bench"},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    response.raise_for_status()
    return response.json()["api_key"]


def _summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "runs": values}


def main(
    quick: bool = False,
    data_parent: str = ".",
    *,
    replicas: int = 0,
    replica_appendfsync: str = "always",
) -> dict:
    """P1's figures; with `replicas`, against an HA set's primary, `replicated` included."""
    seconds, warmup, repeats = (1.0, 0.25, 1) if quick else (8.0, 1.0, 3)
    modes = (*MODES, "replicated") if replicas else MODES
    server = (
        replicated_redis(replicas, data_parent, replica_appendfsync=replica_appendfsync)
        if replicas
        else embedded_redis(data_parent)
    )
    with server as (url, data):
        client = redis.Redis.from_url(url)
        admin_token = secrets.token_hex(16)
        ports = {name: free_port() for name in ("baseline", "baseline_gthread", *modes)}
        bases = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        names = ("ping", "baseline", "baseline_gthread", *modes)
        runs: dict[str, list[dict]] = {name: [] for name in names}
        half: dict[str, list[dict]] = {mode: [] for mode in modes}
        extra = {"POSTBACK_DURABILITY_REPLICAS": str(replicas)} if replicas else {}
        try:
            with contextlib.ExitStack() as stack:
                generator = LoadGenerator()
                stack.callback(generator.close)
                measure = generator.measure
                launches = [
                    (_baseline_launch(url, ports["baseline"]), data / "baseline.log"),
                    (
                        _baseline_launch(url, ports["baseline_gthread"], "gthread"),
                        data / "baseline-gthread.log",
                    ),
                ] + [
                    (
                        _postback_launch(url, mode, ports[mode], admin_token, **extra),
                        data / f"api-{mode}.log",
                    )
                    for mode in modes
                ]
                stack.enter_context(_servers(launches))
                for number in range(repeats):
                    timing = {"seconds": seconds, "warmup": warmup}
                    runs["ping"].append(
                        measure(Target("GET", f"{bases['baseline']}/ping", 200), **timing)
                    )
                    client.flushall()
                    for name in ("baseline", "baseline_gthread"):
                        client.flushall()
                        target = Target("POST", f"{bases[name]}/v1/jobs", 202, JOB)
                        runs[name].append(measure(target, **timing))
                    # Alternate the order of the modes from run to run: drift hits both alike.
                    for mode in modes if number % 2 == 0 else modes[::-1]:
                        client.flushall()  # no backlog carried over (it is bounded, and costs AOF)
                        key = _partner_key(bases[mode], admin_token)
                        target = Target("POST", f"{bases[mode]}/v1/jobs", 202, JOB, key)
                        full = measure(target, **timing)
                        runs[mode].append(full)
                        client.flushall()
                        key = _partner_key(bases[mode], admin_token)
                        target = Target("POST", f"{bases[mode]}/v1/jobs", 202, JOB, key)
                        rate = full["per_second"] / 2
                        half[mode].append({"rate": rate, **measure(target, rate=rate, **timing)})
        finally:
            client.close()

    def figures(name: str) -> dict:
        return {
            key: _summary([r[key] for r in runs[name]])
            for key in ("per_second", "p50_ms", "p95_ms", "p99_ms")
        } | {"errors": sum(r["errors"] for r in runs[name])}

    results: dict = {
        "settings": {
            "clients": CLIENTS,
            "client_processes": PROCESSES,
            "seconds": seconds,
            "warmup_seconds": warmup,
            "repeats": repeats,
            "gunicorn": {
                "workers": API_WORKERS,
                "worker_class": "gevent",
                "worker_connections": WORKER_CONNECTIONS,
            },
            "replicas": replicas,
            "replica_appendfsync": replica_appendfsync if replicas else None,
        },
        "client_ceiling_per_second": _summary([r["per_second"] for r in runs["ping"]]),
        "baseline": figures("baseline"),
        "baseline_gthread": figures("baseline_gthread"),
    }
    for mode in modes:
        results[mode] = figures(mode) | {
            "ratio_to_baseline": _summary(
                [
                    p["per_second"] / b["per_second"]
                    for p, b in zip(runs[mode], runs["baseline"], strict=True)
                ]
            ),
            "half_load": {
                "rate": _summary([h["rate"] for h in half[mode]]),
                "achieved_per_second": _summary([h["per_second"] for h in half[mode]]),
                "p50_ms": _summary([h["p50_ms"] for h in half[mode]]),
                "p99_ms": _summary([h["p99_ms"] for h in half[mode]]),
                "errors": sum(h["errors"] for h in half[mode]),
            },
        }

    def ratio(over: str, under: str) -> dict:
        return _summary(
            [
                o["per_second"] / u["per_second"]
                for o, u in zip(runs[over], runs[under], strict=True)
            ]
        )

    results["ratio_fsync_to_everysec"] = ratio("fsync", "everysec")
    if replicas:
        results["ratio_replicated_to_fsync"] = ratio("replicated", "fsync")
        results["ratio_replicated_to_everysec"] = ratio("replicated", "everysec")
    return results


def _runs(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(results: dict) -> str:
    s = results["settings"]
    b = results["baseline"]

    def latency(figures: dict) -> str:
        return "/".join(f"{figures[k]['median']:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms"))

    lines = [
        f"P1 accept: {s['clients']} clients in {s['client_processes']} processes, "
        f"{s['seconds']:g} s x {s['repeats']} runs; "
        f"load generator alone (GET /ping): "
        f"{results['client_ceiling_per_second']['median']:.0f}/s",
        f"   baseline (Flask + LPUSH, gevent): {b['per_second']['median']:.0f}/s "
        f"(runs {_runs(b['per_second']['runs'])}), p50/p95/p99 {latency(b)} ms",
        f"   the same under gthread ({THREADS} threads): "
        f"{results['baseline_gthread']['per_second']['median']:.0f}/s "
        f"(runs {_runs(results['baseline_gthread']['per_second']['runs'])}), "
        f"p50/p95/p99 {latency(results['baseline_gthread'])} ms",
    ]
    modes = [mode for mode in (*MODES, "replicated") if mode in results]
    if s.get("replicas"):
        lines[0] += (
            f"; against an HA set's primary, {s['replicas']} replica(s) "
            f"with appendfsync {s['replica_appendfsync']}"
        )
    for mode in modes:
        m = results[mode]
        h = m["half_load"]
        lines.append(
            f"   {mode}: {m['per_second']['median']:.0f}/s, p50/p95/p99 {latency(m)} ms, "
            f"ratio {m['ratio_to_baseline']['median']:.2f} "
            f"(runs {_runs(m['ratio_to_baseline']['runs'], 2)}; goal >= 0.7); "
            f"p99 at {h['rate']['median']:.0f}/s {h['p99_ms']['median']:.1f} ms "
            f"(runs {_runs(h['p99_ms']['runs'], 1)}; goal <= 10)"
        )
    failed = {name: results[name]["errors"] for name in ("baseline", "baseline_gthread", *modes)}
    failed |= {f"{mode} at half load": results[mode]["half_load"]["errors"] for mode in modes}
    # A failed request is not counted as an accept, but a fast failure frees its client
    # for the next one: a target with failures is not measured as the others are.
    where = ", ".join(f"{name} {count}" for name, count in failed.items() if count)
    cost = results["ratio_fsync_to_everysec"]
    lines.append(
        f"   durability cost, accepts/s fsync / everysec: {cost['median']:.2f} "
        f"(runs {_runs(cost['runs'], 2)}); failed requests: {sum(failed.values())}"
        + (f" ({where}): these figures do not hold" if where else "")
    )
    if "ratio_replicated_to_fsync" in results:
        to_fsync = results["ratio_replicated_to_fsync"]
        to_everysec = results["ratio_replicated_to_everysec"]
        lines.append(
            f"   replication cost, accepts/s replicated / fsync: {to_fsync['median']:.2f} "
            f"(runs {_runs(to_fsync['runs'], 2)}), replicated / everysec: "
            f"{to_everysec['median']:.2f} (runs {_runs(to_everysec['runs'], 2)})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 s loads, one run")
    parser.add_argument("--data-parent", default=".", help="where the bench's data dir goes")
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="against an HA set with this many replicas, replicated durability included",
    )
    parser.add_argument(
        "--replica-appendfsync",
        choices=("always", "everysec"),
        default="always",
        help="the replicas' appendfsync (with --replicas)",
    )
    args = parser.parse_args()
    results = main(
        args.quick,
        args.data_parent,
        replicas=args.replicas,
        replica_appendfsync=args.replica_appendfsync,
    )
    print(report(results))
