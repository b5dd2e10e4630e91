"""The operator's view of a running system, read from Redis: `postback status` and gauges.

`snapshot(client)` gathers it all in one dict (what `postback status --json`
prints); the smaller readers are shared with the scrape-time gauges of
`GET /metrics` (`app.metrics`), so both always say the same thing. Given the
data dir's HA set (`postback.ha`), it shows each of its members too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis
from rq import Queue
from rq.job import Job
from rq.utils import utcparse

from callbacks.breaker import CircuitBreaker
from callbacks.keys import DEFAULT_KEYS
from callbacks.outbox import Outbox
from postback import clock
from postback.ha_view import sentinels_view
from worker import liveness
from worker.jobs import LEASES_KEY, QUEUES, RETRY_KEY

if TYPE_CHECKING:
    from postback.ha import HaSet

# How many open circuits `postback status` lists (it counts them all).
OPEN_CIRCUITS_SHOWN = 50

# The keys `snapshot` returns, documented in the README.
KEYS = (
    "redis",
    "workers",
    "queues",
    "jobs_processing",
    "job_retries_scheduled",
    "deliveries",
    "dead_letters",
    "open_circuits",
    "open_circuit_count",
)


def queues(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Per RQ queue: `depth` (jobs waiting) and `oldest_age_seconds` (its head's wait, or None)."""
    found: dict[str, dict[str, Any]] = {}
    now = clock.now()
    for name in QUEUES.values():
        queue = Queue(name, connection=client)
        age = None
        head = queue.get_job_ids(0, 1)
        if head:
            enqueued_at = cast("bytes | None", client.hget(Job.key_for(head[0]), "enqueued_at"))
            if enqueued_at:
                age = max(0.0, now - utcparse(enqueued_at.decode()).timestamp())
        found[name] = {"depth": queue.count, "oldest_age_seconds": age}
    return found


def workers(client: redis.Redis) -> int:
    """Workers alive: those whose heartbeat is recent (each `postback worker` is one)."""
    return liveness.count(client)


def jobs_processing(client: redis.Redis) -> int:
    """Jobs running now, under a lease."""
    return cast(int, client.zcard(LEASES_KEY))


def job_retries_scheduled(client: redis.Redis) -> int:
    """Jobs waiting out a retry delay before they go back on a queue."""
    return cast(int, client.zcard(RETRY_KEY))


def deliveries(client: redis.Redis) -> dict[str, int]:
    """Webhooks not yet delivered or dead: `scheduled` (all), `due` (waiting for a dispatcher).

    `scheduled` counts those in flight and those waiting for a retry too.
    """
    return Outbox(client).counts()


def dead_letters(client: redis.Redis) -> int:
    """Dead letters stored (the list of them all)."""
    return cast(int, client.zcard(DEFAULT_KEYS.dead_indexes("", "")[0]))


def open_circuit_count(client: redis.Redis) -> int:
    """How many circuits are open or half-open (one read, however many circuits there are)."""
    return CircuitBreaker(client).open_count()


def open_circuits(client: redis.Redis, *, limit: int = OPEN_CIRCUITS_SHOWN) -> list[dict[str, Any]]:
    """Up to `limit` open or half-open circuits."""
    return CircuitBreaker(client).open_circuits(limit=limit)


def redis_info(client: redis.Redis) -> dict[str, Any]:
    """Server version, memory used, append-only file health, and the server as the one
    member (its role, pid and port); `ha_info` gives an HA set's members instead."""
    info: dict[str, Any] = {}
    for section in ("server", "memory", "persistence", "replication"):
        info |= cast("dict[str, Any]", client.info(section))
    server = {
        "name": "server",
        "role": "primary" if info.get("role") == "master" else "replica",
        "pid": info.get("process_id"),
        "port": info.get("tcp_port"),
        "up": True,
    }
    return {
        "version": info.get("redis_version"),
        "valkey_version": info.get("valkey_version"),
        "used_memory_bytes": info.get("used_memory"),
        "used_memory_human": info.get("used_memory_human"),
        "aof_enabled": bool(info.get("aof_enabled")),
        "aof_last_write_status": info.get("aof_last_write_status"),
        # Redis ≥ 7 also reports fsync failures apart; older servers fold them into writes.
        "aof_last_fsync_status": info.get("aof_last_fsync_status"),
        "aof_delayed_fsync": info.get("aof_delayed_fsync"),
        "members": [server],
        "sentinel": None,
    }


def ha_info(ha: HaSet) -> dict[str, Any]:
    """An HA set's `members` (each one's role, pid, port, whether it answers; replicas'
    primary, link and lag; Sentinels' view of the primary) and `sentinel`: the service,
    the primary most Sentinels name and the last failover they logged."""
    members = ha.members()
    failover = ha.last_failover()
    named, count = sentinels_view(members)
    return {
        "members": [m.to_json() for m in members],
        "sentinel": {
            "service": ha.service,
            "primary": f"{named[0]}:{named[1]}" if named else None,
            "named_by_sentinels": count,
            "last_failover": failover.to_json() if failover else None,
        },
    }


