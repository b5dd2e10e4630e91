"""The commands that run Postback's processes: up, serve, worker, deliver."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import data_dir_option
from postback.connection import connect, redis_target
from postback.settings import Settings


def add(commands: Any) -> None:
    """Add the process commands to the `postback` parser's subcommands."""
    common = [data_dir_option()]
    up = commands.add_parser("up", parents=common, help="run everything on this machine")
    up.add_argument("--host", default="127.0.0.1", help="API address (default 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    up.add_argument("--workers", type=_count, default=1, help="worker processes (default 1)")
    up.add_argument(
        "--replicas",
        type=_count,
        default=0,
        help="run Redis as a primary, N replicas and 3 Sentinels, to try failover (default 0: "
        "one server)",
    )
    up.set_defaults(run=_up)

    serve = commands.add_parser("serve", parents=common, help="run the API alone, under gunicorn")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    worker = commands.add_parser(
        "worker", parents=common, help="run one worker: jobs and webhook deliveries"
    )
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    worker.set_defaults(run=_worker)

    deliver = commands.add_parser(
        "deliver", parents=common, help="run one more delivery process (webhooks only)"
    )
    deliver.set_defaults(run=_deliver)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from app.supervisor import Supervisor

    return Supervisor(
        settings,
        data_dir=settings.data_dir.resolve(),
        host=args.host,
        port=args.port,
        workers=args.workers,
        replicas=args.replicas,
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


def client(settings: Settings) -> Any:
    """A client of the system's Redis, with the configured timeouts."""
    return connect(redis_target(settings), timeout_seconds=settings.redis_timeout_seconds)
