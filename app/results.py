"""Large results, served by signed, expiring links (no API key needed)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.errors import LinkExpired, NotFound
from app.services import services
from worker.jobs import COMPLETED
from worker.results import BadSignature, SignatureExpired

bp = Blueprint("results", __name__, url_prefix="/v1/results")


@bp.get("/<token>")
def get_result(token: str) -> Response:
    """The result a link points to; 410 once the link expired, 404 if it was tampered with."""
    jobs = services().jobs
    try:
        job_id = jobs.links.job_id(token)
    except SignatureExpired:
        raise LinkExpired(
            "this result link has expired; GET the job for a fresh one", kind="result link"
        ) from None
    except BadSignature:
        raise NotFound("no such result", kind="result") from None
    found = jobs.result(job_id)
    if found is None or found[0] != COMPLETED:
        raise NotFound("no such result", kind="result", id=job_id)
    return jsonify(found[1])
