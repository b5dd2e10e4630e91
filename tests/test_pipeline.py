"""Accept → process → signed webhook, in process, against a real Redis and a real receiver."""

from __future__ import annotations

import json
import time

from standardwebhooks.webhooks import Webhook

from callbacks.outbox import Outbox
from tests.receiver import Reply


def submit(client, partner, **body):
    reply = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def get(client, partner, job_id):
    return client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json


def test_a_completed_job_is_delivered_as_a_verifiable_standard_webhook(
    client, partner, receiver, work
):
    """The result arrives signed so that the standardwebhooks library verifies it."""
    job_id = submit(
        client, partner, type="echo", input={"hello": "world"}, callback_url=receiver.url
    )
    work()
    (hit,) = receiver.wait_for(1)
    payload = Webhook(partner["signing_secret"]).verify(hit.body, hit.headers)
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["result"] == {"hello": "world"}
    assert hit.headers["webhook-id"].startswith("msg_")
    assert hit.headers["content-type"] == "application/json"
    assert hit.headers["user-agent"].startswith("Postback/")
    job = get(client, partner, job_id)
    assert job["status"] == "completed" and job["progress"] == 100
    assert job["delivery"]["status"] == "delivered"
    assert job["delivery"]["attempts"] == 1
    moving = ("delivery", "timeline")
    sent = {k: v for k, v in payload["data"].items() if k not in moving}
    assert sent == {k: v for k, v in job.items() if k not in moving}
    # The webhook's timeline ends at the finish; the job's goes on with the delivery.
    sent_timeline = payload["data"]["timeline"]
    assert job["timeline"][: len(sent_timeline)] == sent_timeline
    assert [e["event"] for e in job["timeline"][len(sent_timeline) :]] == [
        "delivery_attempt",
        "delivered",
    ]


def test_a_failed_job_sends_job_failed_with_the_exception(client, partner, receiver, work):
    """A handler exception fails the job with its class name and message, and is delivered."""
    job_id = submit(
        client, partner, type="test.fail", input={"quota": 3}, callback_url=receiver.url
    )
    work()
    payload = json.loads(receiver.wait_for(1)[0].body)
    assert payload["type"] == "job.failed"
    error = {"code": "QuotaExceeded", "message": "quota of 3 exceeded"}
    assert payload["data"]["error"] == error
    job = get(client, partner, job_id)
    assert job["status"] == "failed" and job["error"] == error and "result" not in job


def test_a_result_that_is_not_json_fails_the_job(client, partner, work):
    """A handler returning something JSON cannot hold fails with `result_not_json`."""
    job_id = submit(client, partner, type="test.not_json")
    work()
    assert get(client, partner, job_id)["error"]["code"] == "result_not_json"


def test_progress_and_timestamps_are_recorded(client, partner, work):
    """A completed job has progress 100, start and finish times, and its handler saw its id."""
    job_id = submit(client, partner, type="test.progress")
    work()
    job = get(client, partner, job_id)
    assert job["result"] == {"job_id": job_id}
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]


def test_a_job_without_callback_has_no_delivery(client, partner, work, redis_client):
    """Without a callback URL no webhook is queued and the job has no `delivery`."""
    job_id = submit(client, partner, type="echo")
    work()
    assert "delivery" not in get(client, partner, job_id)
    assert Outbox(redis_client).counts()["scheduled"] == 0


def test_a_failed_attempt_is_retried_with_the_same_webhook_id(client, partner, receiver, work):
    """A 500 then a 200: two attempts, one webhook-id, fresh signatures that both verify."""
    receiver.reply(Reply(500))
    job_id = submit(client, partner, type="echo", callback_url=receiver.url)
    work()
    assert get(client, partner, job_id)["delivery"]["status"] == "retrying"
    time.sleep(0.06)  # past the test policy's largest backoff (0.05 s)
    work()
    first, second = receiver.wait_for(2)
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    verifier = Webhook(partner["signing_secret"])
    for hit in (first, second):
        verifier.verify(hit.body, hit.headers)
    delivery = get(client, partner, job_id)["delivery"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 2


def test_410_gone_stops_delivery_at_once(client, partner, receiver, work, redis_client):
    """A 410 from the receiver makes the delivery dead after one attempt."""
    receiver.reply(Reply(410))
    job_id = submit(client, partner, type="echo", callback_url=receiver.url)
    work()
    delivery = get(client, partner, job_id)["delivery"]
    assert delivery["status"] == "dead" and delivery["attempts"] == 1
    assert Outbox(redis_client).counts()["scheduled"] == 0


def test_redirects_are_not_followed(client, partner, receiver, work):
    """A 302 is a failed attempt; its Location is never requested."""
    receiver.reply(Reply(302, headers=(("Location", receiver.url + "/elsewhere"),)))
    job_id = submit(client, partner, type="echo", callback_url=receiver.url)
    work()
    assert len(receiver.received) == 1
    assert get(client, partner, job_id)["delivery"]["status"] == "retrying"
