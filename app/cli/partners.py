"""`postback partners …`: create, list, rotate-secret, rotate-key, disable.

Each calls the same store method as the API's admin endpoint, with the API's
validation and its messages.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from app.cli.common import Command, Refused, data_dir_option, emit, missing, validated
from postback.settings import Settings


def add(commands: Any) -> None:
    """Add `partners` and its actions to the `postback` parser's subcommands."""
    common = [data_dir_option()]
    partners = commands.add_parser("partners", help="manage partners")
    actions = partners.add_subparsers(required=True, metavar="ACTION")
    create = actions.add_parser(
        "create", parents=common, help="create a partner; prints its credentials"
    )
    create.add_argument("name")
    create.set_defaults(run=_create)
    listing = actions.add_parser(
        "list", parents=common, help="partners without their secrets, oldest first (JSON)"
    )
    listing.add_argument("--limit", type=int, help="at most this many (1 to 100, default 20)")
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    listing.set_defaults(run=_list)
    for name, run, text in (
        (
            "rotate-secret",
            _rotate_secret,
            "new signing secret; the old one signs beside it for a grace period",
        ),
        ("rotate-key", _rotate_key, "new API key, shown once; the old one stops working at once"),
        ("disable", _disable, "disable a partner: its API keys stop working; its jobs are kept"),
    ):
        action = actions.add_parser(name, parents=common, help=text)
        action.add_argument("partner_id")
        action.set_defaults(run=run)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    from app.schemas import PartnerCreate

    body = validated(PartnerCreate, {"name": args.name})
    emit(Command(settings).services.partners.create(body["name"]))
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from app.schemas import PartnerListQuery

    query = validated(PartnerListQuery, {"limit": args.limit, "cursor": args.cursor})
    items, next_cursor = Command(settings).services.partners.page(
        limit=query["limit"], cursor=query["cursor"]
    )
    emit({"items": items, "next_cursor": next_cursor})
    return 0


def _rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    store = Command(settings).services.partners
    grace_seconds = settings.secret_grace_seconds
    emit(
        _changed(
            args.partner_id,
            lambda: store.rotate_secret(args.partner_id, grace_seconds=grace_seconds),
        )
    )
    return 0


def _rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    store = Command(settings).services.partners
    emit(_changed(args.partner_id, lambda: store.rotate_key(args.partner_id)))
    return 0


def _disable(args: argparse.Namespace, settings: Settings) -> int:
    if not Command(settings).services.partners.disable(args.partner_id):
        raise missing(f"no partner {args.partner_id}")
    emit({"id": args.partner_id, "disabled": True})
    return 0


def _changed(partner_id: str, change: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """What `change` returned; the API's 409 and 404 as a command's refusals."""
    from app.partners_store import PartnerDisabled

    try:
        changed = change()
    except PartnerDisabled:
        raise Refused(f"partner {partner_id} is disabled", status=1) from None
    if changed is None:
        raise missing(f"no partner {partner_id}")
    return changed
