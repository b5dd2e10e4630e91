"""Failover under load, three times in a row: `postback up --replicas 2` in `replicated`
durability, four clients submitting jobs with callbacks, the current primary SIGKILLed
each round.

`POSTBACK_DURABILITY_REPLICAS=1`: a 202 once the job is in the AOF of the primary and of
one replica. That is what a failover needs (the Sentinels promote the replica furthest
along the stream, which holds every write a replica confirmed), and what a set of two
replicas can still give while one of them is down or rejoining, as the killed server
is between rounds here; with 2, every round would refuse submissions until the killed
server is back, 10 to 20 s.

The clients retry a 503 with the same Idempotency-Key until it is a 202, sooner than
Retry-After asks, to keep the load on through the switch and to time the gap finely.
The killed servers rejoin as replicas while the later rounds run (Sentinel converts a
former primary some seconds after it is back: 10 to 20 at its default periods, a few at
the shorter ones `tests.ha.quicken` sets here), so their rejoining is checked at the end.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from postback.ha import HaSet
from postback.ha_view import Member, Role
from tests.ha import kill, member, quicken
from tests.helpers import bearer
from tests.processes import eventually, valkey_pids
from tests.receiver import Receiver
from tests.test_cli import Up, postback_up
from tests.test_ha import status_json

ROUNDS = 3
CLIENTS = 4
# A submission not answered within this is a hang: the test fails.
REQUEST_TIMEOUT_SECONDS = 10.0
# Between a client's submissions, and between its retries of a 503.
PAUSE_SECONDS = 0.02
RETRY_PAUSE_SECONDS = 0.2
# Bounds: a failover (down-after 1.5 s, then the election) and submissions accepted
# again; every accepted job run and its webhook delivered once the load stops; a
# killed primary back as a replica (10 to 20 s after it is restarted).
SWITCH_SECONDS = 30.0
DRAIN_SECONDS = 60.0
REJOIN_SECONDS = 45.0


@dataclass(frozen=True)
class Answer:
    """One submission attempt as its client saw it."""

    key: str
    sent_at: float
    answered_at: float
    status: int | None = None  # None: no answer (timed out, connection refused or reset)
    retry_after: str | None = None
    job_id: str | None = None
    body: str = ""  # a refusal's problem, or the exception of no answer


@dataclass
class Load:
    """`CLIENTS` threads submitting echo jobs with a callback, each with a new
    Idempotency-Key once its last one got a 202."""

    base: str
    api_key: str
    callback_url: str
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for number in range(CLIENTS):
            thread = threading.Thread(target=self._client, args=(number,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        """Stop the load; a client with a key not accepted yet retries it a while first."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=SWITCH_SECONDS + REQUEST_TIMEOUT_SECONDS)
        assert not any(thread.is_alive() for thread in self.threads)

    def accepted_since(self, moment: float) -> list[Answer]:
        """The 202s to submissions sent after `moment`."""
        return [a for a in list(self.answers) if a.status == 202 and a.sent_at > moment]

    def _client(self, number: int) -> None:
        with requests.Session() as http:
            http.trust_env = False
            for sequence in itertools.count(1):
                if self.stop.is_set():
                    return
                key = f"chaos-{number}-{sequence}"
                body = {
                    "type": "echo",
                    "input": {"client": number, "sequence": sequence},
                    "callback_url": self.callback_url,
                }
                self._until_accepted(
                    http, key, body, {**bearer(self.api_key), "Idempotency-Key": key}
                )
                time.sleep(PAUSE_SECONDS)

    def _until_accepted(
        self, http: requests.Session, key: str, body: dict[str, Any], headers: dict[str, str]
    ) -> None:
        """Submit until a 202; retry a 503 (after the load stops, for SWITCH_SECONDS)."""
        give_up_at = float("inf")
        while True:
            sent_at = time.monotonic()
            try:
                reply = http.post(
                    f"{self.base}/v1/jobs",
                    json=body,
                    headers=headers,
                    timeout=REQUEST_TIMEOUT_SECONDS,
                )
            except requests.RequestException as exc:
                self.answers.append(Answer(key, sent_at, time.monotonic(), body=repr(exc)))
                return
            accepted = reply.status_code == 202
            self.answers.append(
                Answer(
                    key,
                    sent_at,
                    time.monotonic(),
                    status=reply.status_code,
                    retry_after=reply.headers.get("Retry-After"),
                    job_id=reply.json()["id"] if accepted else None,
                    body="" if accepted else reply.text,
                )
            )
            if reply.status_code != 503:
                return
            if self.stop.is_set():
                give_up_at = min(give_up_at, time.monotonic() + SWITCH_SECONDS)
                if time.monotonic() >= give_up_at:
                    return
            time.sleep(RETRY_PAUSE_SECONDS)


