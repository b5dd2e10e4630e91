"""Admin API: partners."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from app.auth import admin_required
from app.errors import NotFound
from app.schemas import PartnerCreate, json_body, load
from app.services import services

bp = Blueprint("partners", __name__, url_prefix="/v1/admin/partners")


@bp.post("")
@admin_required
def create_partner() -> tuple[Response, int]:
    """Create a partner; its API key and signing secret are shown only in this response."""
    body = load(PartnerCreate(), json_body())
    return jsonify(services().partners.create(body["name"])), 201


@bp.post("/<partner_id>/rotate-secret")
@admin_required
def rotate_secret(partner_id: str) -> Response:
    """A new signing secret; the old one keeps signing beside it for the grace period."""
    grace_seconds = services().settings.secret_grace_seconds
    rotated = services().partners.rotate_secret(partner_id, grace_seconds=grace_seconds)
    if rotated is None:
        raise NotFound(f"no partner {partner_id}")
    return jsonify(rotated)
