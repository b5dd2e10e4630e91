"""Counters and histograms whose state lives in Redis, so every process adds to one total.

The API processes, every worker and every delivery thread record into the same
hashes, and `GET /metrics` (`app.metrics`) reads them back on each scrape: what
it shows is the state read from Redis, not one process's memory.

Keys: `pb:metrics:{name}`, one hash per metric. A counter's fields are its
canonical label strings (`status=completed,type=echo`; `""` without labels);
a histogram's are `{labels}|{upper bound}` (a count per bucket, not
cumulative), `{labels}|sum` and `{labels}|count`.

Label values come from small fixed sets (job types, statuses, outcomes), never
job ids or URLs: each metric declares its label names in `CATALOGUE`, and a
value that does not look like a short name is recorded as `other`.

The counters the console charts (`Metric.per_minute`) are also added to a
per-minute bucket: one hash per minute, `pb:metrics:minute:{epoch minute}`,
field `{name}|{labels}`, expiring `MINUTE_BUCKET_TTL_SECONDS` after its last
write, so at most about two hours of buckets exist whatever the traffic.
`series` reads the last hour of one counter back, one total per minute. The cost:
two more commands (HINCRBY, EXPIRE) in the same pipeline or transaction as each
such counter's own write, and about 120 small hashes in Redis.

Recording never breaks the caller: a Redis error is logged and the sample is lost.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import redis

from postback import clock

log = logging.getLogger(__name__)

KEY_PREFIX = "pb:metrics:"
MINUTE_KEY_PREFIX = KEY_PREFIX + "minute:"
# A minute's bucket outlives the hour `series` reads by an hour: it cannot pile up.
MINUTE_BUCKET_TTL_SECONDS = 2 * 3600
SERIES_MAX_MINUTES = 120
COUNTER = "counter"
HISTOGRAM = "histogram"

# Upper bounds (seconds) of histogram buckets; "+Inf" catches the rest.
BUCKETS_SECONDS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)
INF = "+Inf"
OTHER = "other"

_NAME_LIKE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")

Client = redis.Redis | redis.client.Pipeline


@dataclass(frozen=True)
class Metric:
    """One metric Postback records: its kind, meaning and label names."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...] = ()
    # Also counted per minute, for the console's charts (see `series`).
    per_minute: bool = False


CATALOGUE: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "postback_jobs_submitted_total",
            COUNTER,
            "Jobs accepted (202).",
            ("type",),
            per_minute=True,
        ),
        Metric(
            "postback_jobs_finished_total",
            COUNTER,
            "Jobs that reached a terminal status.",
            ("type", "status"),
            per_minute=True,
        ),
        Metric(
            "postback_jobs_recovered_total",
            COUNTER,
            "Running jobs queued again after their lease lapsed (worker lost).",
        ),
        Metric(
            "postback_jobs_worker_lost_total",
            COUNTER,
            "Jobs failed with worker_lost after their last lease lapsed.",
        ),
        Metric(
            "postback_idempotent_replays_total",
            COUNTER,
            "Submissions answered with a stored response (Idempotency-Key replay).",
        ),
        Metric("postback_rate_limited_total", COUNTER, "Partner requests refused with 429."),
        Metric(
            "postback_delivery_attempts_total",
            COUNTER,
            "Webhook delivery attempts, by outcome.",
            ("outcome",),
            per_minute=True,
        ),
        Metric(
            "postback_job_run_seconds", HISTOGRAM, "Time a job's handler ran, per run.", ("type",)
        ),
        Metric(
            "postback_job_queue_wait_seconds",
            HISTOGRAM,
            "Time from submission to a job's first start.",
            ("priority",),
        ),
        Metric(
            "postback_delivery_attempt_seconds",
            HISTOGRAM,
            "Duration of one webhook delivery attempt.",
        ),
        Metric(
            "postback_delivery_lag_seconds",
            HISTOGRAM,
            "Time from a webhook's event being created to its successful delivery.",
        ),
    )
}


def key(name: str) -> str:
    """The Redis hash that holds metric `name`."""
    return KEY_PREFIX + name


def minute_key(epoch_minute: int) -> str:
    """The Redis hash of one minute's buckets (`epoch_minute`: whole minutes since the epoch)."""
    return f"{MINUTE_KEY_PREFIX}{epoch_minute}"


def label_string(labels: Mapping[str, str]) -> str:
    """The canonical field for a label set: `a=x,b=y`, names sorted, odd values as `other`."""
    return ",".join(f"{n}={_bounded(str(labels[n]))}" for n in sorted(labels))


def parse_label_string(text: str) -> dict[str, str]:
    """The labels of a canonical label string (the inverse of `label_string`)."""
    return dict(part.split("=", 1) for part in text.split(",") if part)


def bucket_of(value_seconds: float) -> str:
    """The field suffix of the bucket that `value_seconds` falls in."""
    for bound in BUCKETS_SECONDS:
        if value_seconds <= bound:
            return repr(bound)
    return INF


