"""The embedded Valkey server: start, adopt, stale pidfiles, persistence (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from postback.embedded import EmbeddedRedis
from postback.settings import Settings
from tests.processes import valkey_pids, wait_gone


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def test_start_runs_a_private_local_persistent_server(data_dir: Path) -> None:
    """start() runs a password-protected server on 127.0.0.1 with AOF, its files in the data dir."""
    embedded = EmbeddedRedis(data_dir)
    server = embedded.start()
    assert not server.adopted
    db = client(server.url)
    try:
        assert db.ping()
        assert db.config_get("bind")["bind"] == "127.0.0.1"
        assert db.config_get("appendonly")["appendonly"] == "yes"
        assert Path(db.config_get("dir")["dir"]).resolve() == (data_dir / "redis").resolve()
        pid = int((data_dir / "redis" / "valkey.pid").read_text().strip())
        assert pid == server.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
        assert str(data_dir) in cmdline
        # No retries: redis-py would otherwise retry the auth error as a connection error.
        anonymous = redis.Redis(
            host="127.0.0.1", port=server.port, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(redis.AuthenticationError):
                anonymous.ping()
        finally:
            anonymous.close()
    finally:
        db.close()
        embedded.stop()
    assert wait_gone([server.pid], 5.0) == []


def test_second_start_adopts_the_running_server(data_dir: Path) -> None:
    """A second start adopts the running server instead of starting another."""
    first = EmbeddedRedis(data_dir).start()
    second = EmbeddedRedis(data_dir).start()
    assert second.adopted
    assert second.pid == first.pid
    assert second.url == first.url
    assert valkey_pids(data_dir) == [first.pid]


@pytest.mark.parametrize("stale", ["own-pid", "dead-pid"])
def test_stale_pidfile_does_not_prevent_start(data_dir: Path, stale: str) -> None:
    """A pidfile naming a process that is not this data dir's server is ignored and replaced."""
    if stale == "own-pid":
        pid = os.getpid()
    else:
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=10)
        pid = dead.pid
    (data_dir / "redis").mkdir(parents=True)
    (data_dir / "redis" / "valkey.pid").write_text(f"{pid}\n")
    embedded = EmbeddedRedis(data_dir)
    assert embedded.running() is None
    server = embedded.start()
    assert not server.adopted
    assert server.pid != pid
    db = client(server.url)
    try:
        assert db.ping()
    finally:
        db.close()
    assert valkey_pids(data_dir) == [server.pid]
    assert int((data_dir / "redis" / "valkey.pid").read_text().strip()) == server.pid


def test_data_survives_a_restart(data_dir: Path) -> None:
    """Data written before stop() is there after a new start() on the same data dir (AOF)."""
    embedded = EmbeddedRedis(data_dir)
    first = embedded.start()
    db = client(first.url)
    db.set("pb:test:key", "kept")
    db.close()
    embedded.stop()
    assert wait_gone([first.pid], 5.0) == []

    second = EmbeddedRedis(data_dir).start()
    assert not second.adopted
    assert second.pid != first.pid
    db = client(second.url)
    try:
        assert db.get("pb:test:key") == b"kept"
    finally:
        db.close()


def test_the_server_has_a_memory_bound_and_never_evicts(data_dir: Path) -> None:
    """The embedded server runs with the maxmemory it is given and maxmemory-policy noeviction."""
    embedded = EmbeddedRedis(data_dir, maxmemory="64mb")
    server = embedded.start()
    db = client(server.url)
    try:
        assert db.config_get("maxmemory")["maxmemory"] == str(64 * 1024 * 1024)
        assert db.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    finally:
        db.close()
        embedded.stop()
    assert EmbeddedRedis(data_dir).maxmemory == Settings().redis_maxmemory == "1gb"
