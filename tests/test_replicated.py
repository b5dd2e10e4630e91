"""`POSTBACK_DURABILITY=replicated`: a 202 once the job is fsynced on the primary and on
`POSTBACK_DURABILITY_REPLICAS` replicas, else a 503 that a retry with the same
Idempotency-Key turns into a 202 for the same job.

Every test runs its own HA set (`tests.ha.ha_set`: a primary, one replica, AOF on
both, and Sentinels that watch them); the session's server is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from app import create_app
from postback import connection
from postback.ha import HaSet
from postback.settings import Settings
from tests.ha import ha_set, kill, member
from tests.helpers import PROBLEM, bearer
from tests.processes import eventually
from worker import liveness
from worker.jobs import QUEUE_NAME, REPLICATED_WAIT_SECONDS, job_key, partner_index
from worker.runtime import job_store

# A refusal comes after one bounded wait for the replicas (under 5 s); this bound is generous.
ANSWER_WITHIN_SECONDS = 10.0


def confirmed_by(client: redis.Redis, replicas: int) -> bool:
    """Whether a write made now is fsynced on the primary and on `replicas` replicas
    within 200 ms (the write and WAITAOF on one connection, as WAITAOF requires)."""
    pipe = client.pipeline(transaction=False)
    pipe.incr("test:mark")
    pipe.execute_command("WAITAOF", 1, replicas, 200)
    _, (local, fsynced) = pipe.execute()
    return local >= 1 and fsynced >= replicas


class Server:
    """One data member of the HA set: its URL, a client for the test's own commands, and
    a way to stop it for a while."""

    def __init__(self, ha: HaSet, name: str) -> None:
        self.ha = ha
        self.name = name
        found = member(ha, name)
        self.url = f"redis://:{ha.data_password}@{found.host}:{found.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=10)

    @contextlib.contextmanager
    def stopped(self, how: str) -> Iterator[None]:
        """The member out of reach inside the block: SIGSTOPped (it holds its links and
        answers nothing) or SIGKILLed, then continued or started again."""
        if how == "sigkill":
            kill(self.ha, self.name)
            try:
                yield
            finally:
                self.ha.restart_dead()
            return
        pid = member(self.ha, self.name).pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


@pytest.fixture
def ha(data_dir: Path) -> Iterator[HaSet]:
    """An HA set with one replica, once the replica confirms what it fsyncs."""
    with ha_set(data_dir, replicas=1) as running:
        primary = Server(running, "primary").client()
        eventually(lambda: confirmed_by(primary, 1), timeout_seconds=30, what="the replica fsyncs")
        yield running


@pytest.fixture
def primary(ha: HaSet) -> Server:
    return Server(ha, "primary")


@pytest.fixture
def replica(ha: HaSet) -> Server:
    return Server(ha, "replica-1")


def api(settings: Settings, url: str, **changes: Any) -> FlaskClient:
    """The API on `url` in replicated durability, its Redis client built as in production."""
    configured = replace(settings, redis_url=url, durability="replicated", **changes)  # type: ignore[arg-type]
    return create_app(asdict(configured)).test_client()


def new_partner(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    made = reply.json
    assert reply.status_code == 201 and made is not None
    return {**made, "headers": bearer(made["api_key"])}


def submit(client: FlaskClient, partner: dict[str, Any], key: str | None = None):
    headers = partner["headers"] if key is None else {**partner["headers"], "Idempotency-Key": key}
    return client.post("/v1/jobs", json={"type": "echo"}, headers=headers)


def timed(call) -> tuple[Any, float]:
    started = time.monotonic()
    reply = call()
    return reply, time.monotonic() - started


def test_a_job_is_accepted_once_it_is_on_the_replica(settings, primary, replica, admin_headers):
    """With the replica connected, a submission is a 202 and the job and its queue entry are
    already on the replica when the answer leaves."""
    client = api(settings, primary.url)
    partner = new_partner(client, admin_headers)
    reply = submit(client, partner)
    assert reply.status_code == 202, reply.get_data(as_text=True)
    on_replica = replica.client()
    job_id = reply.json["id"]
    assert on_replica.hget(job_key(job_id), "status") == b"queued"
    assert on_replica.zscore(partner_index(partner["id"]), job_id) is not None
    assert on_replica.llen(f"rq:queue:{QUEUE_NAME}") == 1


@pytest.mark.parametrize("how", ["sigstop", "sigkill"])
def test_a_stopped_replica_is_a_503_and_the_retry_after_it_is_back_the_same_job(
    settings, primary, replica, admin_headers, how
):
    """With the replica SIGSTOPped or SIGKILLed, a submission is a 503 problem+json with
    Retry-After, the job stored but unconfirmed; once the replica is back, a retry with
    the same Idempotency-Key is a 202 for that job, and no second job is made."""
    client = api(settings, primary.url)
    partner = new_partner(client, admin_headers)
    with replica.stopped(how):
        refused, elapsed = timed(lambda: submit(client, partner, key="order-7"))
        assert refused.status_code == 503, refused.get_data(as_text=True)
        assert refused.mimetype == PROBLEM
        assert int(refused.headers["Retry-After"]) > 0
        assert elapsed < ANSWER_WITHIN_SECONDS
        stored = primary.client().zrange(partner_index(partner["id"]), 0, -1)
        assert len(stored) == 1
        # Still unconfirmed: a retry while the replica is stopped is a 503 again.
        assert submit(client, partner, key="order-7").status_code == 503
    eventually(lambda: confirmed_by(primary.client(), 1), timeout_seconds=30, what="it is back")
    again = submit(client, partner, key="order-7")
    assert again.status_code == 202, again.get_data(as_text=True)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == stored[0].decode()
    assert primary.client().zcard(partner_index(partner["id"])) == 1
    assert replica.client().hget(job_key(again.json["id"]), "status") == b"queued"


def test_more_replicas_required_than_are_connected_is_a_503(
    settings, primary, replica, admin_headers
):
    """POSTBACK_DURABILITY_REPLICAS=2 with one replica: every submission is a 503."""
    client = api(settings, primary.url, durability_replicas=2)
    partner = new_partner(client, admin_headers)
    reply, elapsed = timed(lambda: submit(client, partner))
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert int(reply.headers["Retry-After"]) > 0
    assert elapsed < ANSWER_WITHIN_SECONDS


def test_readyz_names_too_few_replicas(settings, primary, replica):
    """In replicated durability /readyz is 200 while the replicas a submission waits for are
    online, and a 503 naming too_few_replicas when more are required, or one is gone."""
    worker_name = "test-worker"
    liveness.beat(primary.client(), worker_name)
    try:
        client = api(settings, primary.url)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.get_data(as_text=True)
        assert ready.json["checks"]["replication"] == {"status": "ok"}
        short = api(settings, primary.url, durability_replicas=2).get("/readyz")
        assert short.status_code == 503 and short.mimetype == PROBLEM
        assert short.json["checks"]["replication"]["cause"] == "too_few_replicas"
        assert short.json["detail"] == "1 of the 2 replicas a submission waits for are online"
        with replica.stopped("sigkill"):
            eventually(
                lambda: client.get("/readyz").status_code == 503,
                timeout_seconds=30,
                what="the primary sees its replica gone",
            )
    finally:
        liveness.gone(primary.client(), worker_name)


def test_submissions_made_at_once_share_one_wait_for_the_replica(primary, replica, monkeypatch):
    """Jobs created at once by one store are confirmed by WAITAOFs sent after their scripts on
    the connection that wrote them: the primary's fsync (WAITAOF 1 0), then the replica's
    (WAITAOF 1 1) until it confirms."""
    sent: list[tuple[int, tuple[Any, ...]]] = []
    real = connection.exchange

    def spy(conn, commands):
        sent.extend((id(conn), command) for command in commands)
        return real(conn, commands)

    monkeypatch.setattr(connection, "exchange", spy)
    client = connection.connect(primary.url, timeout_seconds=2.0, max_connections=8)
    store = job_store(client, Settings(durability="replicated"))  # type: ignore[arg-type]
    made: list[str] = []

    def create() -> None:
        job = store.create(
            partner_id="ptn_x", type="echo", input={}, callback_url=None, timeout_seconds=5
        )
        made.append(job.id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(made) == 8
    waits = [(conn, command) for conn, command in sent if command[0] == "WAITAOF"]
    assert {command[1:3] for _, command in waits} <= {(1, 0), (1, 1)}
    assert (1, 0) in {command[1:3] for _, command in waits}
    writers = {conn for conn, command in sent if command[0] in ("EVAL", "EVALSHA")}
    assert {conn for conn, _ in waits} <= writers
    on_replica = replica.client()
    assert all(on_replica.exists(job_key(job_id)) for job_id in made)


def test_the_wait_for_the_replicas_is_bounded_whatever_the_redis_timeout():
    """In replicated durability WAITAOF waits at most 3 s (3/4 of the Redis timeout when
    less), so a 503 leaves within 5 s even with a long POSTBACK_REDIS_TIMEOUT_SECONDS."""
    client = redis.Redis()  # never connected: the store only keeps it
    slow = job_store(client, Settings(durability="replicated", redis_timeout_seconds=30))  # type: ignore[arg-type]
    assert slow.fsync_wait_seconds == REPLICATED_WAIT_SECONDS == 3.0
    default = job_store(client, Settings(durability="replicated"))  # type: ignore[arg-type]
    assert default.fsync_wait_seconds == 1.5
    assert default.replicas == 1
    assert job_store(client, Settings(durability="fsync")).replicas == 0  # type: ignore[arg-type]


def test_a_primary_short_of_its_min_replicas_is_a_503_named_noreplicas(
    settings, primary, replica, admin_headers
):
    """With min-replicas-to-write above the replicas it has, the primary refuses writes:
    submissions and /readyz are a 503 naming noreplicas, never a 500."""
    client = api(settings, primary.url)
    partner = new_partner(client, admin_headers)
    primary.client().config_set("min-replicas-to-write", 2)
    reply = submit(client, partner)
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert reply.json["cause"] == "noreplicas"
    assert int(reply.headers["Retry-After"]) > 0
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["checks"]["redis"]["cause"] == "noreplicas"
