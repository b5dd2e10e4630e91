"""Delivery benchmarks: throughput, isolation (sick destinations, tenants), fan-out, duplicates.

    python -m bench.delivery [--quick] [--only p3,p4,p4b,p4c,p7,duplicates,cross_tenant]

Each figure is the median of `repeats` runs (3; `--quick`: 1 run of tiny counts, with
receivers answering sooner: `QUICK`);
a ratio is set against its baseline measured in the same run, just before it.
P3, P4, P4b, P4c and the cross-tenant runs use a dispatcher in this process
(`worker.process.dispatcher`, delivery timeout 5 s; `--quick`: 0.5 s); P7 and the
duplicate count run `postback deliver` processes. Receivers are `bench.receiver`
processes; Redis is an embedded server of the run's own, flushed before each run.

P3: deliveries per second from one dispatcher to a receiver that answers in
    200 ms (600 webhooks). Goal: at least 150.
P4: the delivery rate to 4 healthy destinations (200 ms answers, 300 webhooks each)
    while 1 destination hangs until the timeout, divided by the same rate without it.
    Goal: at least 0.9.
P4b: the same with 8 hanging destinations (300 webhooks each). Goal: at least 0.9.
P4c: the same with 6 destinations trickling their answer one byte a second. Goal: at
    least 0.9. Besides: the attempts recorded to them (read once each trickling
    destination has a recorded attempt and the dispatcher has stopped, so every
    attempt it started has ended), whether every one failed with `timeout`, and the
    longest one. Goal: none longer than (timeout + 1 s).
P7: one `postback deliver` process (default settings) fanning out to 1,000
    destinations (the ports of one receiver, 1 s answers), 10 webhooks each:
    deliveries per second, from starting the process until all 10,000 are delivered.
    Goal: at least 800 (a thread per attempt topped out at 256). Besides: the
    process's peak RSS.
Duplicates: 2 `postback deliver` processes, 100 webhooks to a receiver answering
    500 for its first 6 s (retries from 1 s, circuits cooling for 2 s): how many
    webhook-ids the receiver acknowledged (2xx) more than once. Goal: 0. Besides:
    deliveries whose attempt log is not exactly 1..n with n its `attempts` count
    (goal 0), and the attempts made.
Cross-tenant: partner B's 100 webhooks to path /b of a host (204 in 200 ms), alone
    and beside partner A's 200 to path /a of the same host answered X (404, 500),
    all created in one pipeline, interleaved, A's first. Figure: B's lag alone
    divided by B's lag beside A (lag: from B's webhooks' creation until the last
    one is delivered). Goal: at least 0.9 for each X.
"""

from __future__ import annotations

import collections
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from bench.common import (
    OWNER,
    clean_env,
    embedded_redis,
    free_port_block,
    peak_rss_mib,
    port_list,
    receiver,
    spawn,
    stop_group,
    tail,
)
from callbacks.keys import DEFAULT_KEYS
from callbacks.model import DeliveryStatus, Message
from callbacks.outbox import Outbox
from callbacks.secrets import SecretStore
from callbacks.signing import generate_secret
from postback import ids
from postback.settings import Settings
from worker.process import dispatcher

SECTIONS = ("p3", "p4", "p4b", "p4c", "p7", "duplicates", "cross_tenant")
TRICKLE_INTERVAL_SECONDS = 1.0
TENANT_A, TENANT_B = "ptn_a", "ptn_b"
TENANT_STATUSES = (404, 500)
# Every wait of this benchmark is bounded; a run that does not finish in these fails.
RUN_TIMEOUT_SECONDS = 600.0
PROCESS_RUN_TIMEOUT_SECONDS = 300.0
DUPLICATES_TIMEOUT_SECONDS = 120.0
RECEIVER_MAX_SECONDS = 3600.0
# The environment of the duplicate count's delivery processes (besides Redis and CIDRs,
# and the retry and cooling times of the run's `Shape`).
DUPLICATES_ENV = {"POSTBACK_DELIVERY_TIMEOUT_SECONDS": "5"}
DELIVERED = str(DeliveryStatus.DELIVERED).encode()
LOOPBACK = "127.0.0.0/8"


