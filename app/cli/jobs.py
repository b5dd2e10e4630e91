"""`postback jobs show ID`: a partner's job as an admin sees it (`GET /v1/admin/jobs/{id}`)."""

from __future__ import annotations

import argparse
from typing import Any

from app.cli.common import Command, data_dir_option, emit, missing
from postback.settings import Settings


def add(commands: Any) -> None:
    """Add `jobs` and its actions to the `postback` parser's subcommands."""
    jobs = commands.add_parser("jobs", help="look at any partner's jobs")
    actions = jobs.add_subparsers(required=True, metavar="ACTION")
    show = actions.add_parser(
        "show", parents=[data_dir_option()], help="one job as its partner sees it, with partner_id"
    )
    show.add_argument("job_id")
    show.set_defaults(run=_show)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from app.admin import admin_job_view

    found = admin_job_view(Command(settings).services, args.job_id)
    if found is None:
        raise missing(f"no job {args.job_id}")
    emit(found)
    return 0
