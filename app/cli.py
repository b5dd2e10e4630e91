"""The `postback` command: up, serve, worker, deliver, partners, dead-letters, circuits, status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from callbacks.errors import UnsafeUrl
from callbacks.ssrf import checked_destination
from postback.connection import RedisNotFound, connect, redis_url
from postback.faults import classify
from postback.settings import Settings, SettingsError

if TYPE_CHECKING:
    from callbacks.deadletters import DeadLetters, Filter

# Commands import what they use when they run: `postback serve` must reach
# gunicorn's gevent workers with as little imported as possible (they patch
# the standard library, which modules imported before cannot see).


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    try:
        return args.run(args, settings)
    except RedisNotFound as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
        if found is None:
            raise
        print(f"postback: {found.detail}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postback", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run everything on this machine")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--data-dir", type=Path, help="default $POSTBACK_DATA_DIR or ./.postback")
    up.add_argument("--workers", type=_count, default=1, help="worker processes (default 1)")
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", help="run the API alone, under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    worker = commands.add_parser("worker", help="run one worker: jobs and webhook deliveries")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(run=_worker)

    deliver = commands.add_parser("deliver", help="run one more delivery process (webhooks only)")
    deliver.set_defaults(run=_deliver)

    partners = commands.add_parser("partners", help="manage partners")
    partner_commands = partners.add_subparsers(required=True, metavar="ACTION")
    create = partner_commands.add_parser("create", help="create a partner; prints its credentials")
    create.add_argument("name")
    create.set_defaults(run=_partners_create)
    rotate = partner_commands.add_parser(
        "rotate-secret", help="new signing secret; the old one signs beside it for a grace period"
    )
    rotate.add_argument("partner_id")
    rotate.set_defaults(run=_partners_rotate_secret)

    dead = commands.add_parser("dead-letters", help="list, show, replay and purge dead letters")
    dead_commands = dead.add_subparsers(required=True, metavar="ACTION")
    listing = dead_commands.add_parser("list", help="dead letters, newest first (JSON)")
    _filters(listing)
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--cursor")
    listing.set_defaults(run=_dead_list)
    show = dead_commands.add_parser("show", help="one dead letter, with payload and attempt log")
    show.add_argument("dead_letter_id")
    show.set_defaults(run=_dead_show)
    for name, run, verb in (("replay", _dead_replay, "replay"), ("purge", _dead_purge, "delete")):
        action = dead_commands.add_parser(
            name, help=f"{verb} one dead letter by id, or every one matching the filters"
        )
        action.add_argument("dead_letter_id", nargs="?")
        _filters(action)
        action.add_argument("--all", action="store_true", help=f"{verb} all, without filters")
        if name == "replay":
            action.add_argument("--callback-url", help="deliver to this URL instead (by id only)")
        action.set_defaults(run=run)

    circuits = commands.add_parser("circuits", help="list and reset circuit breakers")
    circuit_commands = circuits.add_subparsers(required=True, metavar="ACTION")
    listing = circuit_commands.add_parser("list", help="circuits with failures or open, paged")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    listing.add_argument(
        "--destination", type=_destination, help="only this destination's (scheme://host:port)"
    )
    listing.set_defaults(run=_circuits_list)
    reset = circuit_commands.add_parser("reset", help="close a destination's circuits")
    reset.add_argument("destination", type=_destination, help="scheme://host:port, or a URL")
    reset.add_argument("--partner-id", help="only this partner's circuit (default: every one)")
    reset.set_defaults(run=_circuits_reset)

    status = commands.add_parser("status", help="one screen: Redis, workers, queues, deliveries")
    status.add_argument("--json", action="store_true", help="print the same data as JSON")
    status.set_defaults(run=_status)
    return parser


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--partner-id")
    parser.add_argument("--destination", type=_destination, help="scheme://host:port, or a URL")
    parser.add_argument("--since", type=_moment, help="ISO 8601 time (died at or after)")
    parser.add_argument("--until", type=_moment, help="ISO 8601 time (died before)")


def _destination(text: str) -> str:
    try:
        return checked_destination(text)
    except UnsafeUrl as exc:
        raise argparse.ArgumentTypeError(f"not a destination: {exc.reason}") from None


def _moment(text: str) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _filter_of(args: argparse.Namespace) -> Filter:
    from callbacks.deadletters import Filter

    return Filter(
        owner=args.partner_id,
        destination=args.destination,
        since=args.since,
        until=args.until,
    )


def _has_filters(args: argparse.Namespace) -> bool:
    return any((args.partner_id, args.destination, args.since, args.until))


def _print(value: object) -> None:
    print(json.dumps(value, indent=2))


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from app.supervisor import Supervisor

    data_dir = (args.data_dir or settings.data_dir).resolve()
    return Supervisor(
        settings, data_dir=data_dir, host=args.host, port=args.port, workers=args.workers
    ).run()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from app.server import serve

    serve(settings, host=args.host, port=args.port)
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    from worker.entry import work

    return work(settings, burst=args.burst)


def _deliver(args: argparse.Namespace, settings: Settings) -> int:
    from worker.entry import deliver

    return deliver(settings)


def _client(settings: Settings) -> redis.Redis:
    """A client of the system's Redis, with the configured timeouts."""
    return connect(redis_url(settings), timeout_seconds=settings.redis_timeout_seconds)


