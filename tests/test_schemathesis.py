"""Property-based tests from openapi.yaml: schemathesis fuzzes every operation of the app.

Each operation gets the spec's examples, schemathesis's coverage cases and a bounded
number of random valid and invalid requests, once as a partner and once as the admin.
Every response must be a non-5xx that the spec documents: its status code, its content
type and its body's schema. Callback URLs the fuzzer invents are refused with 422, as
their host names resolve to nothing here.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import hypothesis
import pytest
import redis
import schemathesis
from flask import Flask
from rq import SimpleWorker, Worker
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app import create_app
from postback.settings import Settings
from worker import liveness, runtime
from worker.jobs import QUEUE_NAME
from worker.process import dispatcher, queues

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
# Random examples per operation and generation mode, on top of examples and coverage cases.
MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def resolves_nothing(host: str, port: int) -> list[str]:
    """A resolver for which no host name exists: no lookup leaves the machine."""
    return []


@pytest.fixture
def fuzz_settings(settings: Settings) -> Settings:
    """A rate limit the fuzzer cannot reach, so that 429s do not hide the rest; one attempt
    per webhook, so that a failed delivery is a dead letter at once."""
    return dataclasses.replace(settings, rate_limit="100000/second", retry_max_attempts=1)


@pytest.fixture
def fuzzed_app(fuzz_settings: Settings, redis_client: redis.Redis) -> Iterator[Flask]:
    """The app, with a worker registered (it runs nothing) so that /readyz answers 200."""
    worker = Worker([QUEUE_NAME], connection=redis_client)
    worker.register_birth()
    # Its liveness heartbeat, kept up for as long as the fuzzing lasts.
    stop = threading.Event()
    beat = threading.Thread(
        target=liveness.run, args=(redis_client, worker.name, stop), daemon=True
    )
    beat.start()
    app = create_app(
        dataclasses.asdict(fuzz_settings), client=redis_client, resolver=resolves_nothing
    )
    # Waits and streams answer at once, as in a server that is stopping: a fuzzed feed
    # cursor past every event would otherwise wait out its `wait`, and a stream never end.
    app.extensions["postback"].hub.stop()
    yield app
    stop.set()
    beat.join()
    liveness.gone(redis_client, worker.name)
    worker.register_death()


@pytest.fixture
def partner_headers(
    fuzzed_app: Flask,
    fuzz_settings: Settings,
    redis_client: redis.Redis,
    admin_headers: dict[str, str],
) -> dict[str, str]:
    """A partner made through the admin API, with jobs; its bearer header.

    So that lists are not empty: a second, disabled partner, and jobs that completed
    (one with a result too large to inline, so it has a `result_url`), failed, were
    cancelled, and whose webhook died (dead letters, and failures on their circuit).
    """
    client = fuzzed_app.test_client()
    created = [
        client.post("/v1/admin/partners", json={"name": name}, headers=admin_headers)
        for name in ("Fuzz", "Gone")
    ]
    assert [reply.status_code for reply in created] == [201, 201]
    gone = client.delete(f"/v1/admin/partners/{created[1].json['id']}", headers=admin_headers)
    assert gone.status_code == 204
    headers = {"Authorization": f"Bearer {created[0].json['api_key']}"}
    jobs = [
        {"type": "echo", "input": {"n": 1}},
        {"type": "test.fail", "input": {"quota": 3}},
        # Nothing listens on the discard port: the one attempt fails and the webhook dies.
        {"type": "echo", "callback_url": "http://127.0.0.1:9/hook"},
        {"type": "echo", "input": {"blob": "x" * (fuzz_settings.inline_result_bytes + 1)}},
        {"type": "echo", "priority": "low", "timeout_seconds": 30},
    ]
    for job in jobs:
        assert client.post("/v1/jobs", json=job, headers=headers).status_code == 202
    doomed = {"type": "echo", "priority": "high", "callback_url": "http://127.0.0.1:9/hook"}
    submitted = client.post("/v1/jobs", json=doomed, headers=headers)
    cancelled = client.post(f"/v1/jobs/{submitted.json['id']}/cancel", headers=headers)
    assert (cancelled.status_code, cancelled.json["status"]) == (200, "cancelled")
    runtime.configure(fuzz_settings)
    SimpleWorker(queues(redis_client), connection=redis_client).work(burst=True)
    completed = client.get("/v1/jobs?status=completed", headers=headers).json["items"]
    links = [job["result_url"] for job in completed if "result_url" in job]
    assert len(links) == 1
    assert client.get(urlsplit(links[0]).path).status_code == 200
    dispatcher(fuzz_settings, redis_client).drain(max_rounds=1)
    return headers


# Loaded once at import; each test binds it to its own app (and its own Redis data).
# No example database: no failing examples are saved under .hypothesis/ (git-ignored).
schema = schemathesis.openapi.from_path(SPEC_PATH)
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")
# The app and its Redis data are made once per operation and shared by its examples, on purpose.
shared_fixtures = hypothesis.settings(
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture]
)


@schema.parametrize()
@shared_fixtures
def test_api_conforms_as_partner(
    case: schemathesis.Case, fuzzed_app: Flask, partner_headers: dict[str, str]
) -> None:
    """With a partner's API key, no request makes a 5xx or an undocumented response."""
    case.call_and_validate(app=fuzzed_app, headers=partner_headers, checks=CHECKS)


@schema.parametrize()
@shared_fixtures
@pytest.mark.usefixtures("partner_headers")
def test_api_conforms_as_admin(
    case: schemathesis.Case, fuzzed_app: Flask, admin_headers: dict[str, str]
) -> None:
    """With the admin token, no request makes a 5xx or an undocumented response."""
    case.call_and_validate(app=fuzzed_app, headers=admin_headers, checks=CHECKS)