@dataclass(frozen=True, kw_only=True)
class Shape:
    """The sizes of a benchmark run."""

    repeats: int
    # P3's webhooks; P4, P4b and P4c send half as many to each of their destinations.
    per_destination: int
    # The delivery timeout of the in-process dispatcher (P3, P4*, cross-tenant).
    timeout_seconds: float
    # How long a healthy destination takes to answer (P3, P4*, cross-tenant).
    healthy_delay_seconds: float = 0.2
    hanging: int = 8
    trickling: int = 6
    fan_out_destinations: int
    fan_out_per_destination: int
    # How long each of P7's destinations takes to answer.
    fan_out_delay_seconds: float = 1.0
    duplicates_webhooks: int
    duplicates_fail_seconds: float
    # The duplicate count's retries (first and longest wait) and circuits' cooling time.
    duplicates_retry_seconds: tuple[float, float] = (1.0, 4.0)
    duplicates_cooldown_seconds: float = 2.0
    tenant_a: int
    tenant_b: int


FULL = Shape(
    repeats=3,
    per_destination=600,
    timeout_seconds=5.0,
    fan_out_destinations=1000,
    fan_out_per_destination=10,
    duplicates_webhooks=100,
    duplicates_fail_seconds=6.0,
    tenant_a=200,
    tenant_b=100,
)
# A smoke run: every section end to end, as little waiting as each allows.
QUICK = Shape(
    repeats=1,
    per_destination=8,
    timeout_seconds=0.5,
    healthy_delay_seconds=0.05,
    hanging=2,
    trickling=2,
    fan_out_destinations=50,
    fan_out_per_destination=2,
    fan_out_delay_seconds=0.2,
    duplicates_webhooks=10,
    duplicates_fail_seconds=1.0,
    duplicates_retry_seconds=(0.2, 0.5),
    duplicates_cooldown_seconds=0.5,
    tenant_a=10,
    tenant_b=4,
)


@dataclass(frozen=True)
class Run:
    """One timed run: `delivered` webhooks in `seconds`; `others` are the ids not waited for."""

    delivered: int
    seconds: float
    others: dict[str, list[str]] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.delivered / self.seconds


def _median(values: list[float]) -> dict:
    return {"median": statistics.median(values), "runs": values}


@contextlib.contextmanager
def receivers(
    ports: list[int], *, delay: float, hang_ports: Collection[int] = ()
) -> Iterator[None]:
    """A `bench.receiver` answering 204 after `delay` s on `ports`, never on `hang_ports`,
    from "ready" until the block ends (kept for bench/pipeline.py)."""
    arguments = ["--ports", port_list(list(ports)), "--delay", str(delay)]
    if hang_ports:
        arguments += ["--hang-ports", port_list(list(hang_ports))]
    arguments += ["--max-seconds", str(RECEIVER_MAX_SECONDS)]
    with (
        tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch,
        receiver(arguments, Path(scratch) / "receiver.err"),
    ):
        yield


# Shared steps -------------------------------------------------------------------------------


def _fresh(client: redis.Redis, owners: Collection[str] = (OWNER,)) -> None:
    """An empty Redis with a signing secret for each of `owners`."""
    client.flushall()
    secrets = SecretStore(client)
    for owner in owners:
        secrets.set(owner, generate_secret())


def _add(client: redis.Redis, plan: list[tuple[str, str]]) -> list[Message]:
    """One message per (owner, url) of `plan`, in its order, stored in one pipeline each 5,000."""
    outbox = Outbox(client)
    messages = []
    for start in range(0, len(plan), 5000):
        with client.pipeline(transaction=False) as pipe:
            for number, (owner, url) in enumerate(plan[start : start + 5000], start):
                message = Message(
                    id=ids.new_id("msg"),
                    owner=owner,
                    type="job.completed",
                    body=b'{"type":"job.completed","data":{"n":%d}}' % number,
                )
                outbox.add(message, url, pipeline=pipe)
                messages.append(message)
            pipe.execute()
    return messages


def _field(client: redis.Redis, delivery_ids: list[str], name: str) -> list[bytes | None]:
    """Field `name` of each delivery of `delivery_ids`, in one pipeline."""
    with client.pipeline(transaction=False) as pipe:
        for delivery_id in delivery_ids:
            pipe.hget(DEFAULT_KEYS.delivery(delivery_id), name)
        return pipe.execute()