def _partners_create(args: argparse.Namespace, settings: Settings) -> int:
    from app.partners_store import PartnerStore

    partner = PartnerStore(_client(settings)).create(args.name)
    _print(partner)
    return 0


def _partners_rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    from app.partners_store import PartnerDisabled, PartnerStore

    store = PartnerStore(_client(settings))
    try:
        rotated = store.rotate_secret(args.partner_id, grace_seconds=settings.secret_grace_seconds)
    except PartnerDisabled:
        print(f"postback: partner {args.partner_id} is disabled", file=sys.stderr)
        return 1
    if rotated is None:
        print(f"postback: no partner {args.partner_id}", file=sys.stderr)
        return 1
    _print(rotated)
    return 0


def _dead_letters(settings: Settings) -> DeadLetters:
    from callbacks.deadletters import DeadLetters
    from worker.process import outbox as postback_outbox

    client = _client(settings)
    return DeadLetters(client, outbox=postback_outbox(client))


def _dead_list(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import dead_letter_summary

    items, next_cursor = _dead_letters(settings).page(
        _filter_of(args), limit=args.limit, cursor=args.cursor
    )
    _print({"items": [dead_letter_summary(i) for i in items], "next_cursor": next_cursor})
    return 0


def _dead_show(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import dead_letter_detail

    store = _dead_letters(settings)
    letter = store.get(args.dead_letter_id)
    if letter is None:
        print(f"postback: no dead letter {args.dead_letter_id}", file=sys.stderr)
        return 1
    _print(dead_letter_detail(letter, store.outbox.attempts(letter.id)))
    return 0


def _dead_replay(args: argparse.Namespace, settings: Settings) -> int:
    return _dead_action(args, settings, "replayed")


def _dead_purge(args: argparse.Namespace, settings: Settings) -> int:
    return _dead_action(args, settings, "purged")


def _dead_action(args: argparse.Namespace, settings: Settings, done: str) -> int:
    store = _dead_letters(settings)
    if args.dead_letter_id:
        if _has_filters(args) or args.all:
            print("postback: give an id or filters, not both", file=sys.stderr)
            return 2
        if done == "replayed":
            ok = store.replay(args.dead_letter_id, url=args.callback_url) is not None
        else:
            ok = store.delete(args.dead_letter_id)
        if not ok:
            print(f"postback: no dead letter {args.dead_letter_id}", file=sys.stderr)
            return 1
        _print({done: 1})
        return 0
    if not _has_filters(args) and not args.all:
        print("postback: give a dead letter id, filters, or --all", file=sys.stderr)
        return 2
    if getattr(args, "callback_url", None):
        print("postback: --callback-url applies to one dead letter, by id", file=sys.stderr)
        return 2
    where = _filter_of(args)
    count = store.replay_matching(where) if done == "replayed" else store.purge(where)
    _print({done: count})
    return 0


def _circuits_list(args: argparse.Namespace, settings: Settings) -> int:
    from callbacks.breaker import CircuitBreaker

    items, next_cursor = CircuitBreaker(_client(settings)).page(
        limit=args.limit,
        cursor=args.cursor,
        destination=args.destination,
    )
    _print({"items": items, "next_cursor": next_cursor})
    return 0


def _circuits_reset(args: argparse.Namespace, settings: Settings) -> int:
    from callbacks.breaker import CircuitBreaker, reset_circuits
    from worker.process import outbox as postback_outbox

    client = _client(settings)
    outbox = postback_outbox(client)
    reset = reset_circuits(
        CircuitBreaker(client), outbox, args.destination, partner_id=args.partner_id
    )
    _print({"destination": args.destination, "reset": reset})
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from app.status import render, snapshot

    data = snapshot(_client(settings))
    if args.json:
        _print(data)
    else:
        render(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
