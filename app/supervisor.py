"""`postback up`: the embedded Redis, the API and the workers, started and stopped together."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from postback.embedded import EmbeddedRedis, write_private
from postback.settings import Settings

STOP_SECONDS = 7.0
RESTART_MAX_SECONDS = 30.0


def _die_with_parent() -> None:
    """In the child: get SIGTERM if `postback up` dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(
        self, settings: Settings, *, data_dir: Path, host: str, port: int, workers: int
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.workers = workers
        self.children: list[Child] = []
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
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        token, generated = self.admin_token()
        embedded = None
        if self.settings.redis_url:
            url, redis_line = self.settings.redis_url, "REDIS_URL (external)"
        else:
            embedded = EmbeddedRedis(self.data_dir)
            server = embedded.start()
            url = server.url
            how = "adopted a running server" if server.adopted else "started"
            redis_line = f"127.0.0.1:{server.port} (embedded Valkey, {how}, pid {server.pid})"
        env = {
            **os.environ,
            "REDIS_URL": url,
            "POSTBACK_ADMIN_TOKEN": token,
            "POSTBACK_DATA_DIR": str(self.data_dir),
        }
        me = [sys.executable, "-m", "app.cli"]
        self.children.append(
            Child("api", [*me, "serve", "--host", self.host, "--port", str(self.port)])
        )
        for number in range(1, self.workers + 1):
            self.children.append(Child(f"worker-{number}", [*me, "worker"]))
        for child in self.children:
            self._start(child, env)
        print(f"Postback is up (data dir {self.data_dir})", flush=True)
        print(f"  API:      http://{self.host}:{self.port}  (spec at /openapi.yaml)", flush=True)
        print(f"  Redis:    {redis_line}", flush=True)
        print(f"  Workers:  {self.workers}", flush=True)
        if generated:
            print(f"  Admin token (kept in {self.data_dir / 'admin-token'}): {token}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not self.stopping:
                self._supervise(env)
                if embedded is not None:
                    embedded = self._supervise_redis(embedded, server.port)
                time.sleep(0.2)
        finally:
            self._stop_children()
            if embedded is not None:
                embedded.stop(wait_seconds=2.5)
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
        restarted = EmbeddedRedis(self.data_dir, port=port)
        try:
            restarted.start()
        except Exception as exc:
            print(
                f"postback: restarting Redis failed ({exc}); trying again",
                file=sys.stderr,
                flush=True,
            )
        return restarted

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _start(self, child: Child, env: dict[str, str]) -> None:
        child.process = subprocess.Popen(
            child.command, env=env, start_new_session=True, preexec_fn=_die_with_parent
        )
        child.started_at = time.monotonic()

    def _supervise(self, env: dict[str, str]) -> None:
        """Restart any child that died, with a growing pause between restarts."""
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at == 0.0:
                if now - child.started_at > 60:
                    child.restarts = 0
                delay = min(RESTART_MAX_SECONDS, 0.5 * 2**child.restarts)
                print(
                    f"postback: {child.name} exited with {child.process.returncode}; "
                    f"restarting in {delay:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                child.restart_at = now + delay
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                self._start(child, env)

    def _stop_children(self) -> None:
        live = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
