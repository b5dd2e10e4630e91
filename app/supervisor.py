"""`postback up`: the embedded Redis, the API and the workers, started and stopped together.

With `--replicas N` the embedded Redis is an HA set (`postback.ha`): a primary, N
replicas and three Sentinels, each restarted if it dies, and the API and the
workers reach its primary through the Sentinels.

One `postback up` per data dir: it holds `<data_dir>/up.lock` (an flock, with its
pid in the file) for as long as it runs, and a second one refuses to start. It
is a subreaper: whatever its children start is handed to it if they die, and it
stops all of it (workers' delivery and scheduler processes included) before it
stops Redis and exits.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path

from postback.children import Children, Strays, become_subreaper, die_with_parent, python_command
from postback.connection import Target, describe, redis_target, target_environ
from postback.embedded import EmbeddedRedis, make_private, write_private
from postback.ha import HaSet
from postback.settings import Settings

# Beyond what a worker takes to stop its delivery process (`delivery_timeout_seconds` + 5).
STOP_SECONDS = 7.0
STRAYS_EVERY_SECONDS = 2.0
LOCK_FILE = "up.lock"


class DataDirInUse(RuntimeError):
    """Another `postback up` holds the data dir; `pid` is its process id (None if unreadable)."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        super().__init__(
            f"data dir {data_dir} is in use: already running (pid {pid if pid else '?'})"
        )