def _wait_delivered(
    client: redis.Redis,
    delivery_ids: list[str],
    *,
    timeout_seconds: float,
    interval: float,
    check: Callable[[], None],
) -> float:
    """Poll the statuses of `delivery_ids` (pipelined) every `interval` s until all are
    delivered; time.monotonic() when that was seen.

    `check` is called before each poll (it raises if the deliverer died).
    Raises TimeoutError after `timeout_seconds`.
    """
    deadline = time.monotonic() + timeout_seconds
    pending = list(delivery_ids)
    while True:
        check()
        statuses = _field(client, pending, "status")
        pending = [d for d, s in zip(pending, statuses, strict=True) if s != DELIVERED]
        if not pending:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{len(pending)} of {len(delivery_ids)} deliveries not done in {timeout_seconds} s"
            )
        time.sleep(interval)


def _settings(url: str, timeout_seconds: float) -> Settings:
    """The in-process dispatcher's settings: defaults but the timeout (and loopback allowed)."""
    return Settings.from_env(
        {},
        redis_url=url,
        delivery_timeout_seconds=timeout_seconds,
        log_level="WARNING",
        # The receivers listen on loopback, which callback URLs may not reach otherwise.
        callback_allow_cidrs=(LOOPBACK,),
    )


@contextlib.contextmanager
def _dispatching(settings: Settings, client: redis.Redis) -> Iterator[Callable[[], None]]:
    """A dispatcher of `settings` delivering in a thread until the block ends.

    Yields a check that raises RuntimeError if the dispatcher died. On the way
    out it is stopped and waited for (attempts in flight end by the delivery
    timeout): RuntimeError if it has not stopped within twice that plus 10 s.
    """
    delivery = dispatcher(settings, client)
    stop = threading.Event()
    failures: list[BaseException] = []

    def target() -> None:
        try:
            delivery.run(stop)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=target, name="bench-dispatcher", daemon=True)

    def check() -> None:
        if failures:
            raise RuntimeError("the dispatcher crashed") from failures[0]
        if not thread.is_alive():
            raise RuntimeError("the dispatcher stopped on its own")

    thread.start()
    try:
        yield check
    finally:
        stop.set()
        thread.join(timeout=settings.delivery_timeout_seconds * 2 + 10)
        if thread.is_alive():
            raise RuntimeError("the dispatcher did not stop after its attempts' deadline")


@dataclass
class Deliverers:
    """Running `postback deliver` processes and their stderr logs."""

    processes: list[subprocess.Popen]
    logs: list[Path]

    def check(self) -> None:
        """Raise RuntimeError (with its log's tail) if one of them has exited."""
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                raise RuntimeError(f"a delivery process exited {process.returncode}:\n{tail(log)}")

    def problems(self) -> dict[str, int]:
        """What the processes logged at warning level or above: {"level: event": count}.

        Lines that are not JSON log entries count under "unstructured". Read it
        once they have stopped (their logs are complete then).
        """
        found: collections.Counter[str] = collections.Counter()
        for log in self.logs:
            for line in log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    found["unstructured"] += bool(line.strip())
                    continue
                if entry.get("level") in ("warning", "error", "critical"):
                    found[f"{entry['level']}: {str(entry.get('event'))[:80]}"] += 1
        return dict(found)


@contextlib.contextmanager
def _delivery_processes(
    count: int, redis_url: str, logs: Path, env: dict[str, str]
) -> Iterator[Deliverers]:
    """`count` `postback deliver` processes (loopback allowed, `env` added), stopped at the end.

    Their stderr goes to `logs`/deliver-N.log.
    """
    environment = clean_env(
        REDIS_URL=redis_url,
        POSTBACK_CALLBACK_ALLOW_CIDRS=LOOPBACK,
        POSTBACK_LOG_LEVEL="WARNING",
        **env,
    )
    running = Deliverers([], [])
    try:
        for number in range(count):
            log = logs / f"deliver-{number}.log"
            command = [sys.executable, "-m", "app.cli", "deliver"]
            running.processes.append(spawn(command, environment, log))
            running.logs.append(log)
        yield running
    finally:
        for process in running.processes:
            stop_group(process)


# P3, P4, P4b, P4c -----------------------------------------------------------------------------


