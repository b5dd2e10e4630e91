"""Redis faults through the API: each is a 503 naming its cause, fast; /healthz never waits.

Every test here runs its own Redis server (`tests.processes.own_redis`), which it
freezes, fills, breaks or turns into a replica; the session's server is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import Worker

from app import create_app
from postback.settings import Settings
from tests.helpers import PROBLEM, bearer
from tests.processes import POSTBACK, OwnRedis, cli_env, eventually, own_redis
from worker import liveness
from worker.jobs import QUEUE_NAME

TIMEOUT_SECONDS = 1.0
# However a fault shows, an answer comes within a few Redis timeouts; this bound is generous.
ANSWER_WITHIN_SECONDS = 10.0


@pytest.fixture
def server(data_dir: Path) -> Iterator[OwnRedis]:
    with own_redis(data_dir / "store") as own:
        yield own


def api(settings: Settings, url: str) -> FlaskClient:
    """The API on `url`, its Redis client built from the settings, as in production."""
    configured = replace(settings, redis_url=url, redis_timeout_seconds=TIMEOUT_SECONDS)
    return create_app(asdict(configured)).test_client()


@pytest.fixture
def client(settings: Settings, server: OwnRedis) -> FlaskClient:
    return api(settings, server.url)


@pytest.fixture
def partner(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    assert reply.status_code == 201
    return {**reply.json, "headers": bearer(reply.json["api_key"])}


def timed(call) -> tuple[Any, float]:
    started = time.monotonic()
    reply = call()
    return reply, time.monotonic() - started


def assert_fault(reply, cause: str, detail: str) -> None:
    """A 503 problem+json naming `cause`, with a Retry-After."""
    assert reply.status_code == 503, reply.get_data(as_text=True)
    assert reply.mimetype == PROBLEM
    assert reply.json["detail"] == detail
    assert reply.json["cause"] == cause
    assert int(reply.headers["Retry-After"]) > 0


def submit(client: FlaskClient, partner: dict[str, Any]):
    return client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"])


def calls(client: FlaskClient, partner: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A submission, a read and a listing."""
    return {
        "submit": submit(client, partner),
        "read": client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]),
        "list": client.get("/v1/jobs", headers=partner["headers"]),
    }


def registered_worker(url: str) -> Worker:
    """An RQ worker registered on `url` (it runs nothing), so that /readyz can be ready."""
    worker = Worker([QUEUE_NAME], connection=redis.Redis.from_url(url))
    worker.register_birth()
    liveness.beat(worker.connection, worker.name)
    return worker


# -- a frozen server --------------------------------------------------------------


def test_a_frozen_redis_answers_503_within_the_timeout_and_recovers(client, partner, server):
    """SIGSTOPped Redis: submissions and reads are a 503 naming the timeout, at once; then 202."""
    job_id = submit(client, partner).json["id"]
    with server.frozen():
        sent, sent_seconds = timed(lambda: submit(client, partner))
        read, read_seconds = timed(
            lambda: client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])
        )
    detail = "the job store did not answer within 1 s"
    assert_fault(sent, "timeout", detail)
    assert_fault(read, "timeout", detail)
    assert sent_seconds < ANSWER_WITHIN_SECONDS and read_seconds < ANSWER_WITHIN_SECONDS
    eventually(
        lambda: submit(client, partner).status_code == 202,
        timeout_seconds=ANSWER_WITHIN_SECONDS,
        what="submissions are accepted again",
    )


def test_after_a_timeout_the_next_requests_do_not_wait_again(client, partner, server):
    """Once a request timed out, the requests right after it get the 503 without waiting."""
    with server.frozen():
        assert submit(client, partner).status_code == 503
        replies, seconds = timed(lambda: [submit(client, partner) for _ in range(10)])
    for reply in replies:
        assert_fault(reply, "timeout", "the job store did not answer within 1 s")
    # Each would otherwise wait the 1 s timeout: 10 s in all.
    assert seconds < 5 * TIMEOUT_SECONDS


def test_healthz_answers_at_once_while_redis_is_frozen(client, server):
    """/healthz asks Redis nothing: 200 while the server is SIGSTOPped, before and after a 503."""
    with server.frozen():
        first, first_seconds = timed(lambda: client.get("/healthz"))
        client.get("/v1/jobs", headers=bearer("pbk_" + "0" * 43))
        second, second_seconds = timed(lambda: client.get("/healthz"))
    assert first.status_code == second.status_code == 200
    assert first_seconds < TIMEOUT_SECONDS and second_seconds < TIMEOUT_SECONDS


def test_readyz_names_a_frozen_redis_within_the_timeout(client, server):
    """/readyz on a SIGSTOPped server: 503 with checks.redis naming the timeout."""
    with server.frozen():
        reply, seconds = timed(lambda: client.get("/readyz"))
    assert seconds < ANSWER_WITHIN_SECONDS
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert reply.json["checks"]["redis"] == {
        "status": "failing",
        "cause": "timeout",
        "detail": "the job store did not answer within 1 s",
    }


# -- refusals: the server answers, but not what was asked --------------------------------


