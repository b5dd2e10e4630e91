"""Admin API: partners."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app.auth import admin_required
from app.body import json_body
from app.errors import Conflict, NotFound
from app.partners_store import PartnerDisabled
from app.schemas import PartnerCreate, PartnerListQuery, load
from app.services import services
from callbacks.secrets import TooManySecrets

bp = Blueprint("partners", __name__, url_prefix="/v1/admin/partners")


@bp.post("")
@admin_required
def create_partner() -> tuple[Response, int]:
    """Create a partner; its API key and signing secret are shown only in this response."""
    body = load(PartnerCreate, json_body())
    return jsonify(services().partners.create(body["name"])), 201


@bp.post("/<partner_id>/rotate-secret")
@admin_required
def rotate_secret(partner_id: str) -> Response:
    """A new signing secret; every earlier one keeps signing until its own grace ends."""
    grace_seconds = services().settings.secret_grace_seconds
    store = services().partners
    return jsonify(
        _changed(partner_id, lambda: store.rotate_secret(partner_id, grace_seconds=grace_seconds))
    )


@bp.post("/<partner_id>/expire-secrets")
@admin_required
def expire_secrets(partner_id: str) -> Response:
    """End the grace of every rotated-out secret now: only the newest secret signs."""
    return jsonify(_changed(partner_id, lambda: services().partners.expire_secrets(partner_id)))


@bp.post("/<partner_id>/rotate-key")
@admin_required
def rotate_key(partner_id: str) -> Response:
    """A new API key, shown once; the old key stops working at once."""
    return jsonify(_changed(partner_id, lambda: services().partners.rotate_key(partner_id)))


@bp.delete("/<partner_id>")
@admin_required
def disable_partner(partner_id: str) -> tuple[str, int]:
    """Disable a partner: its API keys stop working at once; its jobs are kept."""
    if not services().partners.disable(partner_id):
        raise NotFound(f"no partner {partner_id}")
    return "", 204


@bp.get("")
@admin_required
def list_partners() -> Response:
    """Partners without their secrets, oldest first, a page at a time."""
    query = load(PartnerListQuery, request.args.to_dict())
    items, next_cursor = services().partners.page(limit=query["limit"], cursor=query["cursor"])
    return jsonify({"items": items, "next_cursor": next_cursor})


def _changed(partner_id: str, change: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    try:
        changed = change()
    except PartnerDisabled:
        raise Conflict(f"partner {partner_id} is disabled") from None
    except TooManySecrets as exc:
        raise Conflict(
            f"{exc.count} secrets of partner {partner_id} already sign, the most there may be;"
            f" expire them first (POST /v1/admin/partners/{partner_id}/expire-secrets)"
        ) from None
    if changed is None:
        raise NotFound(f"no partner {partner_id}")
    return changed
