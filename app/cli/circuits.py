"""`postback circuits list|reset` and `postback status`: what an operator watches."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import Command, data_dir_option, emit, validated
from postback.settings import Settings


def add(commands: Any) -> None:
    """Add `circuits` and `status` to the `postback` parser's subcommands."""
    common = [data_dir_option()]
    circuits = commands.add_parser("circuits", help="list and reset circuit breakers")
    actions = circuits.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", parents=common, help="circuits with failures or open, paged"
    )
    listing.add_argument("--limit", type=int, help="at most this many (1 to 500, default 50)")
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    listing.add_argument(
        "--destination", type=destination, help="only this destination's (scheme://host:port)"
    )
    listing.set_defaults(run=_list)
    reset = actions.add_parser("reset", parents=common, help="close a destination's circuits")
    reset.add_argument("destination", type=destination, help="scheme://host:port, or a URL")
    reset.add_argument("--partner-id", help="only this partner's circuit (default: every one)")
    reset.set_defaults(run=_reset)

    status = commands.add_parser(
        "status", parents=common, help="one screen: Redis, workers, queues, deliveries"
    )
    status.add_argument("--json", action="store_true", help="print the same data as JSON")
    status.set_defaults(run=_status)


def destination(text: str) -> str:
    """`text` reduced to its destination as the API's `destination` fields reduce it; a usage
    error with the API's message if it is none."""
    from marshmallow import ValidationError

    from app.schemas import DestinationField

    try:
        return str(DestinationField().deserialize(text))
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(" ".join(map(str, exc.messages))) from None


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from app.schemas import CircuitQuery
    from callbacks.breaker import CircuitBreaker

    query = validated(
        CircuitQuery,
        {"limit": args.limit, "cursor": args.cursor, "destination": args.destination},
    )
    items, next_cursor = CircuitBreaker(Command(settings).services.redis).page(
        limit=query["limit"], cursor=query["cursor"], destination=query["destination"]
    )
    emit({"items": items, "next_cursor": next_cursor})
    return 0


def _reset(args: argparse.Namespace, settings: Settings) -> int:
    from app.schemas import CircuitReset
    from callbacks.breaker import CircuitBreaker, reset_circuits

    body = validated(CircuitReset, {"destination": args.destination, "partner_id": args.partner_id})
    svc = Command(settings).services
    reset = reset_circuits(
        CircuitBreaker(svc.redis),
        svc.jobs.outbox,
        body["destination"],
        partner_id=body["partner_id"],
    )
    emit({"destination": body["destination"], "reset": reset})
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from app.status import render, snapshot
    from postback.ha import HaSet

    # The data dir's HA set, unless Redis is the operator's own at a URL.
    external = settings.redis_url and not settings.redis_sentinels
    ha = None if external else HaSet.find(settings.data_dir)
    data = snapshot(Command(settings).services.redis, ha=ha)
    if args.json:
        emit(data)
    else:
        render(data)
    return 0