@dataclass(frozen=True)
class Round:
    number: int
    killed: str
    promoted: str
    started_at: float
    killed_at: float
    promoted_at: float
    restarted_at: float
    accepting_at: float


def current_primary(ha: HaSet) -> Member:
    """The member most Sentinels name primary, once it answers as one."""

    def found() -> Member | None:
        named = ha.primary()
        return next(
            (
                m
                for m in ha.members()
                if (m.host, m.port) == named and m.role == Role.PRIMARY and m.up
            ),
            None,
        )

    return eventually(found, timeout_seconds=SWITCH_SECONDS, what="the Sentinels' primary")


def fail_over(ha: HaSet, load: Load, number: int) -> Round:
    """SIGKILL the current primary under load; return once a replica is promoted, the
    killed server runs again (`postback up` restarts it) and a submission sent after the
    promotion was accepted."""
    started_at = time.monotonic()
    eventually(
        lambda: load.accepted_since(started_at),
        timeout_seconds=SWITCH_SECONDS,
        what=f"round {number}: submissions accepted before the kill",
    )
    primary = current_primary(ha)
    pid = kill(ha, primary.name)
    killed_at = time.monotonic()
    promoted = eventually(
        lambda: (new := current_primary(ha)).name != primary.name and new,
        timeout_seconds=SWITCH_SECONDS,
        what=f"round {number}: a replica promoted in place of {primary.name}",
    )
    promoted_at = time.monotonic()
    eventually(
        lambda: member(ha, primary.name).pid not in (None, pid),
        timeout_seconds=SWITCH_SECONDS,
        what=f"round {number}: postback up restarts {primary.name}",
    )
    restarted_at = time.monotonic()
    accepted = eventually(
        lambda: load.accepted_since(promoted_at),
        timeout_seconds=SWITCH_SECONDS,
        what=f"round {number}: submissions accepted by the new primary",
    )
    return Round(
        number,
        killed=primary.name,
        promoted=promoted.name,
        started_at=started_at,
        killed_at=killed_at,
        promoted_at=promoted_at,
        restarted_at=restarted_at,
        accepting_at=min(a.answered_at for a in accepted),
    )


def longest_gap(answers: list[Answer], start: float, end: float) -> float:
    """The longest time within [start, end] between two 202s (or an end and a 202)."""
    times = sorted(a.answered_at for a in answers if a.status == 202 and start < a.answered_at)
    times = [start, *(t for t in times if t < end), end]
    return max(b - a for a, b in itertools.pairwise(times))


def report(rounds: list[Round], answers: list[Answer], ended_at: float) -> None:
    """Print each round's figures (shown with `pytest -s`)."""
    ends = [r.started_at for r in rounds[1:]] + [ended_at]
    for found, end in zip(rounds, ends, strict=True):
        within = [a for a in answers if found.started_at <= a.answered_at < end]
        statuses = Counter(str(a.status or "no answer") for a in within)
        print(
            f"round {found.number}: killed {found.killed} (promoted {found.promoted}) "
            f"{found.killed_at - found.started_at:.1f} s in; promoted after "
            f"{found.promoted_at - found.killed_at:.1f} s, restarted after "
            f"{found.restarted_at - found.killed_at:.1f} s, a 202 again after "
            f"{found.accepting_at - found.killed_at:.1f} s; longest without a 202 "
            f"{longest_gap(within, found.started_at, end):.1f} s; "
            f"answers {dict(sorted(statuses.items()))}"
        )


@pytest.fixture
def up(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Up]:
    """`postback up --replicas 2`, in replicated durability, with no rate limit in reach."""
    monkeypatch.setenv("POSTBACK_DURABILITY", "replicated")
    monkeypatch.setenv("POSTBACK_DURABILITY_REPLICAS", "1")
    monkeypatch.setenv("POSTBACK_RATE_LIMIT", "100000/second")
    with postback_up(data_dir, args=("--replicas", "2")) as running:
        yield running
    assert valkey_pids(data_dir) == []


