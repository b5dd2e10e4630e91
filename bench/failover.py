"""Failover benchmark (P10): the primary SIGKILLed under load, and Redis CPU per job.

    python -m bench.failover [--quick] [--failovers 3] [--rate 100] [--no-accept]

An HA set on this machine (`postback.ha`: a primary, 2 replicas and 3 Sentinels
whose down-after-milliseconds is `postback.ha.DOWN_AFTER_MILLISECONDS`), its
replicas at `appendfsync always` (they confirm a write once it is fsynced) and
its primary at `everysec`, as README's "Replicated durability" describes;
`postback serve` and one `postback worker` given its Sentinels, in `replicated`
durability with POSTBACK_DURABILITY_REPLICAS=1 (a 202 once the job is fsynced
on the primary and on one replica); a local receiver (`bench.receiver`)
answering every webhook at once.

1. Redis CPU per job. `jobs` echo jobs with a callback URL are submitted through
   the API (`threads` clients, each sending as soon as answered); the worker runs
   them and delivers their webhooks. The primary's `INFO cpu` (used_cpu_sys +
   used_cpu_user, all its threads) and `INFO commandstats` are read around the
   run, and around an idle spell just before it (the same processes running,
   nothing submitted), whose rate is taken off. A second run, with every command
   in the SLOWLOG, splits the scripts' time by script (each named by the
   constant of Postback's source it was made from).
2. Failovers. `threads` clients submit at `rate` a second in all while the
   current primary is SIGKILLed `failovers` times; after each the dead member
   is restarted as `postback up` restarts it, and the next kill waits for the set
   to be whole again (the former primary back as a replica, every link up). Per
   kill: the longest spell without a 202, the time to the Sentinels' switch and
   to the first 202 of a request sent after the kill, and the other answers by
   status and cause. Then every 202'd job must exist and complete, and its
   webhook be delivered.
3. Accepts/s: `bench.accept --replicas 2` (P1 against an HA set's primary,
   `replicated` beside `fsync` and `everysec`); not in --quick.

Goals: at most 10 s without a 202 per failover; 0 acknowledged jobs lost; no 500.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
import requests
from redis.sentinel import Sentinel

from bench import accept, redis_cost
from bench.common import clean_env, spawn, stop_group
from bench.delivery import receivers
from bench.pipeline import settlements, wait_finished
from callbacks.keys import DEFAULT_KEYS
from callbacks.model import DeliveryStatus
from postback.connection import target_environ
from postback.embedded import EmbeddedRedisError, free_port
from postback.ha import DOWN_AFTER_MILLISECONDS, HaSet
from postback.ha_view import Member, Role, sentinels_view
from postback.sentinel import Sentinels
from worker.jobs import COMPLETED
from worker.records import job_key

REPLICAS = 2
DURABILITY_REPLICAS = 1
# Sentinel names the primary: the URL is read for its user and database only.
NOWHERE = "redis://127.0.0.1:1/0"
# Bounds: a kill to the first 202 after it, the set whole again, the jobs done after the load.
RESTORED_WITHIN_SECONDS = 60.0
WHOLE_WITHIN_SECONDS = 120.0
DONE_WITHIN_SECONDS = 180.0
# Each client's request timeout: a 503 leaves the API within 5 s (README).
REQUEST_TIMEOUT_SECONDS = 15.0
# The answers before a kill that the spell without a 202 is measured from.
BEFORE_KILL_SECONDS = 1.0


@dataclass(frozen=True)
class Shape:
    jobs: int  # through the whole pipeline, for Redis CPU per job
    attributed_jobs: int  # the same again, with the SLOWLOG on
    idle_seconds: float
    failovers: int
    rate: float  # submissions a second during the failovers
    threads: int
    steady_seconds: float  # of load before each kill and after the last
    accept: bool = True


QUICK = Shape(
    jobs=10,
    attributed_jobs=10,
    idle_seconds=0.2,
    failovers=1,
    rate=40.0,
    threads=4,
    steady_seconds=0.5,
    accept=False,
)
FULL = Shape(
    jobs=2000,
    attributed_jobs=1000,
    idle_seconds=5.0,
    failovers=3,
    rate=100.0,
    threads=8,
    steady_seconds=3.0,
)


def _job(number: int, callback_url: str) -> dict:
    return {"type": "echo", "input": {"n": number}, "callback_url": callback_url}


class Bench:
    """The HA set, the API and the worker on it, and the partners the runs submit as."""

    def __init__(self, ha: HaSet, base: str, admin_token: str, callback_url: str) -> None:
        self.ha = ha
        self.base = base
        self.admin_token = admin_token
        self.callback_url = callback_url
        self.sentinel = Sentinel(
            ha.sentinels(),
            sentinel_kwargs={"password": ha.sentinel_password, "socket_timeout": 2.0},
            password=ha.data_password,
            socket_timeout=5.0,
        )
        self.processes: list[tuple[subprocess.Popen, Path]] = []

    def partner(self) -> tuple[str, str]:
        """A new partner's (id, API key)."""
        made = requests.post(
            f"{self.base}/v1/admin/partners",
            json={"name": f"bench-{secrets.token_hex(3)}"},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=30,
        )
        made.raise_for_status()
        return made.json()["id"], made.json()["api_key"]

    def data(self, member: Member) -> redis.Redis:
        return redis.Redis(member.host, member.port, password=self.ha.data_password)

    def primary(self) -> Member:
        """The data member the Sentinels name, which answers as the primary."""
        members = self.ha.members()
        named, _ = sentinels_view(members)
        for member in members:
            if member.role == Role.PRIMARY and member.up and (member.host, member.port) == named:
                return member
        raise RuntimeError(f"no primary answers as the Sentinels name it ({named})")

    def whole(self) -> bool:
        """Whether every member answers, the Sentinels all name the one primary, and every
        other data member is its replica with the link up."""
        members = self.ha.members()
        named, count = sentinels_view(members)
        sentinels = [m for m in members if m.role == Role.SENTINEL]
        data = [m for m in members if m.role != Role.SENTINEL]
        primaries = [m for m in data if m.role == Role.PRIMARY]
        return (
            count == len(sentinels)
            and all(m.up for m in members)
            and [(m.host, m.port) for m in primaries] == [named]
            and all(m.link_up and m.primary == named for m in data if m.role == Role.REPLICA)
        )

    def tune(self) -> None:
        """The primary at `appendfsync everysec`, each replica at `always`."""
        for member in self.ha.members():
            if member.role != Role.SENTINEL and member.up:
                fsync = "everysec" if member.role == Role.PRIMARY else "always"
                with self.data(member) as client:
                    client.config_set("appendfsync", fsync)

    def repair(self) -> None:
        """Restart the members that died, as `postback up` does (a dead primary once the
        Sentinels have replaced it)."""
        with contextlib.suppress(EmbeddedRedisError):
            self.ha.restart_dead()

    def wait_whole(self) -> float:
        """Repair until the set is whole, then tune it; the seconds it took."""
        started = time.monotonic()
        while not self.whole():
            if time.monotonic() - started > WHOLE_WITHIN_SECONDS:
                members = ", ".join(f"{m.name} {m.role} up={m.up}" for m in self.ha.members())
                raise RuntimeError(f"the HA set was not whole in time: {members}")
            self.repair()
            time.sleep(0.2)
        self.tune()
        return time.monotonic() - started

    def check_processes(self) -> None:
        for process, log in self.processes:
            if process.poll() is not None:
                raise RuntimeError(f"{log.stem} exited with {process.returncode}")


