"""`Prefer: wait` and `respond-async` on submission, and `GET /v1/jobs/{id}/result`."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, replace
from urllib.parse import urlsplit

import pytest

from app import create_app
from app.prefer import for_submission, parse
from app.services import services
from tests.helpers import PROBLEM

# Generous: bounds a wait for something that takes well under a second.
SETTLE_SECONDS = 25


def submit(client, partner, *, prefer=(), key=None, **body):
    """POST /v1/jobs with each of `prefer` as a Prefer field (and an Idempotency-Key)."""
    body.setdefault("type", "echo")
    headers = [*partner["headers"].items(), *(("Prefer", value) for value in prefer)]
    if key is not None:
        headers.append(("Idempotency-Key", key))
    return client.post("/v1/jobs", json=body, headers=headers)


def submit_while_working(app, partner, work, **kwargs):
    """`submit` from a thread while this one runs burst workers until it is answered."""
    answer = {}

    def send():
        with app.test_client() as own:
            answer["reply"] = submit(own, partner, **kwargs)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + SETTLE_SECONDS
    while sender.is_alive() and time.monotonic() < deadline:
        work(deliveries=False)  # the job may not exist yet: then the next burst runs it
        sender.join(0.05)
    sender.join(SETTLE_SECONDS)
    return answer["reply"]


def job_ids(client, partner):
    return [job["id"] for job in client.get("/v1/jobs", headers=partner["headers"]).json["items"]]


def get_job(client, partner, job_id):
    return client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])


def get_result(client, partner, job_id):
    return client.get(f"/v1/jobs/{job_id}/result", headers=partner["headers"])


# -- parsing Prefer ----------------------------------------------------------------------


def test_prefer_is_parsed_as_rfc_7240_says():
    """Names are case-insensitive, values may be quoted, parameters are dropped, the first of
    a name counts, and several fields make one list."""
    found = parse(['Handling=lenient, WAIT = "7"; x="a,b;c"', "wait=3, respond-async"])
    assert found == {"handling": "lenient", "wait": "7", "respond-async": ""}


def test_respond_async_wins_over_wait():
    """Given both, respond-async is honoured and wait is not."""
    asked = for_submission(["wait=10, respond-async"], max_wait_seconds=30)
    assert (asked.respond_async, asked.wait_seconds, asked.applied()) == (
        True,
        None,
        "respond-async",
    )


# -- Prefer on POST /v1/jobs -------------------------------------------------------------


def test_prefer_wait_answers_200_with_the_job_once_it_ends(app, client, partner, work):
    """A job that ends within the wait is answered 200, exactly as GET shows it, with
    Preference-Applied: wait=N and the job's URL in Content-Location."""
    reply = submit_while_working(app, partner, work, prefer=["wait=20"], input={"a": 1})
    assert reply.status_code == 200, reply.json
    assert reply.headers["Preference-Applied"] == "wait=20"
    job = reply.json
    assert job["status"] == "completed" and job["result"] == {"a": 1}
    assert reply.headers["Content-Location"].endswith(f"/v1/jobs/{job['id']}")
    assert job == get_job(client, partner, job["id"]).json
    assert job_ids(client, partner) == [job["id"]]


def test_prefer_wait_answers_202_once_the_wait_is_over(client, partner):
    """With no worker the job does not end: 202 after about N seconds, the wait applied."""
    started = time.monotonic()
    reply = submit(client, partner, prefer=["wait=1"])
    assert time.monotonic() - started >= 0.9
    assert reply.status_code == 202
    assert reply.headers["Preference-Applied"] == "wait=1"
    assert reply.headers["Location"] == reply.json["status_url"]
    assert get_job(client, partner, reply.json["id"]).json["status"] == "queued"


def test_respond_async_answers_202_at_once(client, partner):
    """respond-async answers 202 without waiting, even beside a wait, and says so."""
    started = time.monotonic()
    reply = submit(client, partner, prefer=["wait=30", "respond-async"])
    assert time.monotonic() - started < 20  # far below the 30 s wait it did not make
    assert reply.status_code == 202
    assert reply.headers["Preference-Applied"] == "respond-async"
    assert job_ids(client, partner) == [reply.json["id"]]


@pytest.mark.parametrize(
    "value", ["wait=0", "wait=31", "wait=-1", "wait=soon", "wait", "wait=5 6", "wait=1.5"]
)
def test_a_wait_that_cannot_be_honoured_is_ignored(client, partner, value):
    """A wait that is not an integer from 1 to 30 is ignored: 202, no Preference-Applied."""
    reply = submit(client, partner, prefer=[value])
    assert reply.status_code == 202
    assert "Preference-Applied" not in reply.headers
    assert job_ids(client, partner) == [reply.json["id"]]


def test_unknown_preferences_are_ignored(client, partner):
    """A Prefer of preferences the API does not know changes nothing."""
    reply = submit(client, partner, prefer=["return=minimal, handling=strict"])
    assert reply.status_code == 202
    assert "Preference-Applied" not in reply.headers