def counter(
    client: Client, name: str, labels: Mapping[str, str] | None = None, amount: float = 1
) -> None:
    """Add `amount` to counter `name`; on a pipeline the write joins its transaction."""
    field = _field(name, COUNTER, labels)
    if field is None:
        return
    with _recording(client, name) as pipe:
        _add(pipe, key(name), field, amount)
        if CATALOGUE[name].per_minute:
            bucket = minute_key(int(clock.now() // 60))
            _add(pipe, bucket, f"{name}|{field}", amount)
            pipe.expire(bucket, MINUTE_BUCKET_TTL_SECONDS)


def _add(pipe: Client, hash_key: str, field: str, amount: float) -> None:
    if isinstance(amount, int):  # every counter today: cheaper for Redis than a float
        pipe.hincrby(hash_key, field, amount)
    else:
        pipe.hincrbyfloat(hash_key, field, amount)


def observe(
    client: Client, name: str, value_seconds: float, labels: Mapping[str, str] | None = None
) -> None:
    """Record one observation of histogram `name` (negative values count as 0)."""
    field = _field(name, HISTOGRAM, labels)
    if field is None:
        return
    value_seconds = max(0.0, float(value_seconds))
    with _recording(client, name) as pipe:
        pipe.hincrby(key(name), f"{field}|{bucket_of(value_seconds)}", 1)
        pipe.hincrbyfloat(key(name), f"{field}|sum", value_seconds)
        pipe.hincrby(key(name), f"{field}|count", 1)


@dataclass(frozen=True)
class Series:
    """Per-minute totals of one counter over consecutive minutes, oldest first.

    `minutes` are epoch minutes (the last is the current one); `values` holds, per
    canonical label string, one total per minute (0 where nothing was counted).
    """

    name: str
    minutes: tuple[int, ...]
    values: Mapping[str, tuple[float, ...]]

    def by(self, label: str) -> Series:
        """The same minutes with label sets merged by the value of `label` alone
        (`status=failed`, summing every `type`); a set without it counts as `other`."""
        merged: dict[str, list[float]] = {}
        for labels, counts in self.values.items():
            value = parse_label_string(labels).get(label, OTHER)
            into = merged.setdefault(f"{label}={value}", [0] * len(self.minutes))
            for i, count in enumerate(counts):
                into[i] += count
        return Series(self.name, self.minutes, {k: tuple(v) for k, v in sorted(merged.items())})

    def per_minute(self) -> tuple[float, ...]:
        """The total of every label set, minute by minute."""
        totals: list[float] = [0] * len(self.minutes)
        for counts in self.values.values():
            for i, count in enumerate(counts):
                totals[i] += count
        return tuple(totals)

    def total(self) -> float:
        return sum(sum(counts) for counts in self.values.values())


def series(client: redis.Redis, name: str, minutes: int = 60, now: float | None = None) -> Series:
    """The last `minutes` (1 to `SERIES_MAX_MINUTES`) per-minute totals of counter `name`,
    up to the minute of `now` (default the clock's), in one round trip (`series_of`)."""
    return series_of(client, (name,), minutes, now)[name]


def series_of(
    client: redis.Redis, names: Sequence[str], minutes: int = 60, now: float | None = None
) -> dict[str, Series]:
    """`series` of each counter of `names`, from one read of the minutes' buckets (every
    counter of a minute shares its hash).

    Raises ValueError for a metric not counted per minute; Redis errors propagate
    (a reader, unlike recording, has a caller to tell).
    """
    for name in names:
        metric = CATALOGUE.get(name)
        if metric is None or not metric.per_minute:
            raise ValueError(f"{name} is not counted per minute")
    if not 1 <= minutes <= SERIES_MAX_MINUTES:
        raise ValueError(f"minutes must be 1 to {SERIES_MAX_MINUTES}, not {minutes}")
    last = int((clock.now() if now is None else now) // 60)
    span = tuple(range(last - minutes + 1, last + 1))
    with client.pipeline(transaction=False) as pipe:
        for minute in span:
            pipe.hgetall(minute_key(minute))
        replies = pipe.execute()
    values: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for i, reply in enumerate(replies):
        for raw_field, raw_count in reply.items():
            name, _, labels = raw_field.decode().partition("|")
            if name in values:
                counts = values[name].setdefault(labels, [0] * len(span))
                counts[i] += _number(raw_count.decode())
    return {
        name: Series(name, span, {k: tuple(v) for k, v in sorted(found.items())})
        for name, found in values.items()
    }


def _number(text: str) -> float:
    number = float(text)
    return int(number) if number.is_integer() else number


def _field(name: str, kind: str, labels: Mapping[str, str] | None) -> str | None:
    metric = CATALOGUE.get(name)
    labels = labels or {}
    if metric is None or metric.kind != kind or set(labels) != set(metric.labels):
        log.error("metric %s not recorded: not a %s with labels %s", name, kind, sorted(labels))
        return None
    return label_string(labels)


@contextlib.contextmanager
def _recording(client: Client, name: str) -> Iterator[Client]:
    """`client` itself if it is a pipeline (its owner executes it), else a one-off pipeline."""
    if isinstance(client, redis.client.Pipeline):
        yield client
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            yield pipe
            pipe.execute()
    except redis.RedisError:
        log.warning("metric %s not recorded: Redis error", name, exc_info=True)


def _bounded(value: str) -> str:
    return value if _NAME_LIKE.match(value) else OTHER