# -- 1. Redis CPU per job ---------------------------------------------------------------


def _submit_all(base: str, key: str, jobs: int, threads: int, callback_url: str) -> list[str]:
    """`jobs` echo jobs submitted by `threads` clients, each sending once answered; their ids.

    Every answer must be a 202: this run measures a set without faults.
    """

    def share(first: int) -> list[str]:
        ids = []
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {key}"
            for number in range(first, jobs, threads):
                reply = session.post(f"{base}/v1/jobs", json=_job(number, callback_url), timeout=30)
                if reply.status_code != 202:
                    raise RuntimeError(f"submission {number}: {reply.status_code} {reply.text}")
                ids.append(reply.json()["id"])
        return ids

    with ThreadPoolExecutor(threads) as pool:
        return [job_id for ids in pool.map(share, range(threads)) for job_id in ids]


def _pipeline(bench: Bench, shape: Shape, jobs: int, primary: redis.Redis) -> list[str]:
    """`jobs` jobs of a new partner from submission to delivered webhook; their ids."""
    partner_id, key = bench.partner()
    job_ids = _submit_all(bench.base, key, jobs, shape.threads, bench.callback_url)
    deadline = time.monotonic() + 120 + jobs / 10
    wait_finished(primary, jobs, bench.processes, deadline=deadline, partner_id=partner_id)
    return job_ids


