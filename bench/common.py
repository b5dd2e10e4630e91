"""What the benchmarks share: an embedded Redis of their own, a clean environment, processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from postback.embedded import EmbeddedRedis
from postback.ha import HaSet
from postback.ha_view import Role
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


@contextlib.contextmanager
def replicated_redis(
    replicas: int, data_parent: str | None = ".", *, replica_appendfsync: str = "always"
) -> Iterator[tuple[str, Path]]:
    """As `embedded_redis`, the URL being the primary of an HA set with `replicas` replicas
    (`postback.ha`), once each of them confirms its fsyncs; with `replica_appendfsync`."""
    data = Path(tempfile.mkdtemp(prefix=".postback-bench-", dir=data_parent))
    ha = HaSet(data, replicas=replicas)
    try:
        ha.start()
        url = ""
        for member in ha.members():
            member_url = f"redis://:{ha.data_password}@{member.host}:{member.port}/0"
            if member.role == Role.REPLICA:
                redis.Redis.from_url(member_url).config_set("appendfsync", replica_appendfsync)
            elif member.role == Role.PRIMARY:
                url = member_url
        primary = redis.Redis.from_url(url)
        deadline = time.monotonic() + 60
        while not _confirmed(primary, replicas):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{replicas} replica(s) did not confirm fsyncs within 60 s")
            time.sleep(0.2)
        yield url, data
    finally:
        ha.stop()
        shutil.rmtree(data, ignore_errors=True)


def _confirmed(client: redis.Redis, replicas: int) -> bool:
    """Whether a write made now is fsynced on the primary and `replicas` replicas within 1 s."""
    pipe = client.pipeline(transaction=False)
    pipe.incr("bench:mark")
    pipe.execute_command("WAITAOF", 1, replicas, 1000)
    _, (local, fsynced) = pipe.execute()
    return bool(local >= 1 and fsynced >= replicas)


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
    ).id


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


# Ports this far below the start of the kernel's ephemeral range are never handed
# to an outgoing connection, so a block of them stays free for a receiver.
_LOWEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port_block(count: int, *, attempts: int = 20) -> list[int]:
    """`count` contiguous ports, all free on 127.0.0.1 when checked, outside the ephemeral range.

    A block starts at a random port between 10,000 and the ephemeral range's
    start (above its end if there is no room below), and every port of it is
    bound at once to check it; a block with a port in use is given up for
    another. The ports are released before this returns (a receiver binds
    them with SO_REUSEADDR). Raises RuntimeError after `attempts` blocks.
    """
    import random
    import socket

    low, high = _ephemeral_range()
    if low - _LOWEST_PORT >= count:
        first, last = _LOWEST_PORT, low - count
    else:
        first, last = high + 1, 65536 - count
    if last < first:
        raise RuntimeError(f"no room for {count} contiguous ports outside {low}-{high}")
    for _ in range(attempts):
        start = random.randint(first, last)
        sockets: list[socket.socket] = []
        try:
            for port in range(start, start + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return list(range(start, start + count))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports found in {attempts} tries")


def port_list(ports: list[int]) -> str:
    """`ports` as `bench.receiver` takes them: "9001-9010" for a contiguous block, else "a,b,c"."""
    if len(ports) > 1 and ports == list(range(ports[0], ports[0] + len(ports))):
        return f"{ports[0]}-{ports[-1]}"
    return ",".join(map(str, ports))


@contextlib.contextmanager
def receiver(
    arguments: list[str], stderr: Path, *, ready_seconds: float = 30.0
) -> Iterator[subprocess.Popen]:
    """A `python -m bench.receiver` process with `arguments`, from its "ready" to its stop.

    It runs in its own process group with this process's clean environment and
    is stopped (`stop_group`) on the way out, whatever happens. Raises
    RuntimeError, with the receiver stopped, if it does not print "ready"
    within `ready_seconds`.
    """
    import select
    import sys

    with stderr.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver", *arguments],
            env=clean_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], ready_seconds)
        line = process.stdout.readline() if readable else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"the receiver is not ready ({line!r}):\n{tail(stderr)}")
        yield process
    finally:
        stop_group(process)
        if process.stdout is not None:
            process.stdout.close()


def peak_rss_mib(pid: int) -> float:
    """The peak resident set size of the live process `pid` (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
