"""Console: the overview (`/console`), what `postback status` shows, and the last hour.

The live figures come from the same readers as `postback status` and the gauges
of `GET /metrics` (`app.status`), so all three always agree; the charts from the
per-minute buckets of `postback.metrics`. The live part of the page refreshes by
itself (`data-refresh`); the page works without script too.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, request

from app import status
from app.console import web
from app.console.charts import Chart, chart
from app.console.sessions import Kind
from app.services import services
from postback import metrics as pm

bp = Blueprint("console_overview", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")

# How many open circuits the overview lists (it counts them all).
OPEN_CIRCUITS_LISTED = 5
CHART_MINUTES = 60
REFRESH_SECONDS = 5


def live(client: redis.Redis) -> dict[str, Any]:
    """The figures of `postback status` but Redis's own (as `status.snapshot` names them),
    with only the first `OPEN_CIRCUITS_LISTED` open circuits."""
    return {
        "workers": status.workers(client),
        "queues": status.queues(client),
        "jobs_processing": status.jobs_processing(client),
        "job_retries_scheduled": status.job_retries_scheduled(client),
        "deliveries": status.deliveries(client),
        "dead_letters": status.dead_letters(client),
        "open_circuits": status.open_circuits(client, limit=OPEN_CIRCUITS_LISTED),
        "open_circuit_count": status.open_circuit_count(client),
    }


def charts(client: redis.Redis, *, now: float | None = None) -> list[Chart]:
    """The last hour of jobs submitted, jobs finished by status, attempts by outcome."""
    last_hour = pm.series_of(
        client,
        (
            "postback_jobs_submitted_total",
            "postback_jobs_finished_total",
            "postback_delivery_attempts_total",
        ),
        CHART_MINUTES,
        now=now,
    )
    return [
        chart("chart-submitted", "Jobs submitted", last_hour["postback_jobs_submitted_total"]),
        chart(
            "chart-finished",
            "Jobs finished",
            last_hour["postback_jobs_finished_total"],
            label="status",
        ),
        chart(
            "chart-attempts",
            "Delivery attempts",
            last_hour["postback_delivery_attempts_total"],
            label="outcome",
        ),
    ]


@bp.get("")
@web.signed_in(Kind.ADMIN)
def show() -> tuple[str, int]:
    """The page; asked by its own script for one part (`X-Console-Refresh: live` every
    5 s, `charts` every minute), only that part is read and drawn."""
    client = services().redis
    part = request.headers.get(web.REFRESH_HEADER)
    return web.page(
        "console/overview.html",
        live=live(client) if part != "charts" else None,
        charts=charts(client) if part != "live" else None,
        refresh_seconds=REFRESH_SECONDS,
        chart_minutes=CHART_MINUTES,
    )
