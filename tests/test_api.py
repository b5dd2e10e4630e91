"""The HTTP API: partners, submission, reading and listing jobs, errors as problem+json."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest
from rq import Worker

from tests.helpers import PROBLEM, stored_state
from worker import liveness
from worker.jobs import QUEUE_NAME


def submit(client, partner, **body):
    body.setdefault("type", "echo")
    return client.post("/v1/jobs", json=body, headers=partner["headers"])


def test_healthz_answers_while_the_process_lives(client):
    """GET /healthz is 200 without credentials."""
    assert client.get("/healthz").status_code == 200


def test_readyz_needs_a_live_worker(client, redis_client):
    """GET /readyz is 503 with no worker and 200 once a worker is registered."""
    reply = client.get("/readyz")
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    worker = Worker([QUEUE_NAME], connection=redis_client)
    worker.register_birth()
    liveness.beat(redis_client, worker.name)
    try:
        assert client.get("/readyz").status_code == 200
    finally:
        worker.register_death()
        liveness.gone(redis_client, worker.name)


def test_admin_creates_a_partner_with_a_key_and_a_whsec_secret(client, admin_headers, redis_client):
    """Creating a partner returns its key and secret once; only a hash of the key is kept."""
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    assert reply.status_code == 201
    body = reply.json
    assert set(body) == {"id", "name", "api_key", "signing_secret"}
    assert body["name"] == "Acme"
    assert body["signing_secret"].startswith("whsec_")
    assert len(base64.b64decode(body["signing_secret"][6:])) >= 24
    stored = b" ".join(v for k in redis_client.keys("pb:partner:*") for v in redis_client.hvals(k))
    assert body["api_key"].encode() not in stored


@pytest.mark.parametrize(
    ("header", "status"),
    [(None, 401), ("Bearer nope", 401), ("Basic abc", 401)],
)
def test_admin_api_refuses_missing_or_wrong_credentials(client, header, status):
    """The admin API answers 401 with WWW-Authenticate: Bearer without the admin token."""
    headers = {"Authorization": header} if header else {}
    reply = client.post("/v1/admin/partners", json={"name": "x"}, headers=headers)
    assert reply.status_code == status
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert reply.mimetype == PROBLEM


def test_a_partner_key_cannot_use_the_admin_api(client, partner):
    """A partner key on an admin endpoint is 403."""
    reply = client.post("/v1/admin/partners", json={"name": "x"}, headers=partner["headers"])
    assert reply.status_code == 403


def test_the_admin_token_does_not_act_as_a_partner(client, admin_headers):
    """The admin token on the partner API is 403, not a job."""
    reply = client.post("/v1/jobs", json={"type": "echo"}, headers=admin_headers)
    assert reply.status_code == 403


def test_submission_is_accepted_with_a_status_url(client, partner):
    """POST /v1/jobs answers 202 with the job id, its status URL, Location and Retry-After."""
    reply = submit(client, partner, input={"a": 1})
    assert reply.status_code == 202
    body = reply.json
    assert set(body) == {"id", "status", "status_url", "created_at"}
    assert body["status"] == "queued"
    assert body["id"].startswith("job_")
    assert reply.headers["Location"] == body["status_url"]
    assert body["status_url"].endswith(f"/v1/jobs/{body['id']}")
    assert int(reply.headers["Retry-After"]) >= 1


def test_status_urls_follow_the_address_each_request_came_to(app, partner):
    """Without POSTBACK_PUBLIC_URL, each submission's status URL is on its own (allowed) Host
    and scheme."""
    services = app.extensions["postback"]
    settings = replace(services.settings, allowed_hosts=("api.one.test", "api.two.test:8443"))
    app.extensions["postback"] = replace(services, settings=settings)
    client = app.test_client()
    seen = set()
    for base in ("http://api.one.test", "https://api.two.test:8443", "http://api.one.test"):
        reply = client.post(
            "/v1/jobs", json={"type": "echo"}, headers=partner["headers"], base_url=base
        )
        assert reply.json["status_url"] == f"{base}/v1/jobs/{reply.json['id']}"
        seen.add(reply.headers["Location"].rsplit("/v1/", 1)[0])
    assert seen == {"http://api.one.test", "https://api.two.test:8443"}


def test_a_job_reads_back_as_queued_with_its_delivery_pending(client, partner, receiver):
    """GET /v1/jobs/{id} shows a queued job and, with a callback URL, a pending delivery."""
    job_id = submit(client, partner, callback_url=receiver.url).json["id"]
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    assert job["status"] == "queued"
    assert job["progress"] == 0
    assert job["started_at"] is None and job["finished_at"] is None
    assert job["delivery"] == {
        "status": "pending",
        "attempts": 0,
        "last_attempt_at": None,
        "next_attempt_at": None,
    }


def test_another_partners_job_is_not_found(client, partner, admin_headers):
    """A job of another partner answers 404, exactly like a job that does not exist."""
    job_id = submit(client, partner).json["id"]
    other = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers).json
    headers = {"Authorization": f"Bearer {other['api_key']}"}
    theirs = client.get(f"/v1/jobs/{job_id}", headers=headers)
    missing = client.get("/v1/jobs/job_01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=headers)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json["title"] == missing.json["title"]
    assert client.get("/v1/jobs", headers=headers).json["items"] == []


def test_listing_is_newest_first_and_pages_with_a_cursor(client, partner):
    """GET /v1/jobs returns the partner's jobs newest first, `limit` at a time, until no cursor."""
    ids = [submit(client, partner).json["id"] for _ in range(5)]
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", query_string=query, headers=partner["headers"]).json
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_listing_filters_by_status(client, partner, work):
    """`status=` lists only jobs in that status."""
    done = submit(client, partner).json["id"]
    work()
    waiting = submit(client, partner).json["id"]
    headers = partner["headers"]
    queued = client.get("/v1/jobs?status=queued", headers=headers).json["items"]
    completed = client.get("/v1/jobs?status=completed", headers=headers).json["items"]
    assert [j["id"] for j in queued] == [waiting]
    assert [j["id"] for j in completed] == [done]


