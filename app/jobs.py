"""Partner API: submit jobs, read them and their results, list them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from flask import Blueprint, Response, g, jsonify, request
from marshmallow import ValidationError

from app import correlation, links, prefer
from app import idempotency as idem
from app.auth import count_now, partner_required, partner_submitting
from app.body import json_body
from app.errors import Conflict, NotCompleted, NotFound, Unauthorized, ValidationFailed
from app.schemas import (
    MAX_WAIT_SECONDS,
    JobListQuery,
    JobQuery,
    check_callback_url,
    load,
    load_submission,
)
from app.services import services
from callbacks.deadletters import DeadLetters
from callbacks.model import PENDING_DELIVERY, Delivery
from postback import clock, ids
from postback import metrics as pm
from postback.errors import LimitExceeded
from postback.ratewindow import KeyChanged, RateLimited
from worker import jobs as js
from worker import quotas, registry

log = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def base_url() -> str:
    """The API's public base URL (see `app.links`): 400 if it would come from a Host that
    POSTBACK_ALLOWED_HOSTS does not allow."""
    return links.base_url(services().settings)


def status_url(job_id: str, base: str | None = None) -> str:
    return f"{base_url() if base is None else base}/v1/jobs/{job_id}"


def _validated_input(job_type: str, data: dict[str, Any]) -> dict[str, Any]:
    spec = registry.get(job_type)
    if spec is None:
        raise ValidationFailed(
            f"unknown job type {job_type!r}",
            errors={"type": [f"must be one of: {', '.join(registry.names())}"]},
        )
    if spec.input_schema is not None:
        try:
            spec.input_schema.load(data)
        except ValidationError as exc:
            raise ValidationFailed(
                "the job's input is not valid", errors={"input": exc.messages}
            ) from None
    return data


@bp.post("")
@partner_submitting
def submit_job() -> tuple[Response, int, dict[str, str]]:
    """Accept a job: 202 with its id and status URL; the work happens on a worker.

    With `Prefer: wait=N` (see `app.prefer`), 200 with the job if it ends within N seconds.
    """
    base = base_url()  # a Host that is not allowed is refused before anything is read or written
    asked = prefer.for_submission(
        request.headers.getlist(prefer.HEADER), max_wait_seconds=MAX_WAIT_SECONDS
    )
    raw = json_body()
    body = load_submission(raw)
    job_input = _validated_input(body["type"], body["input"])
    svc = services()
    timeout_seconds = body["timeout_seconds"] or registry.get(body["type"]).timeout_seconds  # type: ignore[union-attr]
    if timeout_seconds > svc.settings.job_max_timeout_seconds:
        raise ValidationFailed(
            "timeout_seconds is above the limit",
            errors={"timeout_seconds": [f"at most {svc.settings.job_max_timeout_seconds}"]},
        )
    if body["callback_url"] is not None:
        check_callback_url(body["callback_url"])
    header = request.headers.get(idem.HEADER)
    key = idem.parse_key(header) if header is not None else None
    print_ = idem.fingerprint(raw) if key is not None else ""
    if key is not None:
        count_now()  # before a stored answer could be replayed
        stored = svc.idempotency.lookup(g.partner_id, key, print_)
        if stored is not None:
            return _replayed(stored)
    svc.memory.admit()
    svc.backlog.admit()
    response: dict[str, Any] = {}

    def keep_response(pipe: Any, job: js.Job) -> None:
        pm.counter(pipe, "postback_jobs_submitted_total", {"type": body["type"]})
        url = status_url(job.id, base)
        response["body"] = {
            "id": job.id,
            "status": str(job.status),
            "status_url": url,
            "created_at": clock.rfc3339(job.created_at),
        }
        response["headers"] = {
            "Location": url,
            "Retry-After": str(svc.settings.poll_after_seconds),
        }
        if asked.respond_async:
            response["headers"][prefer.APPLIED_HEADER] = prefer.RESPOND_ASYNC
        if key is not None:
            svc.idempotency.finish(
                pipe,
                g.partner_id,
                key,
                print_,
                idem.Stored(202, response["body"], response["headers"]),
            )

    # Counted against the rate limit by the same script, for a key this process knows.
    rate = g.get("pending_rate")
    unconfirmed: js.NotDurable | None = None
    try:
        svc.jobs.create(
            partner_id=g.partner_id,
            type=body["type"],
            input=job_input,
            callback_url=body["callback_url"],
            timeout_seconds=timeout_seconds,
            priority=body["priority"],
            base_url=base,
            request_id=correlation.request_id(),
            traceparent=correlation.traceparent(),
            also=keep_response,
            rate=rate,
            # Made once per key: the key's record is written with the job, or nothing is.
            once=None if key is None else svc.idempotency.record_key(g.partner_id, key),
        )
    except KeyChanged:
        count_now()  # the key was revoked since this process last saw it: 401
        raise Unauthorized("the API key is not valid") from None
    except RateLimited as exc:
        g.pending_rate = None
        raise svc.rate_limiter.refused(exc.reset) from None
    except quotas.OverQuota:
        if rate is not None:  # the script counted the request before it refused
            g.pending_rate = None
            svc.rate_limiter.answered(rate)
        raise
    except quotas.AlreadyMade:
        # Only with a key: a request with the same one made its job since the lookup above.
        made = svc.idempotency.lookup(g.partner_id, str(key), print_)
        if made is None:  # forgotten at once: its time to live is at least a second
            raise Conflict(
                f"a request with this {idem.HEADER} was answered meanwhile; retry"
            ) from None
        return _replayed(made)
    except js.NotDurable as exc:
        unconfirmed = exc  # stored, but not confirmed on disk: answered below
    if rate is not None:
        g.pending_rate = None
        svc.rate_limiter.answered(rate)
    # A job that exists keeps its key: a retry after this 503 replays its response.
    if unconfirmed is not None:
        raise unconfirmed
    answer = idem.Stored(202, response["body"], response["headers"])
    if asked.wait_seconds is not None:
        answer = _prefer_wait(answer, asked.wait_seconds, key, print_)
    return jsonify(answer.body), answer.status, answer.headers


def _replayed(stored: idem.Stored) -> tuple[Response, int, dict[str, str]]:
    """The response stored for an Idempotency-Key, once its job is durable (`NotDurable`,
    a 503, if it cannot be confirmed yet)."""
    svc = services()
    pm.counter(svc.redis, "postback_idempotent_replays_total")
    svc.jobs.confirm_durable()
    return jsonify(stored.body), stored.status, {**stored.headers, "Idempotent-Replayed": "true"}


def _prefer_wait(accepted: idem.Stored, seconds: int, key: str | None, print_: str) -> idem.Stored:
    """The answer to a submission made with `Prefer: wait=seconds`, once its job exists.

    200 with the job if it ends within `seconds`, else `accepted` saying the wait was
    applied; kept for the `Idempotency-Key` instead of `accepted`. The job exists
    whatever happens here, so a wait the partner has no place for (it holds all its
    `POSTBACK_PARTNER_MAX_WAITS`) or a Redis fault while waiting drops the preference,
    not the request: `accepted` as it was stored.
    """
    svc = services()
    job_id = accepted.body["id"]
    applied = {prefer.APPLIED_HEADER: f"{prefer.WAIT}={seconds}"}
    try:
        job = _wait_for_end(job_id, seconds)
        found = svc.jobs.read(job_id) if job is not None and job.status.terminal else None
        if found is None:
            answer = idem.Stored(202, accepted.body, {**accepted.headers, **applied})
        else:
            # The job itself, as at its URL: Content-Location names it (RFC 9110 §8.7).
            headers = {"Content-Location": accepted.headers["Location"], **applied}
            answer = idem.Stored(200, svc.jobs.public(found), headers)
        if key is not None:
            svc.idempotency.replace(g.partner_id, key, print_, answer)
    except LimitExceeded:
        return accepted
    except redis.RedisError as exc:
        log.warning("job %s: answered 202 without waiting: %s", job_id, type(exc).__name__)
        return accepted
    return answer


def _own_job(job_id: str) -> js.Job:
    """The partner's job `job_id`; another partner's job is as missing as one never made."""
    job = services().jobs.view(job_id) if ids.is_id("job", job_id) else None
    if job is None or job.partner_id != g.partner_id:
        raise NotFound(f"no job {job_id}")
    return job


def own_read(job_id: str, partner_id: str) -> js.JobRead:
    """The job `job_id` of `partner_id`, with its timeline and delivery; another
    partner's job is as missing as one never made (NotFound). The portal's too."""
    found = services().jobs.read(job_id) if ids.is_id("job", job_id) else None
    if found is None or found.job.partner_id != partner_id:
        raise NotFound(f"no job {job_id}")
    return found


@bp.get("/<job_id>")
@partner_required
def get_job(job_id: str) -> Response:
    """One of the partner's jobs; with `?wait=N`, as soon as it ends or after N seconds."""
    query = load(JobQuery, request.args.to_dict())
    found = own_read(job_id, g.partner_id)
    if query["wait"] and not found.job.status.terminal:
        _wait_for_end(job_id, query["wait"])
        found = services().jobs.read(job_id) or found
    return jsonify(services().jobs.public(found))


