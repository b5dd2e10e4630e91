"""openapi.yaml generates a client that works: every operation, driven through it, end to end.

`openapi-python-client` generates a Python client from the spec (once per module, failing on
any warning); the test imports it and drives every operation of the spec through it against
`postback serve` and a `postback worker` on a real Redis, with real HTTP receivers for the
webhooks, asserting on the typed responses it parses. The operation ids are read from the
spec, so an operation added later fails the test until it is driven here too.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import yaml
from standardwebhooks.webhooks import Webhook

from tests.conftest import ADMIN_TOKEN
from tests.processes import eventually, postback_worker
from tests.receiver import Receiver, Reply
from tests.test_serving import postback_serve

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
PACKAGE = "postback_api_client"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Generous: bounds waits for things that take well under a second.
SETTLE_SECONDS = 30.0
# Results over this many bytes of JSON are links (`result_url`), not inline.
INLINE_RESULT_BYTES = 1000
# Shared by the API and the worker: one attempt per webhook, so a failing one dies at once;
# a short lease, so a running job notices its cancellation within a second or so.
SYSTEM_ENV = {
    "POSTBACK_ADMIN_TOKEN": ADMIN_TOKEN,
    "POSTBACK_HANDLER_MODULES": "tests.handlers",
    "POSTBACK_DURABILITY": "everysec",
    "POSTBACK_RATE_LIMIT": "100000/second",
    "POSTBACK_RETRY_MAX_ATTEMPTS": "1",
    "POSTBACK_JOB_LEASE_SECONDS": "1.5",
    "POSTBACK_INLINE_RESULT_BYTES": str(INLINE_RESULT_BYTES),
}


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


def snake(operation_id: str) -> str:
    """The generator's module name for an operation id (`cancelJob` → `cancel_job`)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = spec
        for key in node["$ref"].split("/")[1:]:
            target = target[key]
        node = target
    return node


