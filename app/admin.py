"""Admin API: dead letters, circuits, and any partner's job."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required
from app.body import json_body, optional_json_body
from app.errors import NotFound
from app.schemas import (
    CircuitQuery,
    CircuitReset,
    DeadLetterFilter,
    DeadLetterQuery,
    ReplayBody,
    check_callback_url,
    load,
)
from app.services import Services, services
from callbacks.breaker import CircuitBreaker, reset_circuits
from callbacks.deadletters import DeadLetters, Filter
from callbacks.model import Delivery
from postback import clock, ids
from worker.model import JobRead

bp = Blueprint("admin", __name__, url_prefix="/v1/admin")


def dead_letter_summary(letter: Delivery) -> dict[str, Any]:
    """A dead letter as lists show it."""
    return {
        "id": letter.dead_letter_id,
        "job_id": letter.message.subject or None,
        "partner_id": letter.owner,
        "callback_url": letter.url,
        "destination": letter.destination,
        "webhook_id": letter.id,
        "attempts": letter.attempts,
        "last_error": letter.last_error or None,
        "dead_at": clock.rfc3339(letter.dead_at),
    }


def dead_letter_detail(letter: Delivery, attempt_log: list[dict[str, Any]]) -> dict[str, Any]:
    """A dead letter with everything needed to redeliver it."""
    return {
        **dead_letter_summary(letter),
        "created_at": clock.rfc3339(letter.message.created_at),
        "payload": json.loads(letter.message.body),
        "attempt_log": attempt_log,
    }


def dead_letters() -> DeadLetters:
    """The dead-letter store of the current app."""
    return DeadLetters(services().redis, outbox=services().jobs.outbox)


def find_dead_letter(dead_letter_id: str) -> Delivery:
    """The dead letter, or NotFound."""
    letter = dead_letters().get(dead_letter_id)
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return letter


def dead_letter_page(query: dict[str, Any]) -> dict[str, Any]:
    """Dead letters, newest first, as `GET /v1/admin/dead-letters` lists them, for a
    loaded `DeadLetterQuery`: `items` (summaries) and `next_cursor`."""
    items, next_cursor = dead_letters().page(
        DeadLetterFilter.to_filter(query), limit=query["limit"], cursor=query["cursor"]
    )
    return {"items": [dead_letter_summary(i) for i in items], "next_cursor": next_cursor}


def dead_letter_view(dead_letter_id: str) -> dict[str, Any]:
    """One dead letter with its payload and attempt log (`dead_letter_detail`), or NotFound."""
    letter = find_dead_letter(dead_letter_id)
    return dead_letter_detail(letter, dead_letters().outbox.attempts(letter.id))


def delete_dead_letter_by_id(dead_letter_id: str) -> None:
    """Discard a dead letter for good, or NotFound."""
    if not dead_letters().delete(dead_letter_id):
        raise NotFound(f"no dead letter {dead_letter_id}")


def replay_one(dead_letter_id: str, data: Any) -> Delivery:
    """Deliver a dead letter again; `data` is a `ReplayBody` (its `callback_url`, when
    given, must be safe to call: else 422 and nothing changes). Returns the letter
    replayed, or NotFound if it is gone."""
    body = load(ReplayBody, data)
    if body["callback_url"] is not None:
        check_callback_url(body["callback_url"])
    letter = dead_letters().replay(dead_letter_id, url=body["callback_url"])
    if letter is None:
        raise NotFound(f"no dead letter {dead_letter_id}")
    return letter


def dead_letter_filter(data: Any) -> Filter:
    """The dead letters a `DeadLetterFilter` (`data`) selects (422 if it is not one)."""
    return DeadLetterFilter.to_filter(load(DeadLetterFilter, data))


def replay_matching(data: Any) -> int:
    """Replay every dead letter the `DeadLetterFilter` `data` selects; how many."""
    return dead_letters().replay_matching(dead_letter_filter(data))


def purge_matching(data: Any) -> int:
    """Delete every dead letter the `DeadLetterFilter` `data` selects; how many."""
    return dead_letters().purge(dead_letter_filter(data))


def circuit_page(query: dict[str, Any]) -> dict[str, Any]:
    """Circuits as `GET /v1/admin/circuits` lists them, for a loaded `CircuitQuery`."""
    items, next_cursor = CircuitBreaker(services().redis).page(
        limit=query["limit"], cursor=query["cursor"], destination=query["destination"]
    )
    return {"items": items, "next_cursor": next_cursor}


def reset_circuit_by_hand(data: Any) -> dict[str, Any]:
    """Close the circuits a `CircuitReset` (`data`) names: one partner's to a destination,
    or every partner's. Returns the destination and the circuits reset, as they were."""
    body = load(CircuitReset, data)
    circuits = reset_circuits(
        CircuitBreaker(services().redis),
        services().jobs.outbox,
        body["destination"],
        partner_id=body["partner_id"],
    )
    return {"destination": body["destination"], "reset": circuits}