def test_a_failed_save_misconf_is_503_everywhere_and_named_by_readyz(client, partner, server):
    """Its disk gone, Redis refuses writes (MISCONF): submissions, reads, listings are 503."""
    job_id = submit(client, partner).json["id"]
    admin = server.client()
    # The server's own directory disappears: its next snapshot cannot be written.
    shutil.rmtree(server.embedded.dir)
    admin.bgsave()
    eventually(
        lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err",
        timeout_seconds=10,
        what="the snapshot fails",
    )
    detail = "the job store refuses writes: its disk is full or its last save failed (MISCONF)"
    for reply in calls(client, partner, job_id).values():
        assert_fault(reply, "misconf", detail)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["detail"] == detail
    assert ready.json["checks"]["redis"]["cause"] == "misconf"
    # Unable to make the last save a SIGTERM asks for, it would wait out the stop's grace.
    admin.shutdown(nosave=True)


def test_a_read_only_replica_is_503_named_readonly(settings, server, data_dir, admin_headers):
    """Pointed at a replica (after a failover), writes are 503 READONLY, and /readyz says so."""
    primary = api(settings, server.url)
    made = primary.post("/v1/admin/partners", json={"name": "A"}, headers=admin_headers).json
    # The full sync starts at once, not after the default 5 s wait for more replicas.
    server.client().config_set("repl-diskless-sync-delay", 0)
    with own_redis(data_dir / "replica") as replica:
        admin = replica.client()
        admin.config_set("masterauth", server.url.split(":")[2].split("@")[0])
        admin.replicaof("127.0.0.1", server.embedded.port)
        eventually(
            lambda: admin.info("replication")["master_link_status"] == "up",
            timeout_seconds=20,
            what="the replica syncs",
        )
        client = api(settings, replica.url)
        reply = client.post("/v1/jobs", json={"type": "echo"}, headers=bearer(made["api_key"]))
        assert_fault(reply, "readonly", "the job store is a read-only replica (READONLY)")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json["checks"]["redis"]["cause"] == "readonly"


def test_out_of_memory_is_503_named_oom_and_recovers(client, partner, server):
    """With maxmemory reached (noeviction), writes are 503 OOM; freed, they work again."""
    job_id = submit(client, partner).json["id"]
    admin = server.client()
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    try:
        for reply in calls(client, partner, job_id).values():
            assert_fault(reply, "oom", "the job store is out of memory (OOM)")
        assert client.get("/readyz").json["checks"]["redis"]["cause"] == "oom"
    finally:
        admin.config_set("maxmemory", 0)
    assert submit(client, partner).status_code == 202


def test_a_long_script_busy_is_503_named_busy(client, partner, server):
    """While a Lua script runs past busy-reply-threshold, requests are 503 BUSY."""
    admin = server.client()
    admin.config_set("busy-reply-threshold", 100)
    script = (
        "local start = tonumber(redis.call('TIME')[1]) "
        "while tonumber(redis.call('TIME')[1]) < start + 3 do end return 1"
    )
    running = threading.Thread(target=lambda: server.client().eval(script, 0))
    running.start()
    try:
        time.sleep(0.5)
        assert_fault(
            submit(client, partner), "busy", "the job store is busy running a script (BUSY)"
        )
        assert client.get("/readyz").json["checks"]["redis"]["cause"] == "busy"
    finally:
        running.join()
    assert submit(client, partner).status_code == 202


def test_a_stopped_redis_is_503_named_unreachable(client, partner, server):
    """With the server gone (connection refused), requests are 503 naming it unreachable."""
    server.embedded.stop()
    assert_fault(submit(client, partner), "unreachable", "the job store is unreachable")
    ready = client.get("/readyz")
    assert ready.json["checks"]["redis"]["cause"] == "unreachable"


def test_the_command_line_names_a_fault_instead_of_a_traceback(server):
    """`postback status` on a frozen Redis exits 1 within the timeout, naming the fault."""
    env = cli_env(REDIS_URL=server.url, POSTBACK_REDIS_TIMEOUT_SECONDS="1")
    with server.frozen():
        done = subprocess.run(
            [*POSTBACK, "status"], env=env, capture_output=True, timeout=60, check=False
        )
    assert done.returncode == 1
    [line] = done.stderr.decode().strip().splitlines()
    assert line.startswith("postback: the job store did not answer within 1 s: Redis at redis://")


# -- readiness when Redis is well ----------------------------------------------------


def test_readyz_names_a_missing_worker_and_reports_each_check(client, server):
    """/readyz: 503 naming "no live worker" with Redis ok; 200 with both checks ok once one runs."""
    reply = client.get("/readyz")
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert reply.json["detail"] == "no worker is alive"
    assert reply.json["checks"] == {
        "redis": {"status": "ok"},
        "workers": {"status": "failing", "cause": "no_live_worker", "detail": "no worker is alive"},
    }
    worker = registered_worker(server.url)
    try:
        ready = client.get("/readyz")
    finally:
        worker.register_death()
    assert ready.status_code == 200
    assert ready.json["status"] == "ready" and ready.json["workers"] == 1
    assert ready.json["checks"] == {"redis": {"status": "ok"}, "workers": {"status": "ok"}}