def snapshot(client: redis.Redis, *, ha: HaSet | None = None) -> dict[str, Any]:
    """Everything `postback status` shows, under the keys of `KEYS`; with `ha`, the
    members of the HA set `client` reaches the primary of."""
    return {
        "redis": redis_info(client) | (ha_info(ha) if ha is not None else {}),
        "workers": workers(client),
        "queues": queues(client),
        "jobs_processing": jobs_processing(client),
        "job_retries_scheduled": job_retries_scheduled(client),
        "deliveries": deliveries(client),
        "dead_letters": dead_letters(client),
        "open_circuits": open_circuits(client),
        "open_circuit_count": open_circuit_count(client),
    }


def render(data: dict[str, Any]) -> None:
    """Print a snapshot as one screen of `rich` tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    info = data["redis"]
    server = Table(title="Redis", show_header=False)
    version = _text(info["version"])
    if info["valkey_version"]:
        version += f" (Valkey {info['valkey_version']})"
    server.add_row("version", version)
    server.add_row("memory used", _text(info["used_memory_human"]))
    server.add_row("AOF", "on" if info["aof_enabled"] else "[red]off[/red]")
    server.add_row("AOF last write", _status(info["aof_last_write_status"]))
    if info["aof_last_fsync_status"] is not None:
        server.add_row("AOF last fsync", _status(info["aof_last_fsync_status"]))
    sentinel = info["sentinel"]
    if sentinel is not None:
        server.add_row("Sentinel service", sentinel["service"])
        server.add_row(
            "primary (Sentinels' view)",
            _text(sentinel["primary"]) + f"  (named by {sentinel['named_by_sentinels']})",
        )
        server.add_row("last failover", _failover(sentinel["last_failover"]))
    console.print(server)
    if sentinel is not None:
        console.print(_members(info["members"]))

    work = Table(title="Work", show_header=False)
    work.add_row("workers alive", _count(data["workers"], bad_if_zero=True))
    work.add_row("jobs processing", str(data["jobs_processing"]))
    work.add_row("job retries scheduled", str(data["job_retries_scheduled"]))
    work.add_row("deliveries scheduled", str(data["deliveries"]["scheduled"]))
    work.add_row("deliveries due now", str(data["deliveries"]["due"]))
    work.add_row("dead letters", str(data["dead_letters"]))
    work.add_row("open circuits", str(data["open_circuit_count"]))
    console.print(work)

    queue_table = Table(title="Queues")
    queue_table.add_column("queue")
    queue_table.add_column("depth", justify="right")
    queue_table.add_column("oldest waiting", justify="right")
    for name, queue in data["queues"].items():
        age = queue["oldest_age_seconds"]
        queue_table.add_row(name, str(queue["depth"]), "—" if age is None else f"{age:.1f} s")
    console.print(queue_table)

    if data["open_circuits"]:
        circuits = Table(title="Open circuits")
        for column in ("destination", "state", "consecutive failures", "open until"):
            circuits.add_column(column)
        for circuit in data["open_circuits"]:
            circuits.add_row(
                circuit["destination"],
                circuit["state"],
                str(circuit["consecutive_failures"]),
                circuit["open_until"] or "—",
            )
        console.print(circuits)


def _members(members: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="Redis members")
    for column in ("member", "role", "pid", "port", "primary", "link", "lag"):
        table.add_column(column)
    for member in members:
        lag = "—"
        if member["lag_bytes"] is not None:
            lag = f"{member['lag_bytes']} B, {_text(member['lag_seconds'])} s"
        link = {None: "—", True: "up", False: "[red]down[/red]"}[member["link_up"]]
        table.add_row(
            member["name"],
            member["role"] if member["up"] else f"[red]down[/red] ({member['role']})",
            _text(member["pid"]),
            str(member["port"]),
            _text(member["primary"]),
            link,
            lag,
        )
    return table


def _failover(failover: dict[str, Any] | None) -> str:
    if failover is None:
        return "none logged"
    ago = max(0.0, clock.now() - failover["at_seconds"])
    return f"{ago:.0f} s ago: {failover['former']} → {failover['promoted']}"


def _text(value: Any) -> str:
    return "—" if value is None else str(value)


def _status(value: str | None) -> str:
    if value is None:
        return "—"
    return value if value == "ok" else f"[red]{value}[/red]"


def _count(value: int, *, bad_if_zero: bool = False) -> str:
    return f"[red]{value}[/red]" if bad_if_zero and value == 0 else str(value)