@bp.get("/dead-letters")
@admin_required
def list_dead_letters() -> Response:
    """Dead letters, newest first, filtered by partner, destination and time of death."""
    return jsonify(dead_letter_page(load(DeadLetterQuery, request.args.to_dict())))


@bp.get("/dead-letters/<dead_letter_id>")
@admin_required
def get_dead_letter(dead_letter_id: str) -> Response:
    """One dead letter with its payload and attempt log."""
    return jsonify(dead_letter_view(dead_letter_id))


@bp.delete("/dead-letters/<dead_letter_id>")
@admin_required
def delete_dead_letter(dead_letter_id: str) -> tuple[str, int]:
    """Discard a dead letter for good."""
    delete_dead_letter_by_id(dead_letter_id)
    return "", 204


@bp.post("/dead-letters/<dead_letter_id>/replay")
@admin_required
def replay_dead_letter(dead_letter_id: str) -> tuple[Response, int]:
    """Deliver a dead letter again, optionally to a corrected callback URL."""
    letter = replay_one(dead_letter_id, optional_json_body())
    return jsonify({"id": dead_letter_id, "webhook_id": letter.id, "replayed": 1}), 202


@bp.post("/dead-letters/replay")
@admin_required
def replay_dead_letters() -> tuple[Response, int]:
    """Replay every dead letter that matches the filter."""
    return jsonify({"replayed": replay_matching(optional_json_body())}), 202


@bp.get("/circuits")
@admin_required
def list_circuits() -> Response:
    """Circuits with recorded failures or open, by destination then partner, a page at a time."""
    return jsonify(circuit_page(load(CircuitQuery, request.args.to_dict())))


@bp.post("/circuits/reset")
@admin_required
def reset_circuit() -> Response:
    """Close a destination's circuits (one partner's, or every partner's) by hand."""
    return jsonify(reset_circuit_by_hand(json_body()))


def admin_job_view(svc: Services, job_id: str) -> dict[str, Any] | None:
    """Any partner's job as `GET /v1/jobs/{id}` returns it to that partner, plus its
    `partner_id`; None if there is no such job."""
    found = svc.jobs.read(job_id) if ids.is_id("job", job_id) else None
    return admin_view(svc, found) if found is not None else None


def admin_view(svc: Services, found: JobRead) -> dict[str, Any]:
    """A job read as `GET /v1/jobs/{id}` shows it to its partner, plus its `partner_id`."""
    return {**svc.jobs.public(found), "partner_id": found.job.partner_id}


@bp.get("/jobs/<job_id>")
@admin_required
def get_job(job_id: str) -> Response:
    """One job of any partner, as its partner sees it, with the partner's id (for support)."""
    found = admin_job_view(services(), job_id)
    if found is None:
        raise NotFound(f"no job {job_id}")
    return jsonify(found)