@pytest.mark.parametrize(
    "query", ["status=sleeping", "limit=0", "limit=101", "limit=x", "cursor=abc", "colour=red"]
)
def test_bad_list_queries_are_422(client, partner, query):
    """A bad query parameter is a 422 naming it."""
    reply = client.get(f"/v1/jobs?{query}", headers=partner["headers"])
    assert reply.status_code == 422
    assert reply.mimetype == PROBLEM
    assert query.split("=")[0] in reply.json["errors"]


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, None),
        ({"data": "type=echo", "content_type": "application/x-www-form-urlencoded"}, 415, None),
        ({"json": ["echo"]}, 422, "_schema"),
        ({"json": {}}, 422, "type"),
        ({"json": {"type": "nope"}}, 422, "type"),
        ({"json": {"type": "echo", "input": [1, 2]}}, 422, "input"),
        ({"json": {"type": "echo", "colour": "red"}}, 422, "colour"),
        ({"json": {"type": "echo", "callback_url": "ftp://example.com/x"}}, 422, "callback_url"),
        ({"json": {"type": "echo", "callback_url": "/relative"}}, 422, "callback_url"),
        ({"json": {"type": "sleep", "input": {"seconds": 7200}}}, 422, "input"),
        ({"json": {"type": "report", "input": {"rows": [{"v": "x"}], "value": "v"}}}, 422, "input"),
    ],
)
def test_bad_submissions_are_specific_4xx_and_change_nothing(
    client, partner, redis_client, kwargs, status, field
):
    """Each bad submission gets its own 4xx problem+json and creates no job."""
    before = stored_state(redis_client)
    reply = client.post("/v1/jobs", headers=partner["headers"], **kwargs)
    assert reply.status_code == status
    assert reply.mimetype == PROBLEM
    assert reply.json["status"] == status
    if field:
        assert field in reply.json["errors"]
    assert stored_state(redis_client) == before


def test_an_unknown_route_is_a_problem(client):
    """A 404 route and a wrong method are problem+json too."""
    assert client.get("/v2/nothing").mimetype == PROBLEM
    reply = client.delete("/v1/jobs")
    assert reply.status_code == 405 and reply.mimetype == PROBLEM
