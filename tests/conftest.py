"""Fixtures: a real embedded Redis for the session, flushed per test; the app; receivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import SimpleWorker

from app import create_app
from callbacks.outbox import Outbox
from callbacks.secrets import SecretStore
from callbacks.signing import generate_secret
from postback.embedded import EmbeddedRedis
from postback.settings import Settings
from tests.helpers import SECRET_OWNER
from tests.processes import kill_valkeys
from tests.receiver import Receiver
from worker import reaper, runtime
from worker.process import dispatcher, queues

ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Valkey server (the binary `postback up` runs) for the whole session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-data"))
    url = server.start().url
    yield url
    server.stop()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url=redis_url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    """Settings for in-process tests: short retries, the test admin token."""
    return Settings.from_env(
        {},
        redis_url=redis_url,
        data_dir=tmp_path,
        admin_token=ADMIN_TOKEN,
        retry_base_seconds=0.01,
        retry_max_seconds=0.05,
        retry_max_attempts=3,
        delivery_timeout_seconds=2.0,
        handler_modules=("tests.handlers",),
        # Receivers in tests listen on loopback, which callback URLs may not reach otherwise.
        callback_allow_cidrs=("127.0.0.0/8",),
        # The embedded test server fsyncs every second; tests need no durable acknowledgement.
        durability="everysec",
        job_lease_seconds=1.5,
        job_retry_base_seconds=0.05,
        job_retry_max_seconds=0.1,
    )


@pytest.fixture
def app(settings: Settings, redis_client: redis.Redis) -> Flask:
    from dataclasses import asdict

    return create_app(asdict(settings), client=redis_client)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def partner(client: FlaskClient, admin_headers: dict[str, str]) -> dict[str, Any]:
    """A partner created through the admin API, with `headers` to act as it."""
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    assert reply.status_code == 201
    return {**reply.json, "headers": {"Authorization": f"Bearer {reply.json['api_key']}"}}


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh data dir; no valkey-server of it survives the test."""
    path = (tmp_path / "data").resolve()
    try:
        yield path
    finally:
        kill_valkeys(path)


@pytest.fixture
def outbox(redis_client: redis.Redis) -> Outbox:
    """The outbox on the test Redis; `SECRET_OWNER` has a signing secret (`outbox.secret`)."""
    secret = generate_secret()
    SecretStore(redis_client).set(SECRET_OWNER, secret)
    box = Outbox(redis_client)
    box.secret = secret  # type: ignore[attr-defined]
    return box


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def work(settings: Settings, redis_client: redis.Redis):
    """One reaper pass, the queued jobs (a burst SimpleWorker), then every delivery due now."""

    def run(*, deliveries: bool = True) -> None:
        runtime.configure(settings)
        reaper.reap(runtime.job_store(redis_client, settings), settings)
        SimpleWorker(queues(redis_client), connection=redis_client).work(burst=True)
        if deliveries:
            dispatcher(settings, redis_client).drain()

    return run
