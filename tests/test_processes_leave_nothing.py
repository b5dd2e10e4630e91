"""Processes that leave nothing behind, with real processes: a SIGKILLed worker's children,
`postback up`'s whole tree on SIGTERM, one `postback up` per data dir, a port in use,
worker liveness within seconds, an import path the working directory cannot shadow,
and a data dir only its owner can read."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app import status
from postback.embedded import free_port
from tests.helpers import bearer, close_connections
from tests.hostile import Hostile
from tests.processes import (
    POSTBACK,
    cli_env,
    eventually,
    is_gone,
    postback_worker,
    stop_process,
    valkey_pids,
    wait_gone,
)
from tests.receiver import Receiver
from tests.test_cli import Up, descendants, postback_up, start_time

QUEUE_LOCKS = ("postback:high", "postback", "postback:low")
# The console script, as an operator runs it (its own directory, not the cwd, leads sys.path).
POSTBACK_SCRIPT = str(Path(sys.executable).parent / "postback")


def scheduler_pid(client: redis.Redis) -> int | None:
    """The pid of the scheduler holding every queue's scheduler lock, or None."""
    holders = {client.get(f"rq:scheduler-lock:{name}") for name in QUEUE_LOCKS}
    if len(holders) != 1 or None in holders:
        return None
    (holder,) = holders
    pid = client.hget(f"rq:scheduler:{holder.decode()}", "pid")
    return int(pid) if pid else None


def blocked_clients(client: redis.Redis) -> set[str]:
    """Ids of the connections blocked in a command (a worker waiting for jobs)."""
    return {c["id"] for c in client.client_list() if "b" in c["flags"]}


