"""A worker and its delivery process, with real processes: restarted, stopped, never orphaned."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.processes import eventually, is_gone, postback_worker


def child_processes(worker_pid: int, *, named: bytes = b"") -> list[int]:
    """Live processes whose parent is `worker_pid` and whose command line holds `named`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # Fields after the command name in parentheses: state, ppid, ...
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == worker_pid and state != "Z" and named in b" ".join(command):
            found.append(int(entry.name))
    return found


def delivery_processes(worker_pid: int) -> list[int]:
    """Live delivery processes whose parent is `worker_pid`."""
    return child_processes(worker_pid, named=b"worker.deliver")


def submit(client, partner, receiver, number: int) -> None:
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {"n": number}, "callback_url": receiver.url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202, reply.json


def test_a_killed_delivery_process_is_restarted(client, partner, redis_url, receiver):
    """SIGKILL a worker's delivery process: the worker starts another and webhooks still arrive."""
    with postback_worker(redis_url) as worker:
        (first,) = eventually(
            lambda: delivery_processes(worker.pid), timeout_seconds=20, what="a delivery process"
        )
        submit(client, partner, receiver, 1)
        receiver.wait_for(1, timeout_seconds=20)
        os.kill(first, signal.SIGKILL)
        (second,) = eventually(
            lambda: [p for p in delivery_processes(worker.pid) if p != first],
            timeout_seconds=20,
            what="a new delivery process",
        )
        submit(client, partner, receiver, 2)
        received = receiver.wait_for(2, timeout_seconds=20)
    assert second != first
    assert [b'"n":1' in r.body for r in received] == [True, False]
    assert is_gone(second), "stopping the worker stops its delivery process"


def test_a_sigkilled_worker_leaves_no_child_behind(redis_url, redis_client):
    """SIGKILL a worker: its delivery process and RQ scheduler stop too, not live on as orphans."""
    with postback_worker(redis_url) as worker:
        (delivery,) = eventually(
            lambda: delivery_processes(worker.pid), timeout_seconds=20, what="a delivery process"
        )
        (scheduler,) = eventually(
            lambda: child_processes(worker.pid, named=b"worker.scheduler"),
            timeout_seconds=20,
            what="a scheduler process",
        )
        os.kill(worker.pid, signal.SIGKILL)
        eventually(lambda: is_gone(delivery), timeout_seconds=20, what="the delivery process stops")
        eventually(lambda: is_gone(scheduler), timeout_seconds=20, what="the scheduler stops")