def _wait_for_end(job_id: str, seconds: int) -> js.Job | None:
    """The job once it is terminal, or as it is after `seconds` (see `app.waits`)."""
    jobs = services().jobs
    return services().waits.until(
        g.partner_id,
        js.done_channel(job_id),
        seconds,
        request.environ,
        look=lambda: jobs.view(job_id),
        done=lambda job: job is None or job.status.terminal,
    )


@bp.get("/<job_id>/result")
@partner_required
def get_job_result(job_id: str) -> Response:
    """A completed job's result: the JSON itself, or a 303 to its signed link when it is
    too large to show inline; 409 naming the job's status before it completed."""
    job = _own_job(job_id)
    if job.status is not js.COMPLETED:
        raise NotCompleted(_not_completed(job.status), state=str(job.status))
    url = services().jobs.result_url(job)
    if url is not None:
        moved = Response(status=303, headers={"Location": url})
        del moved.headers["Content-Type"]  # no body, so no type
        return moved
    return jsonify(job.result)


def _not_completed(status: js.JobStatus) -> str:
    if status is js.FAILED:
        return "the job failed: it has no result"
    if status is js.CANCELLED:
        return "the job was cancelled: it has no result"
    return f"the job has not completed yet: it is {status}"


@bp.post("/<job_id>/cancel")
@partner_required
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Cancel a job: a queued one never runs; a running one is stopped; an ended one is 409."""
    job = _own_job(job_id)
    if job.status.terminal:
        raise Conflict(f"the job has already ended: {job.status}")
    jobs = services().jobs
    # Decided in one step in Redis: a job that ends as this arrives is 409, never 202.
    outcome = jobs.request_cancel(job_id)
    current = jobs.read(job_id)
    if outcome is None or current is None:
        raise NotFound(f"no job {job_id}")
    if outcome is js.Cancel.ENDED:
        raise Conflict(f"the job has already ended: {current.job.status}")
    body = jobs.public(current)
    body["cancel_requested"] = outcome is js.Cancel.REQUESTED
    return jsonify(body), 200 if outcome is js.Cancel.CANCELLED else 202


@bp.get("/<job_id>/deliveries")
@partner_required
def list_deliveries(job_id: str) -> Response:
    """Every HTTP attempt made to deliver the job's webhook, oldest first."""
    return jsonify({"items": delivery_attempts(_own_job(job_id))})


