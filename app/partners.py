"""Admin API: partners.

Each change is one function here (`create`, `rotate_key`, `rotate_secret`,
`disable`, `portal_link`, `listing`) that both the API's views and the console's
partners page call, so the two validate and answer alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flask import Blueprint, Response, jsonify, request

from app import links
from app.auth import admin_required
from app.body import json_body
from app.errors import Conflict, NotFound
from app.partners_store import PartnerDisabled
from app.portal_links import PortalLink, PortalLinks
from app.schemas import PartnerCreate, PartnerListQuery, load
from app.services import services
from callbacks.secrets import TooManySecrets

bp = Blueprint("partners", __name__, url_prefix="/v1/admin/partners")


def create(data: Any) -> dict[str, Any]:
    """A new partner from `data` (validated by `PartnerCreate`), with its API key and
    signing secret: the only time either is shown."""
    body = load(PartnerCreate, data)
    return services().partners.create(body["name"])


def rotate_key(partner_id: str) -> dict[str, Any]:
    """A new API key, to be shown once; the old one stops working at once."""
    return _changed(partner_id, lambda: services().partners.rotate_key(partner_id))


def rotate_secret(partner_id: str) -> dict[str, Any]:
    """A new signing secret, to be shown once; the one it replaces signs beside it for
    `POSTBACK_SECRET_GRACE_SECONDS`."""
    grace_seconds = services().settings.secret_grace_seconds
    store = services().partners
    return _changed(
        partner_id, lambda: store.rotate_secret(partner_id, grace_seconds=grace_seconds)
    )


def expire_secrets(partner_id: str) -> dict[str, Any]:
    """End the grace of every rotated-out secret now."""
    return _changed(partner_id, lambda: services().partners.expire_secrets(partner_id))


def disable(partner_id: str) -> None:
    """Disable a partner (again, if it is): NotFound if there is no such partner."""
    if not services().partners.disable(partner_id):
        raise NotFound(f"no partner {partner_id}")


def listing(args: Mapping[str, str]) -> tuple[list[dict[str, Any]], str | None]:
    """A page of partners, oldest first, by the query `args` (`PartnerListQuery`)."""
    query = load(PartnerListQuery, dict(args))
    return services().partners.page(limit=query["limit"], cursor=query["cursor"])


def portal_links() -> PortalLinks:
    """The portal's links, valid for `POSTBACK_PORTAL_LINK_TTL_SECONDS`."""
    svc = services()
    return PortalLinks(svc.redis, ttl_seconds=svc.settings.portal_link_ttl_seconds)


def portal_link(partner_id: str) -> PortalLink:
    """A signed link that opens the partner's portal: NotFound if there is no such
    partner, Conflict if it is disabled."""
    partner = services().partners.get(partner_id)
    if partner is None:
        raise NotFound(f"no partner {partner_id}")
    if partner["disabled"]:
        raise PartnerDisabled(partner_id)
    return portal_links().make(links.base_url(services().settings), partner_id)


@bp.post("")
@admin_required
def create_partner() -> tuple[Response, int]:
    """Create a partner; its API key and signing secret are shown only in this response."""
    return jsonify(create(json_body())), 201


@bp.post("/<partner_id>/rotate-secret")
@admin_required
def rotate_partner_secret(partner_id: str) -> Response:
    """A new signing secret; every earlier one keeps signing until its own grace ends."""
    return jsonify(rotate_secret(partner_id))


@bp.post("/<partner_id>/expire-secrets")
@admin_required
def expire_partner_secrets(partner_id: str) -> Response:
    """End the grace of every rotated-out secret now: only the newest secret signs."""
    return jsonify(expire_secrets(partner_id))


@bp.post("/<partner_id>/rotate-key")
@admin_required
def rotate_partner_key(partner_id: str) -> Response:
    """A new API key, shown once; the old key stops working at once."""
    return jsonify(rotate_key(partner_id))


@bp.delete("/<partner_id>")
@admin_required
def disable_partner(partner_id: str) -> tuple[str, int]:
    """Disable a partner: its API keys stop working at once; its jobs are kept."""
    disable(partner_id)
    return "", 204


@bp.post("/<partner_id>/portal-link")
@admin_required
def create_portal_link(partner_id: str) -> Response:
    """A link that opens the partner's portal, valid for POSTBACK_PORTAL_LINK_TTL_SECONDS."""
    return jsonify(portal_link(partner_id).as_json())


@bp.get("")
@admin_required
def list_partners() -> Response:
    """Partners without their secrets, oldest first, a page at a time."""
    items, next_cursor = listing(request.args.to_dict())
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
