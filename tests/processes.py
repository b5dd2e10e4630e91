"""Helpers for tests that start and stop real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import redis

from postback.embedded import EmbeddedRedis, RunningServer, free_port

POSTBACK = [sys.executable, "-m", "app.cli"]


def valkey_pids(data_dir: Path) -> list[int]:
    """Pids of the valkey-server processes whose command line names `data_dir`."""
    needle = str(Path(data_dir).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if args and "valkey-server" in args[0] and any(needle in arg for arg in args):
            found.append(int(entry.name))
    return found


def is_gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def wait_gone(pids: list[int], timeout_seconds: float) -> list[int]:
    """Wait until every pid has exited; the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while (alive := [pid for pid in pids if not is_gone(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def kill_valkeys(data_dir: Path) -> None:
    """Stop every valkey-server of `data_dir`: SIGTERM, then SIGKILL after a few seconds."""
    pids = valkey_pids(data_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in wait_gone(pids, 5.0):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_gone(pids, 5.0)


def cli_env(**extra: str) -> dict[str, str]:
    """This environment without REDIS_URL, the admin token or the data dir, plus `extra`."""
    env = dict(os.environ)
    for name in ("REDIS_URL", "POSTBACK_ADMIN_TOKEN", "POSTBACK_DATA_DIR"):
        env.pop(name, None)
    env["POSTBACK_CALLBACK_ALLOW_CIDRS"] = "127.0.0.0/8"
    env.update(extra)
    return env


def stop_process(process: subprocess.Popen, *, grace_seconds: float) -> None:
    """SIGTERM, then SIGKILL after `grace_seconds`; always reaped."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=10)


def eventually(probe: Callable[[], Any], *, timeout_seconds: float, what: str) -> Any:
    """The first truthy result of `probe`, polled until the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = probe()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_seconds} s: {what}"
        time.sleep(0.1)


@contextlib.contextmanager
def postback_worker(
    redis_url: str, *, stderr: IO[bytes] | None = None, **env: str
) -> Iterator[subprocess.Popen]:
    """A `postback worker` process on `redis_url` with the test handlers, stopped at the end."""
    settings = {"POSTBACK_HANDLER_MODULES": "tests.handlers", "POSTBACK_DURABILITY": "everysec"}
    process = subprocess.Popen(
        [*POSTBACK, "worker"],
        env=cli_env(REDIS_URL=redis_url, **{**settings, **env}),
        stderr=stderr,
    )
    try:
        yield process
    finally:
        stop_process(process, grace_seconds=10)


class OwnRedis:
    """A Redis server of one test's own, which it may freeze, break or restart.

    The session's server is shared; a test that stops or damages a server uses one of these.
    """

    def __init__(self, data_dir: Path) -> None:
        self.embedded = EmbeddedRedis(data_dir, port=free_port())
        self.running: RunningServer = self.embedded.start()

    @property
    def url(self) -> str:
        return self.running.url

    def client(self) -> redis.Redis:
        """A plain client of this server, for the test's own commands."""
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=10)

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server SIGSTOPped inside the block: it accepts connections and answers nothing."""
        os.kill(self.running.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.running.pid, signal.SIGCONT)

    def restart(self) -> None:
        """SIGKILL the server and start it again on the same port, from the same data dir."""
        os.kill(self.running.pid, signal.SIGKILL)
        wait_gone([self.running.pid], 10.0)
        self.running = self.embedded.start()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.running.pid, signal.SIGCONT)
        self.embedded.stop(wait_seconds=2.0)
        kill_valkeys(self.embedded.data_dir)


@contextlib.contextmanager
def own_redis(data_dir: Path) -> Iterator[OwnRedis]:
    """A dedicated server for the block, stopped (whatever state it is in) at the end."""
    server = OwnRedis(data_dir)
    try:
        yield server
    finally:
        server.stop()
