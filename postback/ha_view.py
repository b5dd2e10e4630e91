"""What an HA set (`postback.ha`) looks like now: each member's role, link, lag and view.

Read from the members themselves: a data member's role from its `INFO replication`
(a former primary is a replica now), a replica's lag from its primary's offset and
`lag=`, a Sentinel's view of the primary from `SENTINEL GET-MASTER-ADDR-BY-NAME`,
and the last failover from the `+switch-master` lines the Sentinels log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

HOST = "127.0.0.1"
# Each member is asked with this timeout: a member that does not answer within it is down.
ASK_TIMEOUT_SECONDS = 1.0
# How much of the end of a Sentinel's log `last_failover` reads.
LOG_TAIL_BYTES = 1 << 20


class Role(StrEnum):
    PRIMARY = "primary"
    REPLICA = "replica"
    SENTINEL = "sentinel"


@dataclass(frozen=True)
class Member:
    """One process of an HA set, as last seen.

    `role` is what the member says it is now; for a data member that does not
    answer, the role last recorded. `primary` is, for a replica, the primary it
    follows and, for a Sentinel, the primary it names. The rest is None where it
    does not apply or the member does not answer.
    """

    name: str
    role: Role
    port: int
    pid: int | None
    dir: Path
    host: str = HOST
    up: bool = False
    primary: tuple[str, int] | None = None
    # A replica: whether its replication link is up, how many bytes of the primary's
    # stream it lacks, and the seconds since it last acknowledged (the primary's `lag=`).
    link_up: bool | None = None
    lag_bytes: int | None = None
    lag_seconds: int | None = None
    # A Sentinel: how many replicas and other Sentinels of the service it knows.
    known_replicas: int | None = None
    known_sentinels: int | None = None
    # A Sentinel: the primary's address in its own table (`SENTINEL MASTER`), which is the
    # one redis-py's clients connect to. While it leads a failover it is still the former
    # primary's, until the failover ends; `primary` is then the promoted replica.
    monitors: tuple[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        """The member for `postback status --json`: addresses as `host:port` strings."""
        data = dataclasses.asdict(self)
        data["role"] = str(self.role)
        data["dir"] = str(self.dir)
        data["primary"] = _address(self.primary)
        data["monitors"] = _address(self.monitors)
        return data


@dataclass(frozen=True)
class Failover:
    """A switch of primary, as a Sentinel logged it (`+switch-master`)."""

    at_seconds: float  # Unix time
    former: tuple[str, int]
    promoted: tuple[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "at_seconds": self.at_seconds,
            "former": _address(self.former),
            "promoted": _address(self.promoted),
        }


def live_members(
    members: list[Member], *, data_password: str, sentinel_password: str, service: str
) -> list[Member]:
    """`members` (as recorded, with their pids) completed with what each says now."""
    asked = [
        _ask_sentinel(m, sentinel_password, service)
        if m.role == Role.SENTINEL
        else _ask_data(m, data_password)
        for m in members
    ]
    primaries = {(m.host, m.port): m for m, _ in asked if m.role == Role.PRIMARY and m.up}
    return [_with_lag(member, info, primaries, asked) for member, info in asked]


def sentinels_view(members: list[Member]) -> tuple[tuple[str, int] | None, int]:
    """The primary that most Sentinels among `members` name, and how many name it."""
    views = [m.primary for m in members if m.role == Role.SENTINEL and m.primary]
    if not views:
        return None, 0
    named = max(set(views), key=views.count)
    return named, views.count(named)


def _ask_data(member: Member, password: str) -> tuple[Member, dict[str, Any]]:
    if member.pid is None:
        return member, {}
    with _client(member.port, password) as client:
        try:
            info = cast("dict[str, Any]", client.info("replication"))
        except redis.RedisError:
            return member, {}
    if info.get("role") == "master":
        return dataclasses.replace(member, role=Role.PRIMARY, up=True), info
    return (
        dataclasses.replace(
            member,
            role=Role.REPLICA,
            up=True,
            primary=(str(info.get("master_host")), int(info.get("master_port", 0))),
            link_up=info.get("master_link_status") == "up",
        ),
        info,
    )


def _with_lag(
    member: Member,
    info: dict[str, Any],
    primaries: dict[tuple[str, int], Member],
    asked: list[tuple[Member, dict[str, Any]]],
) -> Member:
    if member.role != Role.REPLICA or not member.up or member.primary not in primaries:
        return member
    primary_info = next(i for m, i in asked if m is primaries[member.primary])
    lag_bytes = max(0, primary_info["master_repl_offset"] - info.get("slave_repl_offset", 0))
    lag_seconds = None
    for key, value in primary_info.items():
        if key.startswith("slave") and isinstance(value, dict) and value["port"] == member.port:
            lag_seconds = int(value["lag"])
    return dataclasses.replace(member, lag_bytes=lag_bytes, lag_seconds=lag_seconds)


def _ask_sentinel(member: Member, password: str, service: str) -> tuple[Member, dict[str, Any]]:
    if member.pid is None:
        return member, {}
    with _client(member.port, password) as client:
        try:
            address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", service)
            state = client.execute_command("SENTINEL", "MASTER", service)
        except redis.RedisError:
            return member, {}
    fields = dict(zip(state[::2], state[1::2], strict=True))
    return (
        dataclasses.replace(
            member,
            up=True,
            primary=(address[0].decode(), int(address[1])) if address else None,
            known_replicas=int(fields[b"num-slaves"]),
            known_sentinels=int(fields[b"num-other-sentinels"]),
            monitors=(fields[b"ip"].decode(), int(fields[b"port"])),
        ),
        {},
    )


@contextlib.contextmanager
def _client(port: int, password: str) -> Iterator[redis.Redis]:
    client = redis.Redis(
        host=HOST,
        port=port,
        password=password,
        socket_timeout=ASK_TIMEOUT_SECONDS,
        socket_connect_timeout=ASK_TIMEOUT_SECONDS,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        yield client
    finally:
        client.close()


# `<pid>:X <unix ms> # +switch-master <service> <old host> <old port> <new host> <new port>`
_SWITCH = re.compile(rb"^\d+:X (\d+) . \+switch-master (\S+) (\S+) (\d+) (\S+) (\d+)\s*$", re.M)


def last_failover(logs: list[Path], *, service: str) -> Failover | None:
    """The latest `+switch-master` of `service` in the Sentinels' `logs`, or None."""
    latest: Failover | None = None
    for log in logs:
        try:
            with log.open("rb") as handle:
                handle.seek(max(0, log.stat().st_size - LOG_TAIL_BYTES))
                tail = handle.read()
        except OSError:
            continue
        for match in _SWITCH.finditer(tail):
            at_ms, name, old_host, old_port, new_host, new_port = match.groups()
            if name.decode() != service:
                continue
            found = Failover(
                at_seconds=int(at_ms) / 1000,
                former=(old_host.decode(), int(old_port)),
                promoted=(new_host.decode(), int(new_port)),
            )
            if latest is None or found.at_seconds > latest.at_seconds:
                latest = found
    return latest


def _address(address: tuple[str, int] | None) -> str | None:
    return None if address is None else f"{address[0]}:{address[1]}"
