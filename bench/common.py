"""What the benchmarks share: an embedded Redis of their own, a clean environment, processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from postback.embedded import EmbeddedRedis
from worker.jobs import JobStore

ROOT = Path(__file__).resolve().parent.parent
OWNER = "ptn_bench"


@contextlib.contextmanager
def embedded_redis(data_parent: str | None = ".") -> Iterator[tuple[str, Path]]:
    """(URL, data dir) of an embedded Redis on a fresh data dir, stopped and removed at the end.

    The data dir goes under `data_parent` (default: the working directory's
    disk, where fsync costs what it costs `postback up`, not a tmpfs where it
    costs nothing); None puts it in the system's temporary directory.
    """
    data = Path(tempfile.mkdtemp(prefix=".postback-bench-", dir=data_parent))
    server = EmbeddedRedis(data)
    try:
        yield server.start().url, data
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Postback's settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTBACK_")}
    env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """`command` in its own process group (for `stop_group`), its stderr to `log`."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            command,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )


def submit(
    store: JobStore, input: dict, *, type: str = "echo", callback_url: str | None = None
) -> str:
    """A job of the bench's partner created straight in the store; its id."""
    return store.create(
        partner_id=OWNER, type=type, input=input, callback_url=callback_url, timeout_seconds=60
    )["id"]


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group (a server's master and workers), SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
    # Children outliving their leader would go on their own; do not leave them to it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def tail(log: Path) -> str:
    """The last 20 lines of a log, for an error message."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:])
