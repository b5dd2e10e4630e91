"""The `postback` command: up, serve, worker, partners."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from postback.connection import RedisNotFound, connect, redis_url
from postback.settings import Settings, SettingsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.run(args, settings)
    except (SettingsError, RedisNotFound) as exc:
        print(f"postback: {exc}", file=sys.stderr)
        return 2


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

    partners = commands.add_parser("partners", help="manage partners")
    partner_commands = partners.add_subparsers(required=True, metavar="ACTION")
    create = partner_commands.add_parser("create", help="create a partner; prints its credentials")
    create.add_argument("name")
    create.set_defaults(run=_partners_create)
    return parser


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
    from postback.logs import configure_logging
    from worker.process import run

    configure_logging(settings.log_level)
    run(settings, connect(redis_url(settings)), burst=args.burst)
    return 0


def _partners_create(args: argparse.Namespace, settings: Settings) -> int:
    from app.partners_store import PartnerStore

    partner = PartnerStore(connect(redis_url(settings))).create(args.name)
    print(json.dumps(partner, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
