"""The `postback` command, run as real processes: up, partners create, worker."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from standardwebhooks.webhooks import Webhook

from postback.embedded import free_port
from tests.helpers import bearer, close_connections
from tests.processes import (
    POSTBACK,
    cli_env,
    eventually,
    is_gone,
    stop_process,
    valkey_pids,
    wait_gone,
)
from tests.receiver import Receiver

READY_SECONDS = 30.0


def start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (tells a pid from a later reuse), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except OSError:
        return None


def descendants(root: int) -> dict[int, str]:
    """Every live process below `root`, as pid -> start time."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[-1].split()[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and (started := start_time(pid)):
                found[pid] = started
                frontier.append(pid)
    return found


def is_valkey(pid: int) -> bool:
    try:
        return b"valkey-server" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    except OSError:
        return False


@dataclass
class Up:
    """A running `postback up` and what the test saw of it."""

    process: subprocess.Popen
    data_dir: Path
    port: int
    log: Path
    http: requests.Session
    seen: dict[int, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def remember_children(self) -> dict[int, str]:
        """Record the processes below `postback up` now (for cleanup and assertions)."""
        now = descendants(self.process.pid)
        self.seen.update(now)
        return now

    def readyz(self) -> int | None:
        # A probe's connection is not kept alive: left open, it would hold an API process
        # for its graceful timeout when `postback up` stops.
        try:
            return self.http.get(
                f"{self.base}/readyz", timeout=2, headers={"Connection": "close"}
            ).status_code
        except requests.RequestException:
            return None

    def wait_ready(self, *statuses: int) -> int:
        """Wait until /readyz answers one of `statuses`; fail early if `postback up` exits."""

        def probe() -> int | None:
            assert self.process.poll() is None, f"postback up exited:\n{self.output()}"
            status = self.readyz()
            return status if status in statuses else None

        return eventually(probe, timeout_seconds=READY_SECONDS, what=f"/readyz in {statuses}")

    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def create_partner(self, name: str) -> dict[str, Any]:
        reply = self.http.post(
            f"{self.base}/v1/admin/partners",
            json={"name": name},
            headers=bearer(self.admin_token()),
        )
        assert reply.status_code == 201, reply.text
        return reply.json()

    def valkey_pid(self) -> int:
        return int((self.data_dir / "redis" / "valkey.pid").read_text().strip())


@contextlib.contextmanager
def postback_up(
    data_dir: Path,
    *,
    workers: int = 1,
    ready: tuple[int, ...] = (200,),
    args: tuple[str, ...] = (),
) -> Iterator[Up]:
    """`postback up [args]` on a free port of 127.0.0.1, stopped with everything it started."""
    port = free_port()
    log = data_dir.parent / f"up-{port}.log"
    command = [*POSTBACK, "up", "--data-dir", str(data_dir), "--port", str(port)]
    command += ["--workers", str(workers), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=cli_env(), cwd=data_dir.parent, stdout=out, stderr=subprocess.STDOUT
        )
    up = Up(process, data_dir, port, log, requests.Session())
    up.http.trust_env = False
    try:
        up.wait_ready(*ready)
        up.remember_children()
        yield up
    finally:
        if process.poll() is None:
            up.remember_children()
        # The test's kept-alive connections closed first, as a client done with the API
        # closes them: one left open holds an API process for its graceful timeout.
        close_connections(up.http)
        stop_process(process, grace_seconds=15)
        # Whatever outlived it (the embedded server aside: the data dir's fixture owns it).
        for pid, started in up.seen.items():
            if start_time(pid) == started and not is_valkey(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_up_runs_a_job_and_delivers_a_signed_webhook(data_dir: Path) -> None:
    """Through `postback up`, an echo job completes and its callback arrives, verifiably signed."""
    with Receiver() as receiver, postback_up(data_dir) as up:
        partner = up.create_partner("Acme")
        reply = up.http.post(
            f"{up.base}/v1/jobs",
            json={"type": "echo", "input": {"hello": "world"}, "callback_url": receiver.url},
            headers=bearer(partner["api_key"]),
        )
        assert reply.status_code == 202, reply.text
        location = reply.headers["Location"]

        [hook] = receiver.wait_for(1, timeout_seconds=15)
        payload = Webhook(partner["signing_secret"]).verify(hook.body, hook.headers)
        assert payload["type"] == "job.completed"
        assert payload["data"]["result"] == {"hello": "world"}
        assert hook.headers["user-agent"].startswith("Postback/")
        assert hook.headers["content-type"] == "application/json"

        def delivered() -> dict[str, Any] | None:
            job = up.http.get(location, headers=bearer(partner["api_key"])).json()
            return job if job.get("delivery", {}).get("status") == "delivered" else None

        job = eventually(delivered, timeout_seconds=15, what="delivery.status == delivered")
        assert job["status"] == "completed"
        assert len(receiver.received) == 1


def test_sigterm_stops_every_child_and_the_embedded_server(data_dir: Path) -> None:
    """SIGTERM to `postback up` stops the API, the workers and the embedded server within 10 s."""
    with postback_up(data_dir) as up:
        valkey = up.valkey_pid()
        children = up.remember_children()
        assert valkey in children
        assert len(children) >= 3, children  # the server, the API, a worker (and API workers)
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=10) == 0, up.output()
        assert wait_gone(list(children), 2.0) == []
        assert valkey_pids(data_dir) == []


def test_sigkilled_up_leaves_its_server_for_the_next_up_to_adopt(data_dir: Path) -> None:
    """After `postback up` dies by SIGKILL, the next one adopts its server, data and all."""
    with postback_up(data_dir) as first:
        partner = first.create_partner("Acme")
        valkey = first.valkey_pid()
        first.remember_children()
        first.process.kill()
        first.process.wait(timeout=10)
    assert not is_gone(valkey)
    assert valkey_pids(data_dir) == [valkey]

    with postback_up(data_dir) as second:
        assert second.valkey_pid() == valkey
        assert valkey_pids(data_dir) == [valkey]
        assert f"adopted a running server, pid {valkey}" in second.output()
        reply = second.http.get(f"{second.base}/v1/jobs", headers=bearer(partner["api_key"]))
        assert reply.status_code == 200, reply.text


def test_partners_create_finds_the_running_system(data_dir: Path, tmp_path: Path) -> None:
    """`postback partners create` works through REDIS_URL or the data dir, printing usable keys."""
    with postback_up(data_dir) as up:
        url = json.loads((data_dir / "redis" / "server.json").read_text())["url"]
        for name, env in [
            ("Via-URL", cli_env(REDIS_URL=url)),
            ("Via-Data-Dir", cli_env(POSTBACK_DATA_DIR=str(data_dir))),
        ]:
            done = subprocess.run(
                [*POSTBACK, "partners", "create", name],
                env=env,
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert done.returncode == 0, done.stderr
            partner = json.loads(done.stdout)
            assert partner["name"] == name
            assert partner["id"] and partner["api_key"]
            secret = partner["signing_secret"]
            assert secret.startswith("whsec_")
            assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) >= 24
            reply = up.http.get(f"{up.base}/v1/jobs", headers=bearer(partner["api_key"]))
            assert reply.status_code == 200, reply.text


def test_worker_joins_a_system_through_its_data_dir(data_dir: Path, tmp_path: Path) -> None:
    """`postback worker` finds the embedded server by data dir, makes /readyz 200 and runs jobs."""
    with postback_up(data_dir, workers=0, ready=(200, 503)) as up:
        assert up.readyz() == 503
        partner = up.create_partner("Acme")
        with (tmp_path / "worker.log").open("wb") as out:
            worker = subprocess.Popen(
                [*POSTBACK, "worker"],
                env=cli_env(POSTBACK_DATA_DIR=str(data_dir)),
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            up.wait_ready(200)
            reply = up.http.post(
                f"{up.base}/v1/jobs",
                json={"type": "echo", "input": {"n": 1}},
                headers=bearer(partner["api_key"]),
            )
            assert reply.status_code == 202, reply.text
            location = reply.headers["Location"]

            def completed() -> dict[str, Any] | None:
                job = up.http.get(location, headers=bearer(partner["api_key"])).json()
                return job if job["status"] == "completed" else None

            job = eventually(completed, timeout_seconds=15, what="the job completes")
            assert job["result"] == {"n": 1}
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0, (tmp_path / "worker.log").read_text()
        finally:
            stop_process(worker, grace_seconds=5)
