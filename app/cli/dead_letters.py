"""`postback dead-letters …`: list, show, replay and purge, validated as the API validates."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from app.cli.common import (
    FAILED,
    Command,
    Refused,
    data_dir_option,
    emit,
    missing,
    say,
    validated,
)
from postback.settings import Settings

if TYPE_CHECKING:
    from callbacks.deadletters import DeadLetters, Filter

_CONFIRM = "Purge every dead letter? This cannot be undone. [y/N] "


def add(commands: Any) -> None:
    """Add `dead-letters` and its actions to the `postback` parser's subcommands."""
    from app.cli.circuits import destination

    common = [data_dir_option()]
    dead = commands.add_parser("dead-letters", help="list, show, replay and purge dead letters")
    actions = dead.add_subparsers(required=True, metavar="ACTION")
    listing = actions.add_parser("list", parents=common, help="dead letters, newest first (JSON)")
    _filters(listing, destination)
    listing.add_argument("--limit", type=int, help="at most this many (1 to 100, default 20)")
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    listing.set_defaults(run=_list)
    show = actions.add_parser(
        "show", parents=common, help="one dead letter, with payload and attempt log"
    )
    show.add_argument("dead_letter_id")
    show.set_defaults(run=_show)
    for name, run, verb in (("replay", _replay, "replay"), ("purge", _purge, "delete")):
        action = actions.add_parser(
            name,
            parents=common,
            help=f"{verb} one dead letter by id, or every one matching the filters",
        )
        action.add_argument("dead_letter_id", nargs="?")
        _filters(action, destination)
        action.add_argument("--all", action="store_true", help=f"{verb} all, without filters")
        if name == "replay":
            action.add_argument("--callback-url", help="deliver to this URL instead (by id only)")
        else:
            action.add_argument(
                "--yes", action="store_true", help="purge --all without asking for confirmation"
            )
        action.set_defaults(run=run)


def _filters(parser: argparse.ArgumentParser, destination: Any) -> None:
    parser.add_argument("--partner-id")
    parser.add_argument("--destination", type=destination, help="scheme://host:port, or a URL")
    parser.add_argument("--since", help="ISO 8601 time (died at or after)")
    parser.add_argument("--until", help="ISO 8601 time (died before)")


def _filter_values(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "partner_id": args.partner_id,
        "destination": args.destination,
        "since": args.since,
        "until": args.until,
    }


def _filter_of(args: argparse.Namespace) -> Filter:
    from app.schemas import DeadLetterFilter

    return DeadLetterFilter.to_filter(validated(DeadLetterFilter, _filter_values(args)))


def _has_filters(args: argparse.Namespace) -> bool:
    return any(value is not None for value in _filter_values(args).values())


def _store(command: Command) -> DeadLetters:
    from callbacks.deadletters import DeadLetters

    svc = command.services
    return DeadLetters(svc.redis, outbox=svc.jobs.outbox)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import dead_letter_summary
    from app.schemas import DeadLetterFilter, DeadLetterQuery

    query = validated(
        DeadLetterQuery, {**_filter_values(args), "limit": args.limit, "cursor": args.cursor}
    )
    items, next_cursor = _store(Command(settings)).page(
        DeadLetterFilter.to_filter(query), limit=query["limit"], cursor=query["cursor"]
    )
    emit({"items": [dead_letter_summary(i) for i in items], "next_cursor": next_cursor})
    return 0


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import dead_letter_detail

    store = _store(Command(settings))
    letter = store.get(args.dead_letter_id)
    if letter is None:
        raise missing(f"no dead letter {args.dead_letter_id}")
    emit(dead_letter_detail(letter, store.outbox.attempts(letter.id)))
    return 0


def _replay(args: argparse.Namespace, settings: Settings) -> int:
    return _act(args, settings, "replayed")


def _purge(args: argparse.Namespace, settings: Settings) -> int:
    return _act(args, settings, "purged")


def _act(args: argparse.Namespace, settings: Settings, done: str) -> int:
    command = Command(settings)
    if args.dead_letter_id:
        if _has_filters(args) or args.all:
            raise Refused("give an id or filters, not both")
        if done == "replayed":
            url = _callback_url(command, getattr(args, "callback_url", None))
            ok = _store(command).replay(args.dead_letter_id, url=url) is not None
        else:
            ok = _store(command).delete(args.dead_letter_id)
        if not ok:
            raise missing(f"no dead letter {args.dead_letter_id}")
        emit({done: 1})
        return 0
    if not _has_filters(args) and not args.all:
        raise Refused("give a dead letter id, filters, or --all")
    if getattr(args, "callback_url", None):
        raise Refused("--callback-url applies to one dead letter, by id")
    where = _filter_of(args)
    if done == "purged" and not _has_filters(args) and not (args.yes or _confirmed()):
        say("nothing purged")
        return FAILED
    store = _store(command)
    count = store.replay_matching(where) if done == "replayed" else store.purge(where)
    emit({done: count})
    return 0


def _callback_url(command: Command, url: str | None) -> str | None:
    """`url` checked as `POST /v1/admin/dead-letters/{id}/replay` checks it: its shape,
    then the SSRF rules on the addresses it resolves to."""
    if url is None:
        return None
    from app.errors import ApiError
    from app.schemas import ReplayBody, check_callback_url

    checked = validated(ReplayBody, {"callback_url": url})["callback_url"]
    try:
        check_callback_url(checked, command.services)
    except ApiError as exc:
        raise Refused.from_api(exc) from None
    return str(checked)


def _confirmed() -> bool:
    """Whether the operator answers yes at the terminal; no terminal is a no."""
    if not sys.stdin.isatty():
        say("purging every dead letter needs a yes at a terminal, or --yes")
        return False
    print(_CONFIRM, end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")