class DataDirLock:
    """An exclusive flock on `<data_dir>/up.lock`, held while the object lives; the file says whose.

    The kernel releases it when the process dies, however it dies: a lock is never stale.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        # Not inherited by children (Python's default): the lock dies with this process.
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = self._holder()
            os.close(self.fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DataDirInUse(data_dir, holder) from None
            raise
        os.fchmod(self.fd, 0o600)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)

    def _holder(self) -> int | None:
        # The holder writes its pid just after it takes the lock: wait for it a little.
        deadline = time.monotonic() + 1.0
        while True:
            with contextlib.suppress(ValueError, OSError):
                return int(os.pread(self.fd, 32, 0).decode().strip())
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)


def port_problem(host: str, port: int) -> str | None:
    """Why the API could not listen on host:port (in use, not an address), or None."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror}"
    with socket.socket(family, kind, proto) as sock:
        # As gunicorn binds: a port left in TIME_WAIT is free, one with a listener is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            return f"cannot listen on {host}:{port}: {(exc.strerror or str(exc)).lower()}"
    return None


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        *,
        data_dir: Path,
        host: str,
        port: int,
        workers: int,
        replicas: int = 0,
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.workers = workers
        self.replicas = replicas
        self.stopping = False

    def admin_token(self) -> tuple[str, bool]:
        """(token, generated): `POSTBACK_ADMIN_TOKEN`, or one kept in the data dir."""
        if self.settings.admin_token:
            return self.settings.admin_token, False
        path = self.data_dir / "admin-token"
        if path.exists():
            return path.read_text().strip(), True
        token = secrets.token_urlsafe(32)
        write_private(path, token + "\n")
        return token, True

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; 1 at once, touching nothing, if data dir or port is in use."""
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            lock = DataDirLock(self.data_dir)
        except DataDirInUse as exc:
            print(f"postback: {exc}", file=sys.stderr)
            return 1
        try:
            problem = port_problem(self.host, self.port) or self.redis_problem()
            if problem is not None:
                print(f"postback: {problem}", file=sys.stderr)
                return 1
            return self._run()
        finally:
            lock.release()

    def external(self) -> bool:
        """Whether Redis is the operator's (`REDIS_URL` or `POSTBACK_REDIS_SENTINELS` set)."""
        return bool(self.settings.redis_url or self.settings.redis_sentinels)

    def redis_problem(self) -> str | None:
        """Why the Redis asked for cannot run on this data dir, or None."""
        if self.replicas and self.external():
            return (
                "--replicas runs an HA set of its own: REDIS_URL or POSTBACK_REDIS_SENTINELS is set"
            )
        recorded = None if self.external() else HaSet.find(self.data_dir)
        if recorded is not None and recorded.replicas != self.replicas:
            return (
                f"data dir {self.data_dir} holds an HA set with {recorded.replicas} replicas: "
                f"run `postback up --replicas {recorded.replicas}`"
            )
        return None

    def _run(self) -> int:
        make_private(self.data_dir)
        become_subreaper()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        token, generated = self.admin_token()
        embedded = ha = None
        target: Target
        if self.external():
            target = redis_target(self.settings)
            redis_line = f"{describe(target)} (external)"
        elif self.replicas:
            ha = HaSet(
                self.data_dir, replicas=self.replicas, maxmemory=self.settings.redis_maxmemory
            )
            ha.start()
            # The data dir's HA set runs now: its Sentinels are where clients find Redis.
            target = redis_target(self.settings)
            host, port = ha.primary() or ("?", "?")
            sentinels = ",".join(f"{h}:{p}" for h, p in ha.sentinels())
            redis_line = (
                f"embedded Valkey HA set: primary {host}:{port}, {self.replicas} replicas, "
                f"Sentinels {sentinels} (service {ha.service!r})"
            )
        else:
            embedded = EmbeddedRedis(self.data_dir, maxmemory=self.settings.redis_maxmemory)
            server = embedded.start()
            target = server.url
            how = "adopted a running server" if server.adopted else "started"
            redis_line = f"127.0.0.1:{server.port} (embedded Valkey, {how}, pid {server.pid})"
        env = {
            **os.environ,
            **target_environ(target),
            "POSTBACK_ADMIN_TOKEN": token,
            "POSTBACK_DATA_DIR": str(self.data_dir),
        }
        # This process has no other threads, so a preexec_fn is safe here. A worker
        # takes up to the delivery timeout and 5 s to stop its delivery process.
        children = Children(
            env,
            stop_seconds=self.settings.delivery_timeout_seconds + 5 + STOP_SECONDS,
            preexec_fn=die_with_parent,
        )
        api = python_command("app.cli", "serve", "--host", self.host, "--port", str(self.port))
        children.add("api", api)
        for number in range(1, self.workers + 1):
            children.add(f"worker-{number}", python_command("worker"))

        def keep(pid: int) -> bool:
            if pid in children.pids():
                return True
            return (embedded is not None and embedded.owns(pid)) or (
                ha is not None and ha.owns(pid)
            )

        strays = Strays(keep, grace_seconds=self.settings.delivery_timeout_seconds + 5)
        children.start()
        print(f"Postback is up (data dir {self.data_dir})", flush=True)
        print(f"  API:      http://{self.host}:{self.port}  (spec at /openapi.yaml)", flush=True)
        print(f"  Console:  http://{self.host}:{self.port}/console", flush=True)
        print(f"  Redis:    {redis_line}", flush=True)
        print(f"  Workers:  {self.workers}", flush=True)
        if generated:
            print(f"  Admin token (kept in {self.data_dir / 'admin-token'}): {token}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        swept_at = time.monotonic()
        reported: set[str] = set()
        try:
            while not self.stopping:
                children.supervise()
                if embedded is not None:
                    embedded = self._supervise_redis(embedded, server.port)
                if ha is not None:
                    self._supervise_ha(ha, reported)
                if time.monotonic() - swept_at >= STRAYS_EVERY_SECONDS:
                    # What a dead child left behind (a killed worker's children, say).
                    strays.sweep()
                    swept_at = time.monotonic()
                time.sleep(0.2)
        finally:
            children.stop()
            # Every process started below this one is gone before Redis stops.
            strays.stop_all()
            if embedded is not None:
                embedded.stop(wait_seconds=2.5)
            if ha is not None:
                ha.stop(wait_seconds=2.5)
            print("Postback stopped.", flush=True)
        return 0

    def _supervise_redis(self, embedded: EmbeddedRedis, port: int) -> EmbeddedRedis:
        """Restart a dead embedded server on the same port, from its AOF on the same data dir.

        Workers and the API reconnect by themselves: the URL they hold stays valid.
        """
        if embedded.alive():
            return embedded
        print(
            "postback: the embedded Redis died; restarting it from its append-only file",
            file=sys.stderr,
            flush=True,
        )
        restarted = EmbeddedRedis(self.data_dir, port=port, maxmemory=self.settings.redis_maxmemory)
        try:
            restarted.start()
        except Exception as exc:
            print(
                f"postback: restarting Redis failed ({exc}); trying again",
                file=sys.stderr,
                flush=True,
            )
        return restarted

    def _supervise_ha(self, ha: HaSet, reported: set[str]) -> None:
        """Restart the members of the HA set that died, each from its own config and AOF.

        A dead primary is restarted once the Sentinels have promoted a replica (it comes
        back as a replica); clients follow the primary through the Sentinels. `reported`
        holds the members whose death was said already.
        """
        dead = ha.dead()
        for name in sorted(set(dead) - reported):
            print(
                f"postback: Redis {name} died; restarting it (a primary once it is replaced)",
                file=sys.stderr,
                flush=True,
            )
        reported.clear()
        reported.update(dead)
        if not dead:
            return
        try:
            restarted = ha.restart_dead()
        except Exception as exc:
            print(f"postback: {exc}; trying again", file=sys.stderr, flush=True)
            return
        for name in restarted:
            print(f"postback: Redis {name} restarted", file=sys.stderr, flush=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