def test_three_failovers_under_load_lose_no_acknowledged_job(data_dir: Path, up: Up) -> None:
    """The primary SIGKILLed three times under load: every submission is answered within
    its timeout, a 202 or a 503 with Retry-After; every job accepted completes and its
    webhook is delivered, under one webhook-id; no webhook comes for a job not accepted;
    each killed server rejoins the set as a replica."""
    ha = HaSet.find(data_dir)
    assert ha is not None
    quicken(ha)
    partner = up.create_partner("Acme")
    headers = bearer(partner["api_key"])
    began_at = time.monotonic()
    with Receiver() as receiver:
        load = Load(up.base, partner["api_key"], receiver.url)
        load.start()
        try:
            rounds = [fail_over(ha, load, number) for number in range(1, ROUNDS + 1)]
            eventually(
                lambda: load.accepted_since(rounds[-1].accepting_at),
                timeout_seconds=SWITCH_SECONDS,
                what="submissions accepted after the last round",
            )
        finally:
            load.finish()
        ended_at = time.monotonic()
        answers = list(load.answers)
        report(rounds, answers, ended_at)

        # Every submission answered in time: a 202, or a 503 with Retry-After.
        statuses = Counter(a.status for a in answers)
        odd = [a for a in answers if a.status not in (202, 503)]
        assert odd == [], statuses
        assert all(int(a.retry_after or 0) > 0 for a in answers if a.status == 503)

        # One job per key, whatever its retries; a key never accepted may have one or none.
        acknowledged: dict[str, str] = {}
        for answer in answers:
            if answer.job_id is not None:
                assert acknowledged.setdefault(answer.key, answer.job_id) == answer.job_id
        jobs = set(acknowledged.values())
        assert len(jobs) == len(acknowledged)
        never = {a.key for a in answers} - set(acknowledged)

        def webhook_ids() -> dict[str, set[str]]:
            by_job: dict[str, set[str]] = {}
            for hook in list(receiver.received):
                job_id = json.loads(hook.body)["data"]["id"]
                by_job.setdefault(job_id, set()).add(hook.headers["webhook-id"])
            return by_job

        # Counted, not awaited to a failure, so that the figures show whatever went wrong.
        drain_until = time.monotonic() + DRAIN_SECONDS
        while not jobs <= set(webhook_ids()) and time.monotonic() < drain_until:
            time.sleep(0.2)

        def shown(job_id: str) -> tuple[int, str, str]:
            reply = up.http.get(
                f"{up.base}/v1/jobs/{job_id}", headers=headers, timeout=REQUEST_TIMEOUT_SECONDS
            )
            if reply.status_code != 200:
                return reply.status_code, "", ""
            job = reply.json()
            return 200, job["status"], job["delivery"]["status"]

        ends: dict[str, tuple[int, str, str]] = {}
        for job_id in sorted(jobs):
            ends[job_id] = shown(job_id)
            while ends[job_id] != (200, "completed", "delivered") and (
                time.monotonic() < drain_until
            ):
                time.sleep(0.2)  # its settlement may lag the receiver's answer
                ends[job_id] = shown(job_id)
        drained_at = time.monotonic()
        lost = sorted(job_id for job_id, end in ends.items() if end[0] == 404)
        unfinished = {
            job_id: end for job_id, end in ends.items() if end != (200, "completed", "delivered")
        }
        by_job = webhook_ids()
        unhooked = jobs - set(by_job)
        print(
            f"answers {dict(sorted((str(s), n) for s, n in statuses.items()))}; "
            f"acknowledged {len(jobs)} jobs, lost {len(lost)}, keys never acknowledged "
            f"{len(never)}; webhooks {len(receiver.received)} for {len(by_job)} jobs "
            f"({len(receiver.received) - len(by_job)} repeated), none for "
            f"{len(unhooked)} acknowledged; rounds and load "
            f"{ended_at - began_at:.1f} s, drain {drained_at - ended_at:.1f} s"
        )
        assert lost == []
        assert unfinished == {}
        assert unhooked == set()
        assert {job_id: ids for job_id, ids in by_job.items() if len(ids) > 1} == {}
        assert set(by_job) - jobs == set()

    # Each killed server rejoined: a linked replica of the Sentinels' primary now, or
    # promoted in a later round (the Sentinels promote replicas only).
    def rejoined() -> bool:
        shown = status_json(data_dir)["redis"]
        members = {m["name"]: m for m in shown["members"]}
        replicas = {
            name
            for name, m in members.items()
            if m["role"] == "replica"
            and m["link_up"]
            and m["primary"] == shown["sentinel"]["primary"]
        }
        return (
            all(
                r.killed in replicas or r.killed in {later.promoted for later in rounds[r.number :]}
                for r in rounds
            )
            and len(replicas) == 2
        )

    eventually(rejoined, timeout_seconds=REJOIN_SECONDS, what="the killed servers rejoined")
    print(f"set whole again {time.monotonic() - ended_at:.1f} s after the load stopped")
