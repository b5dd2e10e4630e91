"""An HA set on one machine: a primary, its replicas and three Sentinels, from the embedded binary.

`postback up --replicas N` runs one instead of the single embedded server, to try
failover locally. Every member is a valkey-server on 127.0.0.1 with a port of its
own, run by `EmbeddedRedis` with its files under `<data_dir>/redis/<name>/`
(`valkey.conf`, the AOF, `valkey.pid`, `valkey.log`, `server.json`):

    redis/ha.json       the set: its Sentinel service, passwords, and each member's
                        name, role (as last recorded), port, pid and dir
    redis/primary/      the data member created as the primary
    redis/replica-N/    the data members created as its replicas (`replicaof` it)
    redis/sentinel-N/   the three Sentinels that watch the service (quorum 2)

Roles change: after a failover `primary` may be a replica. The Sentinels keep the
set's shape in the configs they rewrite (their own, and each data member's
`replicaof`), so configs are written once, when the set is created, and a member
is always restarted with its own. A former primary that comes back starts as a
primary and the Sentinels turn it into a replica of the new one
(`+convert-to-slave`, some 10 to 20 s after it answers: they let its role settle
for 8 s first).

Every data member has the same password (`requirepass`, and `masterauth` to
follow whichever becomes primary); the Sentinels have their own (`requirepass`)
and know the data password (`sentinel auth-pass`). Clients find the primary by
asking a Sentinel (`redis.sentinel.Sentinel`); `ha_view` reads the set's live state.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from postback.embedded import (
    DEFAULT_MAXMEMORY,
    EmbeddedRedis,
    EmbeddedRedisError,
    free_port,
    stop_servers,
    write_private,
)
from postback.ha_view import (
    HOST,
    Failover,
    Member,
    Role,
    last_failover,
    live_members,
    sentinels_view,
)

SERVICE = "postback"
SENTINELS = 3
QUORUM = 2
# How long a primary may not answer before a Sentinel counts it down. Short, for a
# trial on one machine where an answer takes microseconds: a killed primary is
# replaced within a few seconds (Sentinel's default, 30 s, suits networks).
DOWN_AFTER_MILLISECONDS = 1500
# How long a failover may take before another Sentinel tries again (twice this).
FAILOVER_TIMEOUT_MILLISECONDS = 10_000
# A dead primary is left for the Sentinels to replace, and restarted (as a replica)
# once they have; or after this long if they could not (no replica to promote).
UNREPLACED_PRIMARY_SECONDS = (DOWN_AFTER_MILLISECONDS + FAILOVER_TIMEOUT_MILLISECONDS) / 1000
# How often a Sentinel reads a member's INFO (and so learns of new replicas).
SENTINEL_INFO_SECONDS = 10.0
STATE_FILE = "ha.json"

_DATA_CONFIG = """\
requirepass {password}
masterauth {password}
appendfsync everysec
aof-use-rdb-preamble yes
# On loopback a full sync takes moments: waiting for more replicas to share one
# only delays the first.
repl-diskless-sync-delay 0
"""

_SENTINEL_CONFIG = """\
requirepass {sentinel_password}
sentinel monitor {service} {host} {primary_port} {quorum}
sentinel auth-pass {service} {password}
sentinel down-after-milliseconds {service} {down_after}
sentinel failover-timeout {service} {failover_timeout}
sentinel parallel-syncs {service} 1
# Unix milliseconds: `last_failover` reads the time of `+switch-master` here.
log-timestamp-format milliseconds
"""


class HaSet:
    """Create, start, adopt, watch, restart and stop the HA set of one data dir.

    Nothing is written until `start`: the first one creates the set (ports, passwords,
    configs, `ha.json`), later ones start the set `ha.json` describes, adopting the
    members that still run. `find` gives the set of a data dir to other processes.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        replicas: int,
        service: str = SERVICE,
        maxmemory: str = DEFAULT_MAXMEMORY,
    ) -> None:
        if replicas < 1:
            raise ValueError("an HA set has at least one replica")
        self.data_dir = Path(data_dir).resolve()
        self.dir = self.data_dir / "redis"
        self.statefile = self.dir / STATE_FILE
        self.replicas = replicas
        self.service = service
        self.maxmemory = maxmemory
        self._state: dict[str, Any] = _read(self.statefile) or self._new_state()
        # When `restart_dead` first found each member dead (monotonic seconds).
        self._dead_since: dict[str, float] = {}

    @classmethod
    def find(cls, data_dir: Path) -> HaSet | None:
        """The HA set recorded in `data_dir` (running or not), or None if it has none."""
        state = _read(Path(data_dir).resolve() / "redis" / STATE_FILE)
        if state is None:
            return None
        return cls(data_dir, replicas=_replicas_of(state), service=state["service"])

    # -- what other processes need -------------------------------------------

    @property
    def data_password(self) -> str:
        """The password of every data member (`requirepass`, `masterauth`)."""
        return str(self._state["data_password"])

    @property
    def sentinel_password(self) -> str:
        """The Sentinels' password (their `requirepass`)."""
        return str(self._state["sentinel_password"])

    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinels' addresses, as `redis.sentinel.Sentinel` takes them."""
        return [(HOST, m["port"]) for m in self._state["members"] if m["role"] == Role.SENTINEL]

    def names(self) -> list[str]:
        """Every member's name: the data members first, then the Sentinels."""
        return [m["name"] for m in self._state["members"]]

    # -- lifecycle -------------------------------------------------------------

    def start(self, *, wait_seconds: float = 30.0) -> list[Member]:
        """Start (or adopt) every member; return once the Sentinels agree on a primary that
        answers as one and each knows every replica and the other Sentinels."""
        deadline = time.monotonic() + wait_seconds
        self._create_or_check()
        for sentinels in (False, True):
            if sentinels:
                # A Sentinel sees the replicas linked as it starts, others only at its
                # next INFO: waiting longer than that gains nothing.
                _within(min(deadline, time.monotonic() + SENTINEL_INFO_SECONDS), self._linked)
            for name in self.names():
                if self._is_sentinel(name) == sentinels:
                    remaining = max(1.0, deadline - time.monotonic())
                    self._server(name).start(wait_seconds=remaining)
        if not _within(deadline, self._ready):
            raise EmbeddedRedisError(
                f"the HA set of {self.data_dir} was not ready within {wait_seconds} s; "
                f"see the logs under {self.dir}"
            )
        return self._record()

    def stop(self, *, wait_seconds: float = 8.0) -> None:
        """Stop the Sentinels (no failover as the rest stops), then every data member."""
        for sentinel in (True, False):
            names = [n for n in self.names() if self._is_sentinel(n) == sentinel]
            stop_servers([self._server(n) for n in names], wait_seconds=wait_seconds)
        if self.statefile.exists():
            self._record()

    def running(self) -> bool:
        """Whether any of its Sentinels runs, so that a client can ask where the primary is."""
        return any(self._server(n).alive() for n in self.names() if self._is_sentinel(n))

    def dead(self) -> list[str]:
        """The members whose process is not running (pidfiles only: cheap)."""
        return [name for name in self.names() if not self._server(name).alive()]

    def restart_dead(
        self,
        *,
        unreplaced_primary_seconds: float = UNREPLACED_PRIMARY_SECONDS,
        wait_seconds: float = 15.0,
    ) -> list[str]:
        """Start again, each with its own config, the members whose process died; their names.

        A dead member that a Sentinel still takes for the primary is restarted only once
        none does: every Sentinel that answers has switched to the replica they promoted
        and ended its failover. Restarted at once, it would be the primary again and no
        failover would ever be seen; restarted before a Sentinel has switched, that
        Sentinel sends clients to it (a primary again, with no replica) and may even
        point replicas at it, and what is written there is lost when it becomes a
        replica. If most Sentinels still name it after `unreplaced_primary_seconds`
        (they cannot replace it), it is restarted as the primary. A former primary
        comes back as a primary and the Sentinels make it a replica. Every member due
        is tried; if any fails, `EmbeddedRedisError` names them all.
        """
        now = time.monotonic()
        dead = self.dead()
        self._dead_since = {name: self._dead_since.get(name, now) for name in dead}
        members = self.members() if any(not self._is_sentinel(n) for n in dead) else []
        taken = {
            address
            for m in members
            if m.role == Role.SENTINEL
            for address in (m.primary, m.monitors)
            if address is not None
        }
        named, count = sentinels_view(members)
        restarted, failed = [], []
        for name in dead:
            address = (HOST, self._spec(name)["port"])
            unreplaced = named == address and count >= QUORUM
            waited = now - self._dead_since[name] >= unreplaced_primary_seconds
            if address in taken and not (unreplaced and waited):
                continue
            try:
                self._server(name).start(wait_seconds=wait_seconds)
            except EmbeddedRedisError as exc:
                failed.append(f"{name}: {exc}")
            else:
                restarted.append(name)
        if restarted:
            self._record()
        if failed:
            raise EmbeddedRedisError("could not restart " + "; ".join(failed))
        return restarted

    def owns(self, pid: int) -> bool:
        """Whether `pid` is one of this set's members (for `postback up`, which stops the rest)."""
        return any(self._server(name).owns(pid) for name in self.names())

    # -- the live view ---------------------------------------------------------

    def members(self) -> list[Member]:
        """Every member as it is now: its role from its own INFO (a Sentinel's: sentinel),
        replicas' link and lag, each Sentinel's view of the primary."""
        return live_members(
            [self._member(m) for m in self._state["members"]],
            data_password=self.data_password,
            sentinel_password=self.sentinel_password,
            service=self.service,
        )

    def primary(self) -> tuple[str, int] | None:
        """The primary most Sentinels name now, or None if no majority names one."""
        named, count = sentinels_view(self.members())
        return named if count >= QUORUM else None

    def last_failover(self) -> Failover | None:
        """The latest switch of primary the Sentinels logged, or None if none did."""
        logs = [self._server(n).logfile for n in self.names() if self._is_sentinel(n)]
        return last_failover(logs, service=self.service)

    # -- internals -------------------------------------------------------------

    def _new_state(self) -> dict[str, Any]:
        names = ["primary", *(f"replica-{n}" for n in range(1, self.replicas + 1))]
        roles = [Role.PRIMARY] + [Role.REPLICA] * self.replicas
        names += [f"sentinel-{n}" for n in range(1, SENTINELS + 1)]
        roles += [Role.SENTINEL] * SENTINELS
        ports: list[int] = []
        while len(ports) < len(names):
            if (port := free_port()) not in ports:
                ports.append(port)
        members = [
            {"name": name, "role": str(role), "port": port, "pid": None, "dir": None}
            for name, role, port in zip(names, roles, ports, strict=True)
        ]
        return {
            "service": self.service,
            "data_password": secrets.token_hex(24),
            "sentinel_password": secrets.token_hex(24),
            "members": members,
        }

    def _create_or_check(self) -> None:
        """Write the set's files if it is new; refuse a set that differs from the one recorded."""
        recorded = _read(self.statefile)
        if recorded is not None:
            replicas, service = _replicas_of(recorded), recorded["service"]
            if (replicas, service) != (self.replicas, self.service):
                raise EmbeddedRedisError(
                    f"the HA set of {self.data_dir} has {replicas} replicas and service "
                    f"{service!r}: start it with --replicas {replicas}"
                )
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        primary_port = self._state["members"][0]["port"]
        for member in self._state["members"]:
            server = self._server(member["name"])
            if server.conffile.exists():
                continue
            server.dir.mkdir(mode=0o700, exist_ok=True)
            if member["role"] == Role.SENTINEL:
                text = _SENTINEL_CONFIG.format(
                    sentinel_password=self.sentinel_password,
                    service=self.service,
                    host=HOST,
                    primary_port=primary_port,
                    quorum=QUORUM,
                    password=self.data_password,
                    down_after=DOWN_AFTER_MILLISECONDS,
                    failover_timeout=FAILOVER_TIMEOUT_MILLISECONDS,
                )
            else:
                text = _DATA_CONFIG.format(password=self.data_password)
                if member["role"] == Role.REPLICA:
                    text += f"replicaof {HOST} {primary_port}\n"
                elif recorded is None:
                    self._seed(server)
            write_private(server.conffile, text)
        if recorded is None:
            self._write(self._state)

    def _seed(self, primary: EmbeddedRedis) -> None:
        """Give a new set's primary the data of the data dir's single server, if it had any."""
        single = EmbeddedRedis(self.data_dir)
        single.stop()
        aof = single.dir / "appendonlydir"
        if aof.is_dir() and not (primary.dir / aof.name).exists():
            shutil.copytree(aof, primary.dir / aof.name)

    def _record(self) -> list[Member]:
        """Write the members' pids and roles as they are now to `ha.json`; the live view."""
        members = self.members()
        recorded = {m["name"]: m for m in self._state["members"]}
        for member in members:
            if member.pid is not None:  # a member not running keeps the role last recorded
                recorded[member.name]["role"] = str(member.role)
            recorded[member.name]["pid"] = member.pid
            recorded[member.name]["dir"] = str(member.dir)
        self._write(self._state)
        return members

    def _write(self, state: dict[str, Any]) -> None:
        # Readers in other processes see the old file or the new one, never half of one.
        partial = self.statefile.with_suffix(".json.partial")
        write_private(partial, json.dumps(state, indent=2))
        os.replace(partial, self.statefile)

    def _is_sentinel(self, name: str) -> bool:
        return self._spec(name)["role"] == Role.SENTINEL

    def _spec(self, name: str) -> dict[str, Any]:
        return next(m for m in self._state["members"] if m["name"] == name)

    def _server(self, name: str) -> EmbeddedRedis:
        sentinel = self._is_sentinel(name)
        return EmbeddedRedis(
            self.data_dir,
            name=name,
            port=self._spec(name)["port"],
            maxmemory=self.maxmemory,
            password=self.sentinel_password if sentinel else self.data_password,
            sentinel=sentinel,
        )

    def _member(self, spec: dict[str, Any]) -> Member:
        server = self._server(spec["name"])
        return Member(
            name=spec["name"],
            role=Role(spec["role"]),
            port=spec["port"],
            pid=server.pid(),
            dir=server.dir,
        )

    def _linked(self) -> bool:
        """Whether every data member that answers as a replica has its link up."""
        data = [m for m in self.members() if m.role != Role.SENTINEL]
        return all(m.up for m in data) and all(m.link_up for m in data if m.role == Role.REPLICA)

    def _ready(self) -> bool:
        members = self.members()
        by_address = {(m.host, m.port): m for m in members}
        views = {m.primary for m in members if m.role == Role.SENTINEL}
        if len(views) != 1 or None in views:
            return False
        (view,) = views
        primary = by_address.get(view) if view else None
        if primary is None or primary.role != Role.PRIMARY or not primary.up:
            return False
        return all(
            m.known_replicas == self.replicas and m.known_sentinels == SENTINELS - 1
            for m in members
            if m.role == Role.SENTINEL
        )


def _within(deadline: float, probe: Callable[[], bool]) -> bool:
    """Whether `probe` comes true before `deadline` (polled)."""
    while not probe():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def _replicas_of(state: dict[str, Any]) -> int:
    return sum(m["role"] != Role.SENTINEL for m in state["members"]) - 1


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads(path.read_text()))
    except (FileNotFoundError, ValueError):
        return None