def test_a_sigkilled_worker_leaves_nothing_and_another_worker_takes_the_scheduler(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """SIGKILL a worker: every process below it ends, its connections close, and another
    worker's scheduler takes the scheduler locks within seconds."""
    with postback_worker(redis_url) as first:
        held_by = eventually(
            lambda: scheduler_pid(redis_client), timeout_seconds=30, what="a scheduler"
        )
        assert held_by in descendants(first.pid)
        first_blocked = eventually(
            lambda: blocked_clients(redis_client), timeout_seconds=30, what="a waiting worker"
        )
        with postback_worker(redis_url) as second:
            second_blocked = eventually(
                lambda: blocked_clients(redis_client) - first_blocked,
                timeout_seconds=30,
                what="the second worker waits for jobs",
            )
            below_first = eventually(
                lambda: len(found := descendants(first.pid)) >= 2 and found,
                timeout_seconds=30,
                what="the first worker's delivery and scheduler processes",
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
            assert wait_gone(list(below_first), 30.0) == []
            taken = eventually(
                lambda: scheduler_pid(redis_client), timeout_seconds=30, what="the locks retaken"
            )
            assert taken in descendants(second.pid)
            eventually(
                lambda: blocked_clients(redis_client) == second_blocked,
                timeout_seconds=30,
                what="only the live worker's connection waits for jobs",
            )


def test_a_sigkilled_worker_stops_counting_as_alive_within_seconds(
    client: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    """/readyz and `postback status` count a worker killed by SIGKILL as dead within 30 s."""
    with postback_worker(redis_url) as worker:
        eventually(
            lambda: client.get("/readyz").status_code == 200,
            timeout_seconds=30,
            what="the worker counts as alive",
        )
        assert status.workers(redis_client) == 1
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        eventually(
            lambda: status.workers(redis_client) == 0,
            timeout_seconds=30,
            what="the killed worker stops counting",
        )
    reply = client.get("/readyz")
    assert reply.status_code == 503 and reply.json["detail"] == "no worker is alive"


def test_sigterm_to_up_ends_its_whole_tree_even_during_a_delivery(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM to `postback up` while a webhook attempt hangs: when it exits, no process
    it started (API, worker, delivery, scheduler, Redis) is alive."""
    # Long enough for the SIGTERM to come while the attempt hangs (it comes within moments
    # of the attempt), and what the stop waits for at most.
    monkeypatch.setenv("POSTBACK_DELIVERY_TIMEOUT_SECONDS", "5")
    with Hostile("hang", max_seconds=60) as hanging, postback_up(data_dir) as up:
        partner = up.create_partner("Acme")
        reply = up.http.post(
            f"{up.base}/v1/jobs",
            json={"type": "echo", "input": {}, "callback_url": hanging.url},
            headers=bearer(partner["api_key"]),
        )
        assert reply.status_code == 202, reply.text
        eventually(lambda: hanging.requests, timeout_seconds=30, what="an attempt in flight")
        tree = up.remember_children()
        assert any(b"worker.deliver" in command(pid) for pid in tree), tree
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=90) == 0, up.output()
        alive = [pid for pid, started in tree.items() if start_time(pid) == started]
        assert alive == [], [command(pid) for pid in alive]
        assert valkey_pids(data_dir) == []


def command(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def run_up(
    data_dir: Path, port: int, *, timeout_seconds: float = 60
) -> subprocess.CompletedProcess:
    """`postback up` with no worker, run to its end (killed, with all it started, if it runs on)."""
    process = subprocess.Popen(
        [*POSTBACK, "up", "--data-dir", str(data_dir), "--port", str(port), "--workers", "0"],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        for pid in descendants(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"postback up kept running:\n{out}\n{err}")
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def test_a_second_up_on_a_data_dir_in_use_refuses_and_touches_nothing(data_dir: Path) -> None:
    """A second `postback up` on the same data dir exits 1 naming the first one's pid; the
    first one and its Redis run on."""
    with postback_up(data_dir, workers=0, ready=(503,)) as first:
        servers = valkey_pids(data_dir)
        token = first.admin_token()
        second = run_up(data_dir, free_port())
        assert second.returncode == 1
        assert f"already running (pid {first.process.pid})" in second.stderr
        assert second.stderr.count("\n") == 1 and "Postback is up" not in second.stdout
        assert valkey_pids(data_dir) == servers
        assert first.admin_token() == token
        assert first.readyz() == 503
        assert first.process.poll() is None


def test_a_lock_left_by_a_dead_up_does_not_block(data_dir: Path) -> None:
    """A lock file naming a process that is gone does not stop `postback up` from starting."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=10)
    data_dir.mkdir(parents=True)
    (data_dir / "up.lock").write_text(f"{dead.pid}\n")
    with postback_up(data_dir, workers=0, ready=(503,)) as up:
        assert (data_dir / "up.lock").read_text().strip() == str(up.process.pid)


def test_a_port_in_use_is_one_line_and_exit_1(data_dir: Path) -> None:
    """`postback up` on a port something listens on exits 1 with one line naming the
    address, and leaves nothing running."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_up(data_dir, port)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], done.stderr
    assert "Postback is up" not in done.stdout
    assert valkey_pids(data_dir) == []


def test_the_data_dir_is_its_owners_only(data_dir: Path) -> None:
    """Under `postback up` the data dir and every directory in it are 0700, every file 0600
    (the AOF with the signing secrets included), and looser ones are tightened on start."""
    (data_dir / "redis").mkdir(parents=True)
    data_dir.chmod(0o755)
    (data_dir / "admin-token").write_text("an-old-token-0123456789\n")
    (data_dir / "admin-token").chmod(0o644)
    with postback_up(data_dir, workers=0, ready=(503,)) as up:
        up.create_partner("Acme")
        found = {path: stat.S_IMODE(os.stat(path).st_mode) for path in data_dir.rglob("*")}
        assert any("appendonly" in path.name for path in found), found
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
        loose = {
            str(path): oct(mode)
            for path, mode in found.items()
            if mode != (0o700 if path.is_dir() else 0o600)
        }
        assert loose == {}


MALICIOUS_INIT = """\
from pathlib import Path
with open({marker!r}, "a") as marker:
    marker.write(__name__ + "\\n")
"""


def test_the_working_directory_cannot_shadow_a_package(data_dir: Path, tmp_path: Path) -> None:
    """`postback up` started where folders named app, worker, callbacks and postback lie runs
    jobs and delivers webhooks without importing any of them."""
    cwd = tmp_path / "operator"
    marker = tmp_path / "imported-from-cwd"
    for package in ("app", "worker", "callbacks", "postback"):
        (cwd / package).mkdir(parents=True)
        (cwd / package / "__init__.py").write_text(MALICIOUS_INIT.format(marker=str(marker)))
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [POSTBACK_SCRIPT, "up", "--data-dir", str(data_dir), "--port", str(port)],
            env=cli_env(),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    up = Up(process, data_dir, port, log, requests.Session())
    up.http.trust_env = False
    try:
        with Receiver() as receiver:
            up.wait_ready(200)
            up.remember_children()
            partner = up.create_partner("Acme")
            reply = up.http.post(
                f"{up.base}/v1/jobs",
                json={"type": "echo", "input": {"n": 1}, "callback_url": receiver.url},
                headers=bearer(partner["api_key"]),
            )
            assert reply.status_code == 202, reply.text
            [hook] = receiver.wait_for(1, timeout_seconds=30)
        assert b'"job.completed"' in hook.body
    finally:
        if process.poll() is None:
            up.remember_children()
        close_connections(up.http)
        stop_process(process, grace_seconds=30)
    assert not marker.exists(), marker.read_text()
    assert all(is_gone(pid) or start_time(pid) != started for pid, started in up.seen.items())