def test_a_partner_holding_all_its_waits_gets_202_and_its_job(
    settings, redis_client, partner, work
):
    """At POSTBACK_PARTNER_MAX_WAITS, a wait is not made: 202 at once, without
    Preference-Applied, and the job is made and runs."""
    app = create_app(asdict(replace(settings, partner_max_waits=1)), client=redis_client)
    client = app.test_client()
    with app.app_context(), services().waits.hold(partner["id"], 30):
        started = time.monotonic()
        reply = submit(client, partner, prefer=["wait=30"])
        assert time.monotonic() - started < 20
    assert reply.status_code == 202
    assert "Preference-Applied" not in reply.headers
    assert job_ids(client, partner) == [reply.json["id"]]
    work(deliveries=False)
    assert get_job(client, partner, reply.json["id"]).json["status"] == "completed"


def test_an_idempotent_replay_keeps_the_200_a_wait_answered(app, client, partner, work):
    """The replay of a submission whose wait saw the job end is that 200 again; one job."""
    first = submit_while_working(app, partner, work, prefer=["wait=20"], key="k-200")
    assert first.status_code == 200, first.json
    again = submit(client, partner, prefer=["wait=20"], key="k-200")
    assert again.status_code == 200
    assert again.json == first.json
    assert again.headers["Preference-Applied"] == "wait=20"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert job_ids(client, partner) == [first.json["id"]]


def test_an_idempotent_replay_keeps_the_202_a_wait_answered(client, partner, work):
    """The replay of a submission whose wait ran out is that 202 again, even after the job
    ended, and waits for nothing."""
    first = submit(client, partner, prefer=["wait=1"], key="k-202")
    assert first.status_code == 202
    work(deliveries=False)
    again = submit(client, partner, prefer=["wait=1"], key="k-202")
    assert again.status_code == 202
    assert again.json == first.json
    assert again.headers["Preference-Applied"] == "wait=1"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert job_ids(client, partner) == [first.json["id"]]


# -- GET /v1/jobs/{id}/result ------------------------------------------------------------


def test_a_completed_jobs_result_is_the_body(client, partner, work):
    """A completed job's result is answered 200 as JSON, as the handler returned it."""
    job_id = submit(client, partner, input={"hello": "world"}).json["id"]
    work(deliveries=False)
    reply = get_result(client, partner, job_id)
    assert reply.status_code == 200
    assert reply.json == {"hello": "world"}


def test_a_large_result_is_a_303_to_its_signed_link(settings, redis_client, partner, work):
    """A result over the inline bound is a 303 to the signed result_url, which serves it."""
    client = create_app(
        asdict(replace(settings, inline_result_bytes=100)), client=redis_client
    ).test_client()
    job_id = submit(client, partner, type="test.big", input={"bytes": 500}).json["id"]
    work(deliveries=False)
    reply = get_result(client, partner, job_id)
    assert reply.status_code == 303
    assert reply.data == b""
    link = urlsplit(reply.headers["Location"])
    assert link.path.startswith("/v1/results/")
    followed = client.get(link.path)  # no API key: the link is the credential
    assert followed.status_code == 200
    assert followed.json == {"blob": "x" * 500}


def _not_completed(reply, status):
    assert reply.status_code == 409
    assert reply.mimetype == PROBLEM
    problem = reply.json
    assert problem["type"] == "urn:postback:problem:job-not-completed"
    assert (problem["status"], problem["job_status"]) == (409, status)


def test_a_queued_jobs_result_is_409_naming_its_status(client, partner):
    """Before the job has run, /result is a 409 problem with job_status `queued`."""
    job_id = submit(client, partner).json["id"]
    _not_completed(get_result(client, partner, job_id), "queued")


def test_a_failed_jobs_result_is_409_naming_its_status(client, partner, work):
    """A failed job has no result: 409 with job_status `failed`."""
    job_id = submit(client, partner, type="test.fail").json["id"]
    work(deliveries=False)
    reply = get_result(client, partner, job_id)
    _not_completed(reply, "failed")
    assert "failed" in reply.json["detail"]


def test_a_cancelled_jobs_result_is_409_naming_its_status(client, partner):
    """A cancelled job has no result: 409 with job_status `cancelled`."""
    job_id = submit(client, partner).json["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=partner["headers"]).status_code == 200
    _not_completed(get_result(client, partner, job_id), "cancelled")


def test_another_partners_result_is_404(client, partner, admin_headers, work):
    """Another partner's job, an unknown id and a malformed id are 404, as for GET the job."""
    job_id = submit(client, partner).json["id"]
    work(deliveries=False)
    made = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers)
    other = {"headers": {"Authorization": f"Bearer {made.json['api_key']}"}}
    for reader, wanted in ((other, job_id), (partner, "job_" + "0" * 26), (partner, "nope")):
        reply = get_result(client, reader, wanted)
        assert (reply.status_code, reply.mimetype) == (404, PROBLEM)
    assert get_result(client, partner, job_id).status_code == 200