def spec_operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every operation of the spec's paths and webhooks, by operation id."""
    found = {}
    for section in ("paths", "webhooks"):
        for item in spec.get(section, {}).values():
            for method, operation in item.items():
                if method in HTTP_METHODS:
                    found[operation["operationId"]] = {**operation, "section": section}
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """The client generated from openapi.yaml, imported; the generator printed no warning."""
    where = tmp_path_factory.mktemp("generated")
    # No post-generation hooks (formatters): the test needs the code, not its looks.
    config = where / "generator.yaml"
    config.write_text("post_hooks: []\n", encoding="utf-8")
    command = [sys.executable, "-m", "openapi_python_client", "generate"]
    options = ["--path", str(SPEC_PATH), "--meta", "none", "--config", str(config)]
    done = subprocess.run(
        [*command, *options, "--output-path", str(where / PACKAGE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "warning" not in output.lower(), output
    sys.path.insert(0, str(where))
    try:
        for part in ("models", "types"):
            importlib.import_module(f"{PACKAGE}.{part}")
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(where))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


@dataclass
class Driver:
    """Calls operations of the generated client by operation id, and records them.

    Each response must be one the spec declares (the client is told to raise on any other),
    and when the spec declares a body for its status, the client must have parsed it.
    """

    spec: dict[str, Any]
    generated: ModuleType
    base_url: str
    exercised: set[str] = field(default_factory=set)

    def client(self, token: str | None = None) -> Any:
        options: dict[str, Any] = {
            "base_url": self.base_url,
            "raise_on_unexpected_status": True,
            # Above the longest long-poll (`wait` is at most 30 s).
            "timeout": httpx.Timeout(SETTLE_SECONDS + 30),
        }
        if token is None:
            return self.generated.Client(**options)
        return self.generated.AuthenticatedClient(token=token, **options)

    def call(self, operation_id: str, token: str | None, *args: Any, **kwargs: Any) -> Any:
        operation = spec_operations(self.spec)[operation_id]
        tag = operation.get("tags", ["default"])[0]
        module = importlib.import_module(f"{PACKAGE}.api.{tag}.{snake(operation_id)}")
        # Closed after the call: a connection left open would hold an API process for the
        # whole graceful timeout when the server stops.
        with self.client(token) as client:
            response = module.sync_detailed(*args, client=client, **kwargs)
        declared = resolve(self.spec, operation["responses"][str(response.status_code)])
        if declared.get("content"):
            assert response.parsed is not None, (operation_id, response.status_code)
        self.exercised.add(operation_id)
        return response

    def event(self, received: Any, secret: str) -> Any:
        """A webhook a receiver got, verified with `secret` and parsed as the spec's event."""
        Webhook(secret).verify(received.body, received.headers)
        self.exercised.add("jobEvent")
        return self.generated.models.JobEvent.from_dict(json.loads(received.body))


@pytest.fixture
def system(redis_client: redis.Redis, redis_url: str) -> Iterator[str]:
    """`postback serve` and one `postback worker` on the (flushed) session Redis; the API's URL."""
    with (
        postback_serve(redis_url, **SYSTEM_ENV) as served,
        postback_worker(redis_url, stderr=None, **SYSTEM_ENV),
    ):
        yield served.base


def test_every_operation_works_through_the_generated_client(
    generated: ModuleType, system: str
) -> None:
    """A client generated from the spec parses the answer of every operation, partner and admin,
    driven against the running system, and every operation of the spec is driven."""
    spec = load_spec()
    models = generated.models
    drive = Driver(spec, generated, system)
    with Receiver() as good, Receiver(Reply(500)) as failing:
        # -- health ---------------------------------------------------------------------------
        healthz = drive.call("healthz", None)
        assert (healthz.status_code, healthz.parsed.status) == (200, "ok")

        def ready() -> Any:
            answer = drive.call("readyz", None)
            return answer if answer.status_code == 200 else None

        readyz = eventually(ready, timeout_seconds=SETTLE_SECONDS, what="a worker is alive")
        assert readyz.parsed.workers >= 1
        assert readyz.parsed.checks.redis.status == models.ReadinessCheckStatus.OK
        document = drive.call("getOpenapi", None)
        assert document.status_code == 200
        assert document.headers["content-type"] == "application/yaml"
        assert yaml.safe_load(document.content) == spec

        # -- partners -------------------------------------------------------------------------
        made = {
            name: drive.call("createPartner", ADMIN_TOKEN, body=models.PartnerCreate(name=name))
            for name in ("Acme", "Gone")
        }
        assert {answer.status_code for answer in made.values()} == {201}
        acme, gone = made["Acme"].parsed, made["Gone"].parsed
        assert isinstance(acme, models.PartnerCreated)
        assert acme.api_key.startswith("pbk_") and acme.signing_secret.startswith("whsec_")
        key = drive.call("rotatePartnerKey", ADMIN_TOKEN, gone.id)
        assert key.status_code == 200
        assert key.parsed.id == gone.id and key.parsed.api_key != gone.api_key
        secret = drive.call("rotatePartnerSecret", ADMIN_TOKEN, gone.id)
        assert secret.status_code == 200
        assert secret.parsed.signing_secret.startswith("whsec_")
        assert secret.parsed.signing_secret != gone.signing_secret
        expired = drive.call("expirePartnerSecrets", ADMIN_TOKEN, gone.id)
        assert expired.status_code == 200
        assert (expired.parsed.id, expired.parsed.expired, expired.parsed.secrets) == (
            gone.id,
            1,
            1,
        )
        link = drive.call("createPortalLink", ADMIN_TOKEN, acme.id)
        assert link.status_code == 200
        assert isinstance(link.parsed, models.PortalLink)
        assert link.parsed.url.startswith(f"{system}/portal/enter?token=")
        assert link.parsed.expires_at.timestamp() > time.time()
        entry = httpx.get(link.parsed.url)
        assert entry.status_code == 200 and "Open the portal" in entry.text
        assert drive.call("disablePartner", ADMIN_TOKEN, gone.id).status_code == 204
        closed = drive.call("createPortalLink", ADMIN_TOKEN, gone.id)
        assert closed.status_code == 409
        assert isinstance(closed.parsed, models.Problem)
        refused = drive.call("listJobs", key.parsed.api_key)
        assert refused.status_code == 401
        assert isinstance(refused.parsed, models.Problem)
        partners = page_through(drive, "listPartners", ADMIN_TOKEN, limit=1)
        assert [(p.name, p.disabled) for p in partners] == [("Acme", False), ("Gone", True)]

        # -- a job, its webhook, its deliveries, a redelivery -------------------------------
        submitted = drive.call(
            "submitJob",
            acme.api_key,
            body=models.JobSubmission(
                type_="echo",
                input_=models.JobSubmissionInput.from_dict({"hello": "world"}),
                callback_url=good.url,
                priority=models.JobPriority.HIGH,
            ),
        )
        assert submitted.status_code == 202
        accepted = submitted.parsed
        assert isinstance(accepted, models.JobAccepted)
        assert accepted.status == "queued"
        assert submitted.headers["location"] == accepted.status_url
        echo = wait_for_end(drive, acme.api_key, accepted.id)
        assert echo.status == models.JobStatus.COMPLETED
        assert echo.result == {"hello": "world"}
        result = drive.call("getJobResult", acme.api_key, accepted.id)
        assert (result.status_code, result.parsed) == (200, {"hello": "world"})
        waited = drive.call(
            "submitJob",
            acme.api_key,
            body=models.JobSubmission(
                type_="echo", input_=models.JobSubmissionInput.from_dict({"quick": True})
            ),
            prefer="wait=20",
        )
        assert waited.status_code == 200, waited.content
        assert isinstance(waited.parsed, models.Job)
        assert waited.parsed.status == models.JobStatus.COMPLETED
        assert waited.parsed.result == {"quick": True}
        assert waited.headers["preference-applied"] == "wait=20"
        seen = drive.call("getAdminJob", ADMIN_TOKEN, accepted.id)
        assert seen.status_code == 200
        assert isinstance(seen.parsed, models.AdminJob)
        assert (seen.parsed.id, seen.parsed.partner_id) == (accepted.id, acme.id)
        assert seen.parsed.status == models.JobStatus.COMPLETED
        nobody = drive.call("getAdminJob", ADMIN_TOKEN, "job_" + "0" * 26)
        assert nobody.status_code == 404
        event = drive.event(good.wait_for(1, SETTLE_SECONDS)[0], acme.signing_secret)
        assert event.type_ == models.JobEventType.JOB_COMPLETED
        assert (event.data.id, event.data.result) == (accepted.id, {"hello": "world"})
        eventually(
            lambda: delivered(drive, acme.api_key, accepted.id),
            timeout_seconds=SETTLE_SECONDS,
            what="the delivery is recorded",
        )
        attempts = drive.call("listJobDeliveries", acme.api_key, accepted.id)
        assert attempts.status_code == 200
        assert [(a.attempt, a.status_code) for a in attempts.parsed.items] == [(1, 200)]
        assert attempts.parsed.items[0].outcome == models.DeliveryAttemptOutcome.SUCCEEDED
        again = drive.call("redeliverJob", acme.api_key, accepted.id)
        assert again.status_code == 202
        assert isinstance(again.parsed, models.Redelivery)
        first, second = good.wait_for(2, SETTLE_SECONDS)[:2]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        assert again.parsed.webhook_id == first.headers["webhook-id"]
        assert drive.event(second, acme.signing_secret).data.id == accepted.id
        # The job has ended and its webhook is delivered: its stream replays and ends.
        followed = drive.call("streamJobEvents", acme.api_key, accepted.id)
        assert followed.status_code == 200
        assert b"event: end\n" in followed.content
        feed = drive.call("listEvents", acme.api_key, signed=True)
        assert feed.status_code == 200
        assert isinstance(feed.parsed, models.FeedPage)
        (item,) = [i for i in feed.parsed.items if i.data.id == accepted.id]
        assert item.webhook_id == first.headers["webhook-id"]
        assert item.type_ == models.FeedEventType.JOB_COMPLETED
        assert item.webhook.headers.webhook_id == item.webhook_id

        # -- a large result, by its link --------------------------------------------------
        big = submit(drive, acme.api_key, "test.big", {"bytes": INLINE_RESULT_BYTES * 2})
        large = wait_for_end(drive, acme.api_key, big)
        assert large.status == models.JobStatus.COMPLETED
        assert isinstance(large.result_url, str)
        moved = drive.call("getJobResult", acme.api_key, big)
        assert moved.status_code == 303
        # A link signed afresh: the same result, whatever its timestamp.
        blob = {"blob": "x" * INLINE_RESULT_BYTES * 2}
        assert httpx.get(moved.headers["location"]).json() == blob
        token = urlsplit(large.result_url).path.rsplit("/", 1)[-1]
        result = drive.call("getResult", None, token)
        assert result.status_code == 200
        assert result.parsed == {"blob": "x" * INLINE_RESULT_BYTES * 2}

        # -- cancelling a running job and a queued one -----------------------------------
        running = submit(drive, acme.api_key, "sleep", {"seconds": 60})
        eventually(
            lambda: status(drive, acme.api_key, running) == models.JobStatus.PROCESSING,
            timeout_seconds=SETTLE_SECONDS,
            what="the sleep job runs",
        )
        early = drive.call("getJobResult", acme.api_key, running)
        assert early.status_code == 409
        assert isinstance(early.parsed, models.JobNotCompletedProblem)
        assert early.parsed.job_status == models.JobStatus.PROCESSING
        # The only worker is busy: this one waits in its queue.
        queued = submit(drive, acme.api_key, "echo", {})
        cancelled = drive.call("cancelJob", acme.api_key, queued)
        assert cancelled.status_code == 200
        assert isinstance(cancelled.parsed, models.JobCancelled)
        assert cancelled.parsed.status == models.JobCancelledStatus.CANCELLED
        assert cancelled.parsed.cancel_requested is False
        told = drive.call("cancelJob", acme.api_key, running)
        assert told.status_code == 202
        assert isinstance(told.parsed, models.JobCancelRequested)
        assert told.parsed.cancel_requested is True
        stopped = wait_for_end(drive, acme.api_key, running)
        assert stopped.status == models.JobStatus.CANCELLED
        assert stopped.error.code == "cancelled"
        ended = drive.call("cancelJob", acme.api_key, running)
        assert ended.status_code == 409
        assert isinstance(ended.parsed, models.Problem)

        # -- dead letters -----------------------------------------------------------------
        doomed = [submit(drive, acme.api_key, "echo", {"n": n}, failing.url) for n in range(3)]
        for job_id in doomed:
            wait_for_end(drive, acme.api_key, job_id)
        letters = eventually(
            lambda: dead_letters(drive, 3),
            timeout_seconds=SETTLE_SECONDS,
            what="three webhooks die",
        )
        assert {letter.job_id for letter in letters} == set(doomed)
        assert {letter.partner_id for letter in letters} == {acme.id}
        # The three died at about the same time: which is which does not matter.
        replayed, discarded, left = letters
        shown = drive.call("getDeadLetter", ADMIN_TOKEN, replayed.id)
        assert shown.status_code == 200
        assert isinstance(shown.parsed, models.DeadLetter)
        assert shown.parsed.payload.data.id == replayed.job_id
        assert [a.status_code for a in shown.parsed.attempt_log] == [500]
        corrected = models.DeadLetterReplay(callback_url=good.url)
        one = drive.call("replayDeadLetter", ADMIN_TOKEN, replayed.id, body=corrected)
        assert one.status_code == 202
        assert (one.parsed.replayed, one.parsed.webhook_id) == (1, replayed.webhook_id)
        arrived = good.wait_for(3, SETTLE_SECONDS)[2]
        assert arrived.headers["webhook-id"] == replayed.webhook_id
        assert drive.event(arrived, acme.signing_secret).data.id == replayed.job_id
        assert drive.call("deleteDeadLetter", ADMIN_TOKEN, discarded.id).status_code == 204
        missing = drive.call("getDeadLetter", ADMIN_TOKEN, discarded.id)
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.Problem)
        bulk = drive.call(
            "replayDeadLetters", ADMIN_TOKEN, body=models.DeadLetterFilter(partner_id=acme.id)
        )
        assert (bulk.status_code, bulk.parsed.replayed) == (202, 1)
        # Back to the failing receiver, where it dies again: a fourth failure on its circuit.
        failing.wait_for(4, SETTLE_SECONDS)
        again_dead = eventually(
            lambda: dead_letters(drive, 1),
            timeout_seconds=SETTLE_SECONDS,
            what="the replayed webhook dies again",
        )
        assert again_dead[0].webhook_id == left.webhook_id

        # -- circuits ---------------------------------------------------------------------
        destination = failing.url.removesuffix("/hook")
        circuits = drive.call("listCircuits", ADMIN_TOKEN, destination=destination, limit=10)
        assert circuits.status_code == 200
        [circuit] = circuits.parsed.items
        assert (circuit.partner_id, circuit.destination) == (acme.id, destination)
        assert circuit.state == models.CircuitState.CLOSED
        assert circuit.consecutive_failures == 4
        assert circuits.parsed.next_cursor is None
        reset = drive.call(
            "resetCircuit",
            ADMIN_TOKEN,
            body=models.CircuitReset(destination=destination, partner_id=acme.id),
        )
        assert reset.status_code == 200
        assert [(c.partner_id, c.consecutive_failures) for c in reset.parsed.reset] == [
            (acme.id, 4)
        ]
        after = drive.call("listCircuits", ADMIN_TOKEN, destination=destination)
        assert after.parsed.items == []

        # -- listing jobs, a page at a time -----------------------------------------------
        jobs = page_through(drive, "listJobs", acme.api_key, limit=2)
        assert len(jobs) == len({job.id for job in jobs})
        made = {accepted.id, waited.parsed.id, big, running, queued, *doomed}
        assert {job.id for job in jobs} == made
        only = drive.call("listJobs", acme.api_key, status=models.JobStatus.CANCELLED)
        assert {job.id for job in only.parsed.items} == {running, queued}

        # -- a request the API refuses: a typed problem too ----------------------------------
        unknown = drive.call(
            "submitJob", acme.api_key, body=models.JobSubmission(type_="no.such.type")
        )
        assert unknown.status_code == 422
        assert "type" in unknown.parsed.errors.additional_properties

    assert drive.exercised == set(spec_operations(spec)), "operations the test did not drive"


def submit(
    drive: Driver, key: str, job_type: str, job_input: dict[str, Any], callback: str | None = None
) -> str:
    """Submit a job through the client; its id."""
    models = drive.generated.models
    body = models.JobSubmission(
        type_=job_type,
        input_=models.JobSubmissionInput.from_dict(job_input),
        callback_url=callback,
    )
    answer = drive.call("submitJob", key, body=body)
    assert answer.status_code == 202, answer.content
    return answer.parsed.id


def wait_for_end(drive: Driver, key: str, job_id: str) -> Any:
    """The job once it has ended, by long-polls (`wait`) through the client."""
    terminal = {"completed", "failed", "cancelled"}

    def ended() -> Any:
        answer = drive.call("getJob", key, job_id, wait=10)
        assert answer.status_code == 200
        return answer.parsed if answer.parsed.status in terminal else None

    return eventually(ended, timeout_seconds=SETTLE_SECONDS, what=f"{job_id} ends")


def status(drive: Driver, key: str, job_id: str) -> Any:
    return drive.call("getJob", key, job_id).parsed.status


def delivered(drive: Driver, key: str, job_id: str) -> bool:
    job = drive.call("getJob", key, job_id).parsed
    return job.delivery.status == drive.generated.models.DeliveryStatus.DELIVERED


def dead_letters(drive: Driver, count: int) -> list[Any] | None:
    """The dead letters, paged two at a time; None until there are `count`."""
    found = page_through(drive, "listDeadLetters", ADMIN_TOKEN, limit=2)
    return found if len(found) == count else None


def page_through(drive: Driver, operation_id: str, token: str, **query: Any) -> list[Any]:
    """Every item of a paged listing, following `next_cursor` to the last page."""
    items: list[Any] = []
    cursor: Any = drive.generated.types.UNSET
    while True:
        page = drive.call(operation_id, token, cursor=cursor, **query)
        assert page.status_code == 200
        items.extend(page.parsed.items)
        if page.parsed.next_cursor is None:
            return items
        cursor = page.parsed.next_cursor
