"""A worker and its delivery process ride out Redis faults: they wait, retry and carry on.

Real processes on a Redis server of the test's own, which the test freezes
(SIGSTOP), kills and restarts, or fills (maxmemory). Afterwards the worker and
its delivery process are the same processes, and a job runs end to end with
its webhook delivered.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from app import create_app
from postback.settings import Settings
from tests.helpers import bearer
from tests.processes import OwnRedis, eventually, own_redis, postback_worker
from tests.receiver import Receiver
from tests.test_worker_process import delivery_processes

# How long a fault lasts once a process has noticed it: past the end of the job under way.
FAULT_SECONDS = 3.0


@pytest.fixture
def server(data_dir: Path) -> Iterator[OwnRedis]:
    with own_redis(data_dir / "store") as own:
        yield own


@pytest.fixture
def client(settings: Settings, server: OwnRedis) -> FlaskClient:
    return create_app(asdict(replace(settings, redis_url=server.url))).test_client()


@pytest.fixture
def partner(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    return {**reply.json, "headers": bearer(reply.json["api_key"])}


class Worker:
    """A `postback worker` on `server`, its stderr kept, and its delivery process."""

    def __init__(self, server: OwnRedis, log_path: Path) -> None:
        self.server = server
        self.log_path = log_path

    def __enter__(self) -> Worker:
        self.log = self.log_path.open("wb")
        self.running = postback_worker(
            self.server.url, stderr=self.log, POSTBACK_REDIS_TIMEOUT_SECONDS="1"
        )
        self.process = self.running.__enter__()
        (self.delivery,) = eventually(
            lambda: delivery_processes(self.process.pid),
            timeout_seconds=20,
            what="a delivery process",
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.__exit__(*exc)
        self.log.close()

    def same_processes(self) -> bool:
        """Neither the worker nor its delivery process exited or was replaced."""
        return self.process.poll() is None and delivery_processes(self.process.pid) == [
            self.delivery
        ]

    def fault_lines(self) -> list[dict[str, Any]]:
        """The log lines that report a Redis fault or a recovery from one."""
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if "redis_fault" in entry or "redis_recovered_after_seconds" in entry:
                lines.append(entry)
        return lines


def run_job(client, partner, receiver: Receiver, received: int, **job: Any) -> dict[str, Any]:
    """Submit a job with a callback, wait for its webhook and return the job as it ended."""
    job.setdefault("type", "echo")
    reply = client.post(
        "/v1/jobs", json={**job, "callback_url": receiver.url}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.json
    receiver.wait_for(received, timeout_seconds=60)
    return eventually(
        lambda: settled(client, partner, reply.json["id"]),
        timeout_seconds=20,
        what="the delivery is recorded",
    )


def settled(client, partner, job_id: str) -> dict[str, Any] | None:
    """The job once its webhook's delivery is recorded as delivered, else None."""
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    return job if job.get("delivery", {}).get("status") == "delivered" else None


def start_sleeping_job(client, partner, receiver: Receiver, *, seconds: int) -> str:
    """Submit a `sleep` job with a callback; its id once a worker runs it."""
    job_id = client.post(
        "/v1/jobs",
        json={"type": "sleep", "input": {"seconds": seconds}, "callback_url": receiver.url},
        headers=partner["headers"],
    ).json["id"]
    eventually(
        lambda: (
            client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json["status"]
            == "processing"
        ),
        timeout_seconds=20,
        what="the worker starts the job",
    )
    return job_id


def assert_logged_once_per_change(lines: list[dict[str, Any]]) -> None:
    """Each component logged each fault once, and its recovery at most once: not per retry."""
    faults = Counter(
        (line["component"], line["redis_fault"]) for line in lines if "redis_fault" in line
    )
    recoveries = Counter(line["component"] for line in lines if "redis_fault" not in line)
    assert faults, "no fault was logged"
    assert set(faults.values()) == {1}, faults
    assert set(recoveries.values()) <= {1}, recoveries
    assert set(recoveries) <= {component for component, _ in faults}, (faults, recoveries)


def recovered(worker: Worker, components: set[str]) -> list[dict[str, Any]] | None:
    """The fault lines, once every one of `components` that logged a fault logged its recovery."""
    lines = worker.fault_lines()
    faulted = {line["component"] for line in lines if "redis_fault" in line} & components
    back = {line["component"] for line in lines if "redis_recovered_after_seconds" in line}
    return lines if faulted <= back else None


# Components that work all the time (not only during a job), so they notice a recovery soon.
ALWAYS_AT_WORK = {"worker", "reaper", "delivery claims", "delivery claim renewals"}


def test_a_worker_waits_out_a_frozen_redis(client, partner, server, tmp_path, receiver):
    """Redis SIGSTOPped while a job runs: the same processes finish it and deliver its webhook."""
    with Worker(server, tmp_path / "worker.log") as worker:
        run_job(client, partner, receiver, 1)
        job_id = start_sleeping_job(client, partner, receiver, seconds=1)
        with server.frozen():
            eventually(
                lambda: len(worker.fault_lines()) > 0,
                timeout_seconds=20,
                what="the fault is noticed",
            )
            time.sleep(FAULT_SECONDS)
        receiver.wait_for(2, timeout_seconds=60)
        final = run_job(client, partner, receiver, 3)
        assert worker.same_processes()
        lines = eventually(
            lambda: recovered(worker, ALWAYS_AT_WORK), timeout_seconds=20, what="recoveries"
        )
    assert final["status"] == "completed" and final["delivery"]["status"] == "delivered"
    assert client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json["attempts"] == 1
    assert {line.get("redis_fault") for line in lines} >= {"timeout"}
    assert_logged_once_per_change(lines)


def test_a_worker_reconnects_to_a_restarted_redis(client, partner, server, tmp_path, receiver):
    """Redis SIGKILLed and started again on its port and data dir: the same processes carry on."""
    with Worker(server, tmp_path / "worker.log") as worker:
        run_job(client, partner, receiver, 1)
        server.restart()
        final = run_job(client, partner, receiver, 2)
        assert worker.same_processes()
    assert final["status"] == "completed" and final["delivery"]["status"] == "delivered"


def test_a_worker_rides_out_out_of_memory_mid_job(client, partner, server, tmp_path, receiver):
    """Redis out of memory while a job runs: no crash, the job ends once, its webhook goes out."""
    admin = server.client()
    with Worker(server, tmp_path / "worker.log") as worker:
        run_job(client, partner, receiver, 1)
        job_id = start_sleeping_job(client, partner, receiver, seconds=2)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
        try:
            eventually(
                lambda: any(line.get("redis_fault") == "oom" for line in worker.fault_lines()),
                timeout_seconds=20,
                what="the worker notices the fault",
            )
            time.sleep(FAULT_SECONDS)
            assert worker.same_processes()
        finally:
            admin.config_set("maxmemory", 0)
        receiver.wait_for(2, timeout_seconds=60)
        final = run_job(client, partner, receiver, 3)
        assert worker.same_processes()
        lines = eventually(
            lambda: recovered(worker, ALWAYS_AT_WORK | {"job runs"}),
            timeout_seconds=20,
            what="recoveries",
        )
    ended = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    assert ended["status"] == "completed" and ended["attempts"] == 1
    assert final["status"] == "completed" and final["delivery"]["status"] == "delivered"
    assert_logged_once_per_change(lines)