def deliver(
    client: redis.Redis,
    settings: Settings,
    healthy: list[str],
    others: list[str],
    *,
    count_per_url: int,
    wait_attempted: bool = False,
) -> Run:
    """`count_per_url` webhooks to each URL, round-robin; the time until every healthy one is
    delivered, by a dispatcher started once they are stored.

    With `wait_attempted`, the dispatcher is kept running after that until each
    of `others` has at least one recorded attempt (at most 3 timeouts plus 10 s),
    then stopped, so the attempts it had started to them have ended (and are
    recorded) when this returns. `Run.others` maps each of `others` to its ids.
    """
    _fresh(client)
    urls = [*healthy, *others]
    plan = [(OWNER, url) for _ in range(count_per_url) for url in urls]
    messages = _add(client, plan)
    wanted = [m.id for (_, url), m in zip(plan, messages, strict=True) if url in healthy]
    by_url: dict[str, list[str]] = {url: [] for url in others}
    for (_, url), message in zip(plan, messages, strict=True):
        if url in by_url:
            by_url[url].append(message.id)
    started = time.monotonic()
    with _dispatching(settings, client) as check:
        done = _wait_delivered(
            client, wanted, timeout_seconds=RUN_TIMEOUT_SECONDS, interval=0.05, check=check
        )
        if wait_attempted and others:
            _wait_attempted(client, by_url, settings.delivery_timeout_seconds * 3 + 10, check)
    return Run(delivered=len(wanted), seconds=done - started, others=by_url)


def _wait_attempted(
    client: redis.Redis,
    by_url: dict[str, list[str]],
    timeout_seconds: float,
    check: Callable[[], None],
) -> None:
    """Wait until each URL of `by_url` has a delivery with a recorded attempt (bounded)."""
    deadline = time.monotonic() + timeout_seconds
    waiting = dict(by_url)
    while waiting and time.monotonic() < deadline:
        check()
        for url, delivery_ids in list(waiting.items()):
            if any(int(n or 0) for n in _field(client, delivery_ids, "attempts")):
                del waiting[url]
        time.sleep(0.1)


def isolation(
    client: redis.Redis, settings: Settings, shape: Shape, names: Collection[str]
) -> dict[str, dict]:
    """P4, P4b and P4c (those of `names`): 4 healthy destinations without, then with, the sick
    ones of each, `shape.repeats` times; {name: figures}.

    One receiver serves every port: 4 healthy (200 ms answers), 1 hanging (P4),
    `shape.hanging` hanging (P4b), `shape.trickling` trickling (P4c).
    """
    sizes = {"p4": 1, "p4b": shape.hanging, "p4c": shape.trickling}
    wanted = [name for name in sizes if name in names]
    ports = iter(free_port_block(4 + sum(sizes[name] for name in wanted)))
    healthy_ports = [next(ports) for _ in range(4)]
    sick = {name: [next(ports) for _ in range(sizes[name])] for name in wanted}
    hang_ports = [port for name in ("p4", "p4b") for port in sick.get(name, [])]
    arguments = [
        "--ports",
        port_list(healthy_ports),
        "--delay",
        str(shape.healthy_delay_seconds),
        "--trickle-interval",
        str(TRICKLE_INTERVAL_SECONDS),
        "--max-seconds",
        str(RECEIVER_MAX_SECONDS),
    ]
    if hang_ports:
        arguments += ["--hang-ports", port_list(hang_ports)]
    if sick.get("p4c"):
        arguments += ["--trickle-ports", port_list(sick["p4c"])]
    healthy = [f"http://127.0.0.1:{port}/hook" for port in healthy_ports]
    count = shape.per_destination // 2
    runs: dict[str, list[tuple[Run, Run, dict | None]]] = {name: [] for name in wanted}
    with (
        tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch,
        receiver(arguments, Path(scratch) / "receiver.err"),
    ):
        for _ in range(shape.repeats):
            for name in wanted:
                urls = [f"http://127.0.0.1:{port}/hook" for port in sick[name]]
                base = deliver(client, settings, healthy, [], count_per_url=count)
                trickle = name == "p4c"
                with_sick = deliver(
                    client, settings, healthy, urls, count_per_url=count, wait_attempted=trickle
                )
                attempts = _trickled(client, with_sick.others) if trickle else None
                runs[name].append((base, with_sick, attempts))
    limit_ms = (settings.delivery_timeout_seconds + 1) * 1000
    return {
        name: _isolation_figures(name, runs[name], len(sick[name]), limit_ms) for name in wanted
    }


def _trickled(client: redis.Redis, by_url: dict[str, list[str]]) -> dict:
    """What the attempt logs of the deliveries of `by_url` (trickling URLs) say."""
    outbox = Outbox(client)
    attempts, attempted = [], 0
    for delivery_ids in by_url.values():
        found = [a for delivery_id in delivery_ids for a in outbox.attempts(delivery_id)]
        attempted += bool(found)
        attempts += found
    return {
        "trickled_attempts": len(attempts),
        "all_timeouts": all(a["error"] == "timeout" for a in attempts),
        "errors": dict(collections.Counter(str(a["error"]) for a in attempts)),
        "max_duration_ms": max((a["duration_ms"] for a in attempts), default=0),
        "destinations_attempted": attempted,
    }