def cost_per_job(bench: Bench, shape: Shape) -> dict:
    """The primary's CPU and commands per job through the whole pipeline (`bench.redis_cost`)."""
    member = bench.primary()
    primary = bench.data(member)
    replicas = [bench.data(m) for m in bench.ha.members() if m.role == Role.REPLICA]
    done: list[str] = []

    def run(jobs: int) -> None:
        done.extend(_pipeline(bench, shape, jobs, primary))

    try:
        cost = redis_cost.measure(
            primary,
            replicas,
            run,
            jobs=shape.jobs,
            attributed_jobs=shape.attributed_jobs,
            idle_seconds=shape.idle_seconds,
        )
        settlements(primary, done)  # every webhook was delivered
    finally:
        for client in (primary, *replicas):
            client.close()
    return {"primary": member.name} | cost


# -- 2. Failovers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic
    answered: float
    status: int  # 0: no answer (the exception's name is the cause)
    job_id: str | None
    cause: str | None


class Load:
    """`threads` clients submitting echo jobs at `rate` a second in all, each paced (a late
    answer delays its client's next request, never bunches them), until the block ends."""

    def __init__(self, base: str, key: str, callback_url: str, *, rate: float, threads: int):
        self.base = base
        self.key = key
        self.callback_url = callback_url
        self.interval = threads / rate
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.clients = [
            threading.Thread(target=self._client, args=(n, threads), daemon=True)
            for n in range(threads)
        ]

    def __enter__(self) -> Load:
        for client in self.clients:
            client.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for client in self.clients:
            client.join()

    def _client(self, index: int, threads: int) -> None:
        next_at = time.monotonic() + self.interval * index / threads
        number = index
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {self.key}"
            while not self.stop.wait(max(0.0, next_at - time.monotonic())):
                next_at = max(next_at + self.interval, time.monotonic())
                self.answers.append(self._submit(session, number))
                number += threads

    def _submit(self, session: requests.Session, number: int) -> Answer:
        sent = time.monotonic()
        try:
            reply = session.post(
                f"{self.base}/v1/jobs",
                json=_job(number, self.callback_url),
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
        except requests.RequestException as exc:
            return Answer(sent, time.monotonic(), 0, None, type(exc).__name__)
        answered = time.monotonic()
        try:
            body = reply.json()
        except ValueError:
            body = {}
        job_id = body.get("id") if reply.status_code == 202 else None
        # A Redis fault names its cause; other refusals are told apart by their detail.
        cause = body.get("cause") or body.get("detail") if reply.status_code != 202 else None
        return Answer(sent, answered, reply.status_code, job_id, cause)

    def first_accepted_after(self, instant: float) -> float | None:
        """When the first 202 to a request sent after `instant` was answered, if one was."""
        times = [a.answered for a in list(self.answers) if a.status == 202 and a.sent > instant]
        return min(times, default=None)


def _kill_primary(bench: Bench, load: Load) -> dict:
    """SIGKILL the primary; repair until a request sent after the kill has had its 202."""
    victim = bench.primary()
    assert victim.pid is not None
    killed_wall, killed = time.time(), time.monotonic()
    os.kill(victim.pid, signal.SIGKILL)
    restored = None
    while restored is None and time.monotonic() - killed < RESTORED_WITHIN_SECONDS:
        bench.repair()
        time.sleep(0.1)
        restored = load.first_accepted_after(killed)
    switch = bench.ha.last_failover()
    switched = switch is not None and switch.at_seconds > killed_wall
    return {
        "victim": victim.name,
        "killed_at": killed,
        "killed_at_wall": killed_wall,
        "to_switch_seconds": switch.at_seconds - killed_wall if switch and switched else None,
        "to_first_202_seconds": restored - killed if restored is not None else None,
    }


def _spell(answers: list[Answer], start: float, end: float) -> dict:
    """The answers to requests sent in [start, end): the longest spell between two 202s
    (answered times), and the other answers by status and cause."""
    mine = [a for a in answers if start <= a.sent < end]
    accepted = sorted(a.answered for a in mine if a.status == 202)
    gaps = [b - a for a, b in itertools.pairwise(accepted)]
    others = Counter(f"{a.status} {a.cause}" if a.cause else str(a.status) for a in mine)
    del others["202"]
    return {
        "requests": len(mine),
        "accepted": len(accepted),
        "seconds_without_202": max(gaps, default=float("nan")),
        "others": dict(others),
    }


def _outcomes(bench: Bench, job_ids: list[str]) -> dict:
    """Once every job is completed with its webhook delivered, or `DONE_WITHIN_SECONDS`
    have passed: how many are missing (lost), completed, delivered, and in which state
    the others are."""
    client = bench.sentinel.master_for(bench.ha.service, socket_timeout=5.0)
    started = time.monotonic()
    while True:
        with client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hmget(job_key(job_id), "status", "event_id")
            records = pipe.execute()
        with client.pipeline(transaction=False) as pipe:
            for _, event_id in records:
                if event_id:
                    pipe.hget(DEFAULT_KEYS.delivery(event_id.decode()), "status")
            deliveries = pipe.execute()
        statuses = Counter((status or b"missing").decode() for status, _ in records)
        delivered = sum(d == DeliveryStatus.DELIVERED.encode() for d in deliveries)
        done = statuses[str(COMPLETED)] == len(job_ids) and delivered == len(job_ids)
        if done or time.monotonic() - started > DONE_WITHIN_SECONDS:
            break
        time.sleep(0.25)
    client.close()
    return {
        "acknowledged": len(job_ids),
        "lost": statuses["missing"],
        "completed": statuses[str(COMPLETED)],
        "statuses": dict(statuses),
        "webhooks_delivered": delivered,
        "seconds_to_done": time.monotonic() - started,
    }


def failovers(bench: Bench, shape: Shape) -> dict:
    """Kill the primary `shape.failovers` times under a steady load; see the docstring."""
    _, key = bench.partner()
    kills: list[dict] = []
    whole_seconds: list[float] = []
    load = Load(bench.base, key, bench.callback_url, rate=shape.rate, threads=shape.threads)
    with load:
        for number in range(shape.failovers):
            if number:
                whole_seconds.append(bench.wait_whole())
            time.sleep(shape.steady_seconds)
            bench.check_processes()
            kills.append(_kill_primary(bench, load))
        time.sleep(shape.steady_seconds)
    answers = load.answers
    ends = [k["killed_at"] for k in kills[1:]] + [float("inf")]
    for kill, end in zip(kills, ends, strict=True):
        kill |= _spell(answers, kill["killed_at"] - BEFORE_KILL_SECONDS, end)
    statuses = Counter(a.status for a in answers)
    accepted = [a.job_id for a in answers if a.status == 202 and a.job_id]
    return {
        "kills": kills,
        "whole_again_seconds": whole_seconds,
        "requests": len(answers),
        "statuses": {str(status): count for status, count in sorted(statuses.items())},
        "server_errors": sum(count for status, count in statuses.items() if status >= 500)
        - statuses[503],
        "outcome": _outcomes(bench, accepted),
    }


# -- the run ------------------------------------------------------------------------------


def _members(ha: HaSet) -> list[dict]:
    return [{"name": m.name, "role": str(m.role), "port": m.port} for m in ha.members()]


def main(shape: Shape = FULL, data_parent: str = ".") -> dict:
    """Parts 1 and 2 on one HA set, then part 3 (`bench.accept`) on its own."""
    data = Path(tempfile.mkdtemp(prefix=".postback-bench-", dir=data_parent))
    results: dict[str, Any] = {
        "shape": asdict(shape),
        "settings": {
            "replicas": REPLICAS,
            "durability": "replicated",
            "durability_replicas": DURABILITY_REPLICAS,
            "down_after_milliseconds": DOWN_AFTER_MILLISECONDS,
            "appendfsync": {"primary": "everysec", "replicas": "always"},
        },
    }
    ha = HaSet(data, replicas=REPLICAS)
    try:
        ha.start()
        with _running(ha, data) as bench:
            results["redis_cost"] = cost_per_job(bench, shape)
            results["failover"] = failovers(bench, shape)
            results["members_after"] = _members(ha)
    finally:
        ha.stop()
        shutil.rmtree(data, ignore_errors=True)
    if shape.accept:
        results["accept"] = accept.main(False, data_parent, replicas=REPLICAS)
    return results


@contextlib.contextmanager
def _running(ha: HaSet, data: Path) -> Iterator[Bench]:
    """The API and a worker on `ha` (through its Sentinels), and the receiver."""
    sentinels = Sentinels(
        addresses=tuple(ha.sentinels()),
        service=ha.service,
        password=ha.data_password,
        sentinel_password=ha.sentinel_password,
    )
    env = target_environ(sentinels) | {
        "POSTBACK_DURABILITY_REPLICAS": str(DURABILITY_REPLICAS),
        "POSTBACK_CALLBACK_ALLOW_CIDRS": "127.0.0.0/8",
    }
    admin_token = secrets.token_hex(16)
    api_port, hook_port = free_port(), free_port()
    base = f"http://127.0.0.1:{api_port}"
    with contextlib.ExitStack() as stack:
        stack.enter_context(receivers([hook_port], delay=0))
        bench = Bench(ha, base, admin_token, f"http://127.0.0.1:{hook_port}/hook")
        bench.wait_whole()
        log = data / "api.log"
        stack.enter_context(
            accept._postback(NOWHERE, "replicated", api_port, admin_token, log, **env)
        )
        worker_env = clean_env(
            **env,
            REDIS_URL=NOWHERE,
            POSTBACK_DURABILITY="replicated",
            POSTBACK_LOG_LEVEL="WARNING",
        )
        log = data / "worker.log"
        worker = spawn([sys.executable, "-m", "app.cli", "worker"], worker_env, log)
        stack.callback(stop_group, worker)
        bench.processes.append((worker, log))
        yield bench


# -- the report ---------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"


def report(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"P10 failover: HA set of a primary, {s['replicas']} replicas and 3 Sentinels "
        f"(down-after-milliseconds {s['down_after_milliseconds']}), `replicated` durability "
        f"with {s['durability_replicas']} replica(s) (a 202 once fsynced on the primary and "
        f"on that many replicas; replicas at appendfsync always)",
        *redis_cost.report_lines(results["redis_cost"]),
    ]
    fail = results["failover"]
    for number, kill in enumerate(fail["kills"], 1):
        others = ", ".join(f"{k}: {v}" for k, v in sorted(kill["others"].items())) or "none"
        lines.append(
            f"   failover {number} (SIGKILL of {kill['victim']}): "
            f"{kill['seconds_without_202']:.1f} s without a 202 (goal <= 10); "
            f"switch after {_seconds(kill['to_switch_seconds'])}, first 202 after "
            f"{_seconds(kill['to_first_202_seconds'])}; other answers: {others}"
        )
    out = fail["outcome"]
    lines.append(
        f"   {fail['requests']} submissions, {out['acknowledged']} acknowledged: lost "
        f"{out['lost']} (goal 0), completed {out['completed']}, webhooks delivered "
        f"{out['webhooks_delivered']}; server errors other than 503: {fail['server_errors']} "
        f"(goal 0); set whole again after "
        + (", ".join(f"{x:.0f}" for x in fail["whole_again_seconds"]) or "-")
        + " s"
    )
    if "accept" in results:
        a = results["accept"]
        r, f = a["ratio_replicated_to_fsync"], a["ratio_replicated_to_everysec"]
        runs = ", ".join(f"{x:.2f}" for x in r["runs"])
        lines.append(
            f"   accepts/s (bench.accept --replicas {s['replicas']}, each mode's own API on one "
            f"primary): everysec {a['everysec']['per_second']['median']:.0f} (the script's "
            f"reply), fsync {a['fsync']['per_second']['median']:.0f} (+ WAITAOF 1 0: the "
            f"primary's fsync), replicated {a['replicated']['per_second']['median']:.0f} (+ "
            f"WAITAOF 1 {s['replicas']}: and every replica's); replicated / fsync "
            f"{r['median']:.2f} (runs {runs}), replicated / everysec {f['median']:.2f}; "
            f"failed requests {sum(a[m]['errors'] for m in ('everysec', 'fsync', 'replicated'))}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny run of seconds")
    parser.add_argument("--failovers", type=int, help=f"kills of the primary ({FULL.failovers})")
    parser.add_argument("--rate", type=float, help=f"submissions a second ({FULL.rate:.0f})")
    parser.add_argument("--jobs", type=int, help=f"for Redis CPU per job ({FULL.jobs})")
    parser.add_argument("--no-accept", action="store_true", help="skip bench.accept --replicas")
    parser.add_argument("--data-parent", default=".", help="where the bench's data dir goes")
    parser.add_argument("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args()
    chosen = QUICK if args.quick else FULL
    shape = Shape(
        jobs=args.jobs or chosen.jobs,
        attributed_jobs=min(args.jobs or chosen.jobs, chosen.attributed_jobs),
        idle_seconds=chosen.idle_seconds,
        failovers=args.failovers or chosen.failovers,
        rate=args.rate or chosen.rate,
        threads=chosen.threads,
        steady_seconds=chosen.steady_seconds,
        accept=chosen.accept and not args.no_accept,
    )
    outcome = main(shape, args.data_parent)
    if args.json:
        Path(args.json).write_text(json.dumps(outcome, indent=2, default=str))
    print(report(outcome))
