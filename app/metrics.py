"""`GET /metrics`: Prometheus text exposition of the totals every process recorded in Redis.

Counters and histograms are read from `pb:metrics:*` (`postback.metrics`) on
each scrape; gauges (queue depths, workers, dead letters, …) are computed from
Redis at that moment (`app.status`). So any API process answers for the whole
system, and scraping one of them is enough.

With `POSTBACK_METRICS_TOKEN` set, a scrape needs `Authorization: Bearer <token>`;
unset, `/metrics` is open.
"""

from __future__ import annotations

import hmac
from collections import defaultdict
from collections.abc import Iterator

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from app import status
from app.auth import _bearer
from app.errors import Unauthorized
from app.services import services
from postback import metrics as pm

bp = Blueprint("metrics", __name__)


class RedisCollector(Collector):
    """Yields every Postback metric, as stored in (or computed from) Redis now."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def collect(self) -> Iterator[Metric]:
        stored = self._stored()
        for metric in pm.CATALOGUE.values():
            values = stored.get(metric.name, {})
            if metric.kind == pm.COUNTER:
                yield _counter(metric, values)
            else:
                yield _histogram(metric, values)
        yield from self._gauges()

    def _stored(self) -> dict[str, dict[str, str]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in pm.CATALOGUE:
                pipe.hgetall(pm.key(name))
            replies = pipe.execute()
        return {
            name: {k.decode(): v.decode() for k, v in reply.items()}
            for name, reply in zip(pm.CATALOGUE, replies, strict=True)
        }

    def _gauges(self) -> Iterator[Metric]:
        client = self.redis
        queues = status.queues(client)
        depth = GaugeMetricFamily(
            "postback_queue_depth", "Jobs waiting on each queue.", labels=["queue"]
        )
        oldest = GaugeMetricFamily(
            "postback_queue_oldest_age_seconds",
            "How long the job at the head of each queue has waited (0 when empty).",
            labels=["queue"],
        )
        for name, queue in queues.items():
            depth.add_metric([name], queue["depth"])
            oldest.add_metric([name], queue["oldest_age_seconds"] or 0.0)
        yield depth
        yield oldest
        for name, help_, value in (
            ("postback_workers", "Workers alive.", status.workers(client)),
            ("postback_jobs_processing", "Jobs running now.", status.jobs_processing(client)),
            (
                "postback_job_retries_scheduled",
                "Jobs waiting out a retry delay.",
                status.job_retries_scheduled(client),
            ),
            (
                "postback_deliveries_scheduled",
                "Webhooks not yet delivered or dead (due, in flight or awaiting a retry).",
                status.deliveries(client)["scheduled"],
            ),
            ("postback_dead_letters", "Dead letters stored.", status.dead_letters(client)),
            (
                "postback_open_circuits",
                "Circuits (partner and destination) open or half-open.",
                status.open_circuit_count(client),
            ),
        ):
            yield GaugeMetricFamily(name, help_, value=value)


def _by_labels(values: dict[str, str]) -> dict[str, dict[str, str]]:
    """Histogram fields grouped by label string: `{labels: {bucket or sum/count: value}}`."""
    grouped: dict[str, dict[str, str]] = defaultdict(dict)
    for field, value in values.items():
        labels, _, part = field.rpartition("|")
        grouped[labels][part] = value
    return grouped


def _label_values(metric: pm.Metric, text: str) -> list[str]:
    labels = pm.parse_label_string(text)
    return [labels.get(name, "") for name in metric.labels]


def _counter(metric: pm.Metric, values: dict[str, str]) -> CounterMetricFamily:
    family = CounterMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    if not metric.labels and not values:
        values = {"": "0"}
    for text, value in sorted(values.items()):
        family.add_metric(_label_values(metric, text), float(value))
    return family


def _histogram(metric: pm.Metric, values: dict[str, str]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(metric.name, metric.help, labels=list(metric.labels))
    grouped = _by_labels(values)
    if not metric.labels and not grouped:
        grouped = {"": {}}
    for text, parts in sorted(grouped.items()):
        cumulative = 0.0
        buckets = []
        for bound in pm.BUCKETS_SECONDS:
            cumulative += float(parts.get(repr(bound), 0))
            buckets.append((floatToGoString(bound), cumulative))
        cumulative += float(parts.get(pm.INF, 0))
        buckets.append(("+Inf", cumulative))
        family.add_metric(
            _label_values(metric, text), buckets, sum_value=float(parts.get("sum", 0))
        )
    return family


def _check_token() -> None:
    expected = services().settings.metrics_token
    if not expected:
        return
    if not hmac.compare_digest(_bearer().encode(), expected.encode()):
        raise Unauthorized("the metrics token is not valid")


@bp.get("/metrics")
def scrape() -> Response:
    """Every metric in Prometheus text format, read from Redis now."""
    _check_token()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(services().redis))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