def _isolation_figures(
    name: str, runs: list[tuple[Run, Run, dict | None]], sick: int, limit_ms: float
) -> dict:
    """The figures of one of P4, P4b, P4c from its (baseline, with the sick, attempts) runs."""
    ratios = [with_sick.per_second / base.per_second for base, with_sick, _ in runs]
    with_key = "healthy_per_second_with_hang" if name == "p4" else "healthy_per_second_with"
    figures: dict = {
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "sick_destinations": sick,
        "healthy_per_second_without": [base.per_second for base, _, _ in runs],
        with_key: [with_sick.per_second for _, with_sick, _ in runs],
    }
    logs = [attempts for _, _, attempts in runs if attempts is not None]
    if logs:
        for key in logs[0]:
            figures[key] = [attempts[key] for attempts in logs]
        figures["limit_ms"] = limit_ms
    return figures


def throughput(client: redis.Redis, settings: Settings, shape: Shape) -> dict:
    """P3: one destination answering in 200 ms (`shape.healthy_delay_seconds`), `shape.repeats`
    runs."""
    port = free_port_block(1)[0]
    target = f"http://127.0.0.1:{port}/hook"
    arguments = ["--ports", str(port), "--delay", str(shape.healthy_delay_seconds)]
    arguments += ["--max-seconds", str(RECEIVER_MAX_SECONDS)]
    with (
        tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch,
        receiver(arguments, Path(scratch) / "receiver.err"),
    ):
        runs = [
            deliver(client, settings, [target], [], count_per_url=shape.per_destination)
            for _ in range(shape.repeats)
        ]
    return _median([r.per_second for r in runs])


# P7 -----------------------------------------------------------------------------------------