def delivery_attempts(job: js.Job) -> list[dict[str, Any]]:
    """Every HTTP attempt at the job's webhook, oldest first (none without a webhook)."""
    outbox = services().jobs.outbox
    return outbox.attempts(job.event_id) if job.callback_url and job.event_id else []


@bp.post("/<job_id>/redeliver")
@partner_required
def redeliver(job_id: str) -> tuple[Response, int]:
    """Send the job's final webhook again, with the same webhook-id and a fresh budget."""
    job = _own_job(job_id)
    if not job.callback_url or not job.event_id:
        raise Conflict(
            "the job has no webhook to redeliver: it has no callback URL or has not ended"
        )
    outbox = services().jobs.outbox
    delivery = outbox.get(job.event_id)
    if delivery is None or not _reopen(delivery):
        raise Conflict("the webhook is still being delivered; wait for it to be delivered or dead")
    now = outbox.get(delivery.id)
    return jsonify(
        {
            "id": job_id,
            "webhook_id": delivery.id,
            "delivery": now.public() if now is not None else PENDING_DELIVERY,
        }
    ), 202


def _reopen(delivery: Delivery) -> bool:
    outbox = services().jobs.outbox
    if delivery.dead_letter_id:
        letters = DeadLetters(services().redis, outbox=outbox)
        return letters.replay(delivery.dead_letter_id) is not None
    return outbox.reopen(delivery)


@bp.get("")
@partner_required
def list_jobs() -> Response:
    """The partner's jobs, newest first, a page at a time."""
    items, next_cursor = partner_jobs(g.partner_id, request.args.to_dict())
    return jsonify({"items": items, "next_cursor": next_cursor})


def partner_jobs(
    partner_id: str, args: Mapping[str, str]
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the partner's jobs as `GET /v1/jobs` lists them, newest first, by the
    query `args` (`JobListQuery`), and the next page's cursor. The portal's too."""
    query = load(JobListQuery, dict(args))
    jobs = services().jobs
    found, next_cursor = jobs.page(
        partner_id, status=query["status"], limit=query["limit"], cursor=query["cursor"]
    )
    return [jobs.public(read) for read in found], next_cursor
