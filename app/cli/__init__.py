"""The `postback` command: up, serve, worker, deliver, partners, jobs, dead-letters, circuits,
status, listen, failover.

The command line is a composition root of its own: `main` reads and checks the
settings once (the handler modules imported included), then runs one command,
which builds its services through the API's factory (`app.cli.common.Command`).
Modules: `processes` (up, serve, worker, deliver), `partners`, `jobs`,
`dead_letters`, `circuits` (with `status`), `listen` (a partner's client of the API, with
`listen_state`), `failover` (Sentinel), `common`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import redis

from app.cli import circuits, dead_letters, failover, jobs, listen, partners, processes
from app.cli.common import FAILED, REFUSED, Refused, say
from postback import __version__
from postback.connection import RedisNotFound, describe, redis_target
from postback.faults import classify
from postback.settings import Settings, SettingsError, check_handler_modules

__all__ = ["main"]

# Kept for callers that want the command line's client (the one `deliver` uses).
_client = processes.client

# Commands import what they use when they run: `postback serve` must reach
# gunicorn's gevent workers with as little imported as possible (they patch
# the standard library, which modules imported before cannot see).


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `postback` command `argv` (default: this process's arguments); its exit status."""
    args = _parser().parse_args(argv)
    try:
        overrides = {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}
        settings = Settings.from_env(**overrides)
        check_handler_modules(settings)
    except SettingsError as exc:
        say(str(exc))
        return REFUSED
    try:
        return int(args.run(args, settings))
    except Refused as exc:
        say(exc.message)
        return exc.status
    except RedisNotFound as exc:
        say(str(exc))
        return REFUSED
    except redis.RedisError as exc:
        found = classify(exc, timeout_seconds=settings.redis_timeout_seconds)
        if found is None:
            raise
        say(f"{found.detail}: {describe(redis_target(settings))} ({exc})")
        return FAILED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="postback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"postback {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    processes.add(commands)
    partners.add(commands)
    jobs.add(commands)
    dead_letters.add(commands)
    circuits.add(commands)
    listen.add(commands)
    failover.add(commands)
    return parser