def fan_out(client: redis.Redis, redis_url: str, shape: Shape) -> dict:
    """P7: one `postback deliver` process, every destination a port of one receiver."""
    ports = free_port_block(shape.fan_out_destinations)
    urls = [f"http://127.0.0.1:{p}/hook" for p in ports]
    arguments = [
        "--ports",
        port_list(ports),
        "--delay",
        str(shape.fan_out_delay_seconds),
        "--max-seconds",
        str(RECEIVER_MAX_SECONDS),
    ]
    rates, running, rss, attempts, seconds, problems = [], [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch:
        work = Path(scratch)
        with receiver(arguments, work / "receiver.err"):
            for _ in range(shape.repeats):
                _fresh(client)
                plan = [(OWNER, url) for _ in range(shape.fan_out_per_destination) for url in urls]
                delivery_ids = [m.id for m in _add(client, plan)]
                started = time.monotonic()
                with _delivery_processes(1, redis_url, work, {}) as deliverers:
                    done = _wait_delivered(
                        client,
                        delivery_ids,
                        timeout_seconds=PROCESS_RUN_TIMEOUT_SECONDS,
                        interval=0.2,
                        check=deliverers.check,
                    )
                    rss.append(peak_rss_mib(deliverers.processes[0].pid))
                problems.append(deliverers.problems())
                seconds.append(done - started)
                rates.append(len(delivery_ids) / (done - started))
                # The same, from the first attempt on: without the process's start-up.
                first = min(float(at) for at in _field(client, delivery_ids, "last_attempt_at"))
                last = max(float(at) for at in _field(client, delivery_ids, "settled_at"))
                running.append(len(delivery_ids) / (last - first))
                attempts.append(sum(int(n or 0) for n in _field(client, delivery_ids, "attempts")))
    defaults = Settings()
    return {
        # The process runs on the defaults (loopback allowed, warnings logged).
        "settings": {
            "concurrency": defaults.delivery_concurrency,
            "per_destination": defaults.delivery_per_destination,
            "timeout_seconds": defaults.delivery_timeout_seconds,
        },
        "destinations": len(ports),
        "webhooks": len(ports) * shape.fan_out_per_destination,
        "answer_seconds": shape.fan_out_delay_seconds,
        "per_second": _median(rates),
        "per_second_running": _median(running),
        "seconds": seconds,
        "peak_rss_mib": _median(rss),
        "attempts": attempts,
        "logged_problems": problems,
    }


# Duplicates ---------------------------------------------------------------------------------


def duplicates(client: redis.Redis, redis_url: str, shape: Shape) -> dict:
    """Two delivery processes, one receiver failing for its first seconds, every ack logged."""
    counts: dict[str, list] = collections.defaultdict(list)
    first_wait, longest_wait = shape.duplicates_retry_seconds
    env = DUPLICATES_ENV | {
        "POSTBACK_RETRY_BASE_SECONDS": f"{first_wait:g}",
        "POSTBACK_RETRY_MAX_SECONDS": f"{longest_wait:g}",
        "POSTBACK_BREAKER_COOLDOWN_SECONDS": f"{shape.duplicates_cooldown_seconds:g}",
    }
    with tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch:
        work = Path(scratch)
        for run in range(shape.repeats):
            _fresh(client)
            port = free_port_block(1)[0]
            acks = work / f"acks-{run}.log"
            arguments = [
                "--ports",
                str(port),
                "--fail-seconds",
                str(shape.duplicates_fail_seconds),
                "--log",
                str(acks),
                "--max-seconds",
                str(RECEIVER_MAX_SECONDS),
            ]
            url = f"http://127.0.0.1:{port}/hook"
            with receiver(arguments, work / f"receiver-{run}.err"):
                messages = _add(client, [(OWNER, url)] * shape.duplicates_webhooks)
                delivery_ids = [m.id for m in messages]
                started = time.monotonic()
                with _delivery_processes(2, redis_url, work, env) as deliverers:
                    done = _wait_delivered(
                        client,
                        delivery_ids,
                        timeout_seconds=DUPLICATES_TIMEOUT_SECONDS,
                        interval=0.2,
                        check=deliverers.check,
                    )
            counts["logged_problems"].append(deliverers.problems())
            # Both processes and the receiver have stopped: every ack is in the log.
            acked = collections.Counter(
                line.split()[3] for line in acks.read_text().splitlines() if line.strip()
            )
            outbox = Outbox(client)
            violations, total = 0, 0
            for delivery_id in delivery_ids:
                record = outbox.get(delivery_id)
                numbers = [a["attempt"] for a in outbox.attempts(delivery_id)]
                total += len(numbers)
                n = record.attempts if record is not None else -1
                if numbers != list(range(1, n + 1)):
                    violations += 1
            counts["duplicated"].append(sum(1 for c in acked.values() if c > 1))
            counts["acknowledged"].append(len(acked))
            counts["acks"].append(sum(acked.values()))
            counts["attempt_log_violations"].append(violations)
            counts["attempts"].append(total)
            counts["seconds"].append(done - started)
    return {
        "webhooks": shape.duplicates_webhooks,
        "processes": 2,
        "fail_seconds": shape.duplicates_fail_seconds,
        "retry_seconds": list(shape.duplicates_retry_seconds),
        "cooldown_seconds": shape.duplicates_cooldown_seconds,
        "duplicated": _median(counts["duplicated"]),
        **{key: value for key, value in counts.items() if key != "duplicated"},
    }


# Cross-tenant -------------------------------------------------------------------------------


def tenant_lag(
    client: redis.Redis, settings: Settings, url_a: str, url_b: str, *, a_count: int, b_count: int
) -> float:
    """B's lag (seconds from its webhooks' creation until the last is delivered), with
    `a_count` webhooks of A created in the same pipeline, interleaved, A's first.

    The dispatcher is running (idle) when they are created.
    """
    _fresh(client, (TENANT_A, TENANT_B))
    plan = []
    for number in range(max(a_count, b_count)):
        if number < a_count:
            plan.append((TENANT_A, url_a))
        if number < b_count:
            plan.append((TENANT_B, url_b))
    with _dispatching(settings, client) as check:
        time.sleep(0.2)  # the dispatcher polls by now
        messages = _add(client, plan)
        of_b = [m for m in messages if m.owner == TENANT_B]
        _wait_delivered(
            client,
            [m.id for m in of_b],
            timeout_seconds=RUN_TIMEOUT_SECONDS,
            interval=0.05,
            check=check,
        )
    settled = [float(s) for s in _field(client, [m.id for m in of_b], "settled_at") if s]
    return max(settled) - min(m.created_at for m in of_b)


def cross_tenant(client: redis.Redis, settings: Settings, shape: Shape) -> dict:
    """B alone, then B beside A, for each status A's path answers; `shape.repeats` times."""
    results: dict = {"a_webhooks": shape.tenant_a, "b_webhooks": shape.tenant_b}
    with tempfile.TemporaryDirectory(prefix="postback-bench-") as scratch:
        for status in TENANT_STATUSES:
            port = free_port_block(1)[0]
            arguments = [
                "--ports",
                str(port),
                "--path-status",
                f"/a={status},/b=204",
                "--delay",
                str(shape.healthy_delay_seconds),
                "--max-seconds",
                str(RECEIVER_MAX_SECONDS),
            ]
            url_a, url_b = f"http://127.0.0.1:{port}/a", f"http://127.0.0.1:{port}/b"
            alone, beside, ratios = [], [], []
            with receiver(arguments, Path(scratch) / f"receiver-{status}.err"):
                for _ in range(shape.repeats):
                    lag_alone = tenant_lag(
                        client, settings, url_a, url_b, a_count=0, b_count=shape.tenant_b
                    )
                    lag_beside = tenant_lag(
                        client,
                        settings,
                        url_a,
                        url_b,
                        a_count=shape.tenant_a,
                        b_count=shape.tenant_b,
                    )
                    alone.append(lag_alone)
                    beside.append(lag_beside)
                    ratios.append(lag_alone / lag_beside)
            results[str(status)] = {
                "ratio_median": statistics.median(ratios),
                "ratios": ratios,
                "b_lag_alone_seconds": alone,
                "b_lag_beside_a_seconds": beside,
            }
    return results


# The whole -------------------------------------------------------------------------------------


def main(quick: bool = False, *, only: Collection[str] | None = None) -> dict:
    """Run the sections of `only` (default: every one) at the full or quick shape; results.

    Every process it starts is stopped before it returns or raises.
    """
    shape = QUICK if quick else FULL
    sections = set(SECTIONS if only is None else only)
    unknown = sections - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    timings: dict[str, float] = {}
    with embedded_redis(None) as (url, _), redis.Redis.from_url(url) as client:
        settings = _settings(url, shape.timeout_seconds)
        results: dict = {
            "quick": quick,
            "settings": {
                "concurrency": settings.delivery_concurrency,
                "per_destination": settings.delivery_per_destination,
                "timeout_seconds": settings.delivery_timeout_seconds,
                "repeats": shape.repeats,
                "healthy_delay_seconds": shape.healthy_delay_seconds,
            },
            "seconds": timings,
        }

        def timed(name: str, measure: Callable[[], dict]) -> dict:
            started = time.monotonic()
            try:
                return measure()
            finally:
                timings[name] = time.monotonic() - started

        if "p3" in sections:
            results["p3_deliveries_per_second"] = timed(
                "p3", lambda: throughput(client, settings, shape)
            )
        isolated = sections & {"p4", "p4b", "p4c"}
        if isolated:
            found = timed("isolation", lambda: isolation(client, settings, shape, isolated))
            for name, key in (
                ("p4", "p4_isolation"),
                ("p4b", "p4b_hanging"),
                ("p4c", "p4c_trickling"),
            ):
                if name in found:
                    results[key] = found[name]
        if "p7" in sections:
            results["p7_fan_out"] = timed("p7", lambda: fan_out(client, url, shape))
        if "duplicates" in sections:
            results["duplicates"] = timed("duplicates", lambda: duplicates(client, url, shape))
        if "cross_tenant" in sections:
            results["cross_tenant"] = timed(
                "cross_tenant", lambda: cross_tenant(client, settings, shape)
            )
    return results


def _runs(values: list[float], digits: int = 0) -> str:
    return ", ".join(f"{value:.{digits}f}" for value in values)


def _problems(runs: list[dict[str, int]]) -> str:
    return "; ".join(
        ", ".join(f"{count} x {what}" for what, count in found.items()) or "none" for found in runs
    )


def report(results: dict) -> str:
    """The figures of `main` as lines of text, each with its goal."""
    lines = [f"settings: {results['settings']}"]
    if "p3_deliveries_per_second" in results:
        p3 = results["p3_deliveries_per_second"]
        delay_ms = results["settings"]["healthy_delay_seconds"] * 1000
        lines.append(
            f"P3 deliveries/s to a {delay_ms:.0f} ms receiver, one process: "
            f"median {p3['median']:.0f} "
            f"(runs {_runs(p3['runs'])}; goal >= 150)"
        )
    for name, key, label, with_key in (
        ("P4", "p4_isolation", "one hanging destination", "healthy_per_second_with_hang"),
        ("P4b", "p4b_hanging", "{n} hanging destinations", "healthy_per_second_with"),
        ("P4c", "p4c_trickling", "{n} trickling destinations", "healthy_per_second_with"),
    ):
        if key not in results:
            continue
        figure = results[key]
        lines.append(
            f"{name} healthy rate with {label.format(n=figure['sick_destinations'])} / without: "
            f"median {figure['ratio_median']:.2f} (runs {_runs(figure['ratios'], 2)}; "
            f"goal >= 0.9)"
        )
        lines.append(
            f"   healthy deliveries/s without: {_runs(figure['healthy_per_second_without'])}"
            f"; with them: {_runs(figure[with_key])}"
        )
        if key == "p4c_trickling":
            lines.append(
                f"   trickled attempts recorded: {_runs(figure['trickled_attempts'])}; all "
                f"'timeout': {', '.join(map(str, figure['all_timeouts']))}; longest "
                f"{_runs(figure['max_duration_ms'])} ms (goal <= {figure['limit_ms']:.0f}); "
                f"destinations attempted: {_runs(figure['destinations_attempted'])} of "
                f"{figure['sick_destinations']}"
            )
    if "p7_fan_out" in results:
        p7 = results["p7_fan_out"]
        lines.append(
            f"P7 fan-out, one delivery process, {p7['webhooks']:,} webhooks to "
            f"{p7['destinations']:,} destinations ({p7['answer_seconds']:g} s answers; "
            f"{p7['settings']}): median "
            f"{p7['per_second']['median']:.0f} deliveries/s (runs {_runs(p7['per_second']['runs'])}"
            f"; goal >= 800)"
        )
        lines.append(
            f"   from the first attempt to the last delivery (the process's start-up left out): "
            f"median {p7['per_second_running']['median']:.0f} deliveries/s (runs "
            f"{_runs(p7['per_second_running']['runs'])})"
        )
        lines.append(
            f"   peak RSS {p7['peak_rss_mib']['median']:.0f} MiB (runs "
            f"{_runs(p7['peak_rss_mib']['runs'])}); seconds {_runs(p7['seconds'], 1)}; "
            f"attempts {_runs(p7['attempts'])}"
        )
        lines.append(f"   logged warnings/errors per run: {_problems(p7['logged_problems'])}")
    if "duplicates" in results:
        dup = results["duplicates"]
        lines.append(
            f"Duplicates, {dup['processes']} delivery processes, {dup['webhooks']} webhooks, "
            f"receiver failing {dup['fail_seconds']:g} s: webhook-ids acknowledged more than "
            f"once: median {dup['duplicated']['median']:.0f} (runs "
            f"{_runs(dup['duplicated']['runs'])}; goal 0)"
        )
        lines.append(
            f"   attempt logs not 1..attempts: {_runs(dup['attempt_log_violations'])} (goal 0); "
            f"attempts {_runs(dup['attempts'])}; acks {_runs(dup['acks'])}; distinct acked "
            f"{_runs(dup['acknowledged'])}; seconds {_runs(dup['seconds'], 1)}"
        )
        lines.append(f"   logged warnings/errors per run: {_problems(dup['logged_problems'])}")
    if "cross_tenant" in results:
        tenants = results["cross_tenant"]
        for status in TENANT_STATUSES:
            figure = tenants[str(status)]
            lines.append(
                f"Cross-tenant, B's lag alone / beside A's {tenants['a_webhooks']} answered "
                f"{status} (same host): median {figure['ratio_median']:.2f} "
                f"(runs {_runs(figure['ratios'], 2)}; goal >= 0.9)"
            )
            lines.append(
                f"   B's {tenants['b_webhooks']} delivered in (s) alone: "
                f"{_runs(figure['b_lag_alone_seconds'], 2)}; beside A: "
                f"{_runs(figure['b_lag_beside_a_seconds'], 2)}"
            )
    if results.get("seconds"):
        lines.append(
            "   sections took (s): "
            + ", ".join(f"{name} {seconds:.0f}" for name, seconds in results["seconds"].items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m bench.delivery", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, one run (seconds)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    outcome = main(args.quick, only=[s for s in args.only.split(",") if s])
    print(report(outcome))
    if args.json:
        args.json.write_text(json.dumps({"delivery": outcome}, indent=2))
