"""`postback up`: the embedded Redis, the API and the workers, started and stopped together."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

from postback.children import Children, die_with_parent
from postback.embedded import EmbeddedRedis, write_private
from postback.settings import Settings

STOP_SECONDS = 7.0


class Supervisor:
    def __init__(
        self, settings: Settings, *, data_dir: Path, host: str, port: int, workers: int
    ) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.workers = workers
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
            embedded = EmbeddedRedis(self.data_dir, maxmemory=self.settings.redis_maxmemory)
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
        # This process has no other threads, so a preexec_fn is safe here.
        children = Children(env, stop_seconds=STOP_SECONDS, preexec_fn=die_with_parent)
        children.add("api", [*me, "serve", "--host", self.host, "--port", str(self.port)])
        for number in range(1, self.workers + 1):
            children.add(f"worker-{number}", [*me, "worker"])
        children.start()
        print(f"Postback is up (data dir {self.data_dir})", flush=True)
        print(f"  API:      http://{self.host}:{self.port}  (spec at /openapi.yaml)", flush=True)
        print(f"  Redis:    {redis_line}", flush=True)
        print(f"  Workers:  {self.workers}", flush=True)
        if generated:
            print(f"  Admin token (kept in {self.data_dir / 'admin-token'}): {token}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        try:
            while not self.stopping:
                children.supervise()
                if embedded is not None:
                    embedded = self._supervise_redis(embedded, server.port)
                time.sleep(0.2)
        finally:
            children.stop()
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

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stopping = True
