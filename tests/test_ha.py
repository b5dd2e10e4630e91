"""The HA set on one machine: a primary, replicas and three Sentinels (real processes), its
failover, its members coming back, and `postback up --replicas` with `postback status`."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import cli, status
from postback.embedded import EmbeddedRedis, EmbeddedRedisError
from postback.ha import DOWN_AFTER_MILLISECONDS, QUORUM, SERVICE, HaSet
from postback.ha_view import Role
from tests.ha import ha_set, kill, member, sentinel
from tests.helpers import close_connections
from tests.processes import POSTBACK, cli_env, eventually, valkey_pids
from tests.test_cli import postback_up


def data_client(ha: HaSet, port: int) -> redis.Redis:
    return redis.Redis(port=port, password=ha.data_password, socket_timeout=5)


def test_the_set_starts_with_a_primary_its_replicas_and_three_sentinels(data_dir: Path) -> None:
    """A started set has one primary, two replicas following it with their links up and
    three Sentinels naming it; a write on the primary reaches both replicas."""
    with ha_set(data_dir, replicas=2) as ha:
        members = ha.members()
        assert [(m.name, m.role) for m in members] == [
            ("primary", Role.PRIMARY),
            ("replica-1", Role.REPLICA),
            ("replica-2", Role.REPLICA),
            ("sentinel-1", Role.SENTINEL),
            ("sentinel-2", Role.SENTINEL),
            ("sentinel-3", Role.SENTINEL),
        ]
        assert all(m.up and m.pid for m in members)
        assert len({m.port for m in members}) == 6
        primary = ("127.0.0.1", members[0].port)
        assert all(m.primary == primary for m in members[1:])
        assert all(m.link_up for m in members if m.role == Role.REPLICA)
        assert sorted(valkey_pids(data_dir)) == sorted(m.pid for m in members if m.pid)
        assert sentinel(ha).discover_master(SERVICE) == primary

        sentinel(ha).master_for(SERVICE).set("greeting", "hello")
        for replica in members[1:3]:
            client = data_client(ha, replica.port)
            eventually(
                lambda client=client: client.get("greeting") == b"hello",
                timeout_seconds=10,
                what=f"the write on {replica.name}",
            )
            assert client.config_get("appendonly")["appendonly"] == "yes"
            client.close()


def test_the_sentinels_watch_the_service_with_the_documented_settings(data_dir: Path) -> None:
    """Each Sentinel watches `postback` with quorum 2 and DOWN_AFTER_MILLISECONDS, behind its
    own password; `ha.json` and every file of the set are its owner's only."""
    with ha_set(data_dir, replicas=1) as ha:
        for address in ha.sentinels():
            client = redis.Redis(*address, password=ha.sentinel_password, socket_timeout=5)
            master = client.sentinel_master(SERVICE)
            assert master["quorum"] == QUORUM
            assert master["down-after-milliseconds"] == DOWN_AFTER_MILLISECONDS
            client.close()
            # No retries: redis-py would otherwise retry the auth error as a connection error.
            wrong = redis.Redis(*address, password=ha.data_password, retry=Retry(NoBackoff(), 0))
            with pytest.raises(redis.AuthenticationError):
                wrong.ping()
            wrong.close()
        state = json.loads((data_dir / "redis" / "ha.json").read_text())
        assert state["service"] == SERVICE
        assert [(m["name"], m["role"]) for m in state["members"]][:2] == [
            ("primary", "primary"),
            ("replica-1", "replica"),
        ]
        assert {m["pid"] for m in state["members"]} == {m.pid for m in ha.members()}
        for path in (data_dir / "redis").rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), path


def test_a_killed_primary_is_replaced_and_comes_back_as_a_replica(data_dir: Path) -> None:
    """SIGKILL the primary: the Sentinels promote a replica, which has the acknowledged write;
    `restart_dead` starts the old primary again and it rejoins as the new primary's replica."""
    with ha_set(data_dir, replicas=2) as ha:
        clients = sentinel(ha)
        former = clients.discover_master(SERVICE)
        primary = clients.master_for(SERVICE)
        primary.set("kept", "yes")
        assert primary.execute_command("WAIT", 2, 5000) == 2
        primary.close()
        kill(ha, "primary")

        def promoted() -> tuple[str, int] | None:
            try:
                found = clients.discover_master(SERVICE)
            except redis.sentinel.MasterNotFoundError:
                return None
            return found if found != former else None

        new = eventually(promoted, timeout_seconds=30, what="a replica promoted")
        assert new in [("127.0.0.1", m.port) for m in ha.members() if m.name.startswith("replica")]
        assert clients.master_for(SERVICE).get("kept") == b"yes"
        failover = ha.last_failover()
        assert failover is not None and (failover.former, failover.promoted) == (former, new)

        assert ha.dead() == ["primary"]
        # Restarted once most Sentinels name the new primary (they switch within moments).
        restarted = eventually(ha.restart_dead, timeout_seconds=30, what="the old primary back")
        assert restarted == ["primary"]
        back = eventually(
            lambda: (m := member(ha, "primary")).role == Role.REPLICA and m.link_up and m,
            timeout_seconds=45,
            what="the old primary a replica of the new one",
        )
        assert back.primary == new
        assert ha.primary() == new
        client = data_client(ha, back.port)
        assert client.get("kept") == b"yes"
        client.close()
        shown = status.ha_info(ha)
        roles = {m["port"]: m["role"] for m in shown["members"][:3]}
        assert sorted(roles.values()) == ["primary", "replica", "replica"]
        assert roles[new[1]] == "primary"
        assert shown["sentinel"]["primary"] == f"127.0.0.1:{new[1]}"
        assert shown["sentinel"]["last_failover"]["former"] == f"127.0.0.1:{former[1]}"


def test_status_shows_the_single_server_as_its_one_member(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], redis_client: redis.Redis
) -> None:
    """With one server, `postback status --json` lists it as the one member: a primary, its
    pid and port; there are no Sentinels."""
    url = redis_client.connection_pool.connection_kwargs
    monkeypatch.setenv("REDIS_URL", f"redis://:{url['password']}@127.0.0.1:{url['port']}/0")
    assert cli.main(["status", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["redis"]
    server = redis_client.info("server")
    assert shown["members"] == [
        {
            "name": "server",
            "role": "primary",
            "pid": server["process_id"],
            "port": server["tcp_port"],
            "up": True,
        }
    ]
    assert shown["sentinel"] is None


def test_the_status_screen_shows_the_members_and_the_sentinels_view(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`postback status` of an HA set has a row per member and the primary the Sentinels name."""
    with ha_set(data_dir, replicas=1) as ha:
        client = sentinel(ha).master_for(SERVICE)
        status.render(status.snapshot(client, ha=ha))
        client.close()
    out = capsys.readouterr().out
    assert "Redis members" in out and "primary (Sentinels' view)" in out
    for name in ("primary", "replica-1", "sentinel-1", "sentinel-2", "sentinel-3"):
        assert f" {name} " in out


def test_a_dead_primary_is_left_to_the_sentinels_until_they_cannot_replace_it(
    data_dir: Path,
) -> None:
    """A dead primary the Sentinels still name is not restarted (they are to replace it);
    when they cannot (no replica may be promoted), it is, after the grace, as the primary."""
    with ha_set(data_dir, replicas=1) as ha:
        replica = data_client(ha, member(ha, "replica-1").port)
        replica.config_set("replica-priority", 0)  # never promoted
        replica.close()
        primary = ("127.0.0.1", member(ha, "primary").port)
        kill(ha, "primary")
        assert ha.restart_dead() == []
        assert ha.dead() == ["primary"] and ha.primary() == primary
        assert ha.restart_dead(unreplaced_primary_seconds=0) == ["primary"]
        eventually(
            lambda: member(ha, "replica-1").link_up and ha.primary() == primary,
            timeout_seconds=30,
            what="the restarted primary followed again",
        )


def test_a_dead_primary_is_not_restarted_while_one_sentinel_still_names_it(
    data_dir: Path,
) -> None:
    """After a failover, a dead primary that one Sentinel still takes for the primary (it
    missed the failover, or leads it and has not ended it) is not restarted, though most
    name the promoted replica: that Sentinel would send clients to it, a primary again;
    it is once no Sentinel does."""
    with ha_set(data_dir, replicas=1) as ha:
        former = ("127.0.0.1", member(ha, "primary").port)
        kill(ha, "primary")

        def switched() -> tuple[str, int] | None:
            """The primary every Sentinel names and holds in its table, once not the former."""
            views = {(m.primary, m.monitors) for m in ha.members() if m.role == Role.SENTINEL}
            if len(views) != 1:
                return None
            ((named, held),) = views
            return named if named == held and named not in (None, former) else None

        promoted = eventually(switched, timeout_seconds=30, what="every Sentinel switched")
        # A Sentinel that missed the failover: it names the former primary.
        behind = redis.Redis(*ha.sentinels()[2], password=ha.sentinel_password, socket_timeout=5)
        behind.execute_command("SENTINEL", "REMOVE", SERVICE)
        behind.execute_command("SENTINEL", "MONITOR", SERVICE, *former, QUORUM)
        assert ha.primary() == promoted
        assert ha.restart_dead() == []
        assert ha.dead() == ["primary"]
        behind.execute_command("SENTINEL", "REMOVE", SERVICE)
        behind.close()
        assert ha.restart_dead() == ["primary"]


def test_dead_sentinels_and_replicas_are_restarted_and_the_set_is_adopted(data_dir: Path) -> None:
    """`restart_dead` starts a killed Sentinel and replica again; a second start adopts
    every member, and a start with another replica count is refused."""
    with ha_set(data_dir, replicas=2) as ha:
        pids = {m.name: m.pid for m in ha.members()}
        kill(ha, "sentinel-2")
        kill(ha, "replica-2")
        assert ha.dead() == ["replica-2", "sentinel-2"]
        assert ha.restart_dead() == ["replica-2", "sentinel-2"]
        eventually(
            lambda: member(ha, "replica-2").link_up and ha.primary() is not None,
            timeout_seconds=30,
            what="the replica linked and the Sentinels agreed",
        )
        again = {m.name: m.pid for m in HaSet(data_dir, replicas=2).start()}
        assert again == {m.name: m.pid for m in ha.members()}
        assert again["primary"] == pids["primary"] and again["replica-2"] != pids["replica-2"]
        with pytest.raises(EmbeddedRedisError, match="start it with --replicas 2"):
            HaSet(data_dir, replicas=3).start()


def test_a_new_set_starts_from_the_single_servers_data(data_dir: Path) -> None:
    """The first set of a data dir that ran the single server starts with its data, on
    the primary and the replicas."""
    single = EmbeddedRedis(data_dir)
    client = redis.Redis.from_url(single.start().url)
    client.set("from-before", "1")
    client.close()
    single.stop()
    with ha_set(data_dir, replicas=1) as ha:
        for found in ha.members()[:2]:
            client = data_client(ha, found.port)
            assert client.get("from-before") == b"1", found.name
            client.close()


def status_json(data_dir: Path) -> dict[str, Any]:
    """`postback status --json` for `data_dir`, as an operator runs it (no Redis settings)."""
    done = subprocess.run(
        [*POSTBACK, "status", "--json", "--data-dir", str(data_dir)],
        env=cli_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    return dict(json.loads(done.stdout))


def test_up_with_replicas_runs_the_set_restarts_its_members_and_status_shows_them(
    data_dir: Path,
) -> None:
    """`postback up --replicas 2` serves through the set; `postback status --json` lists its six
    members in their roles; a killed replica is restarted; SIGTERM leaves no server behind."""
    with postback_up(data_dir, args=("--replicas", "2")) as up:
        up.create_partner("Acme")
        members = status_json(data_dir)["redis"]["members"]
        roles = [m["role"] for m in members]
        assert roles == ["primary", "replica", "replica", "sentinel", "sentinel", "sentinel"]
        assert sorted(m["pid"] for m in members) == sorted(valkey_pids(data_dir))
        assert all(m["port"] and m["up"] for m in members)
        primary = f"127.0.0.1:{members[0]['port']}"
        assert {m["primary"] for m in members[1:]} == {primary}
        assert status_json(data_dir)["redis"]["sentinel"]["primary"] == primary

        ha = HaSet.find(data_dir)
        assert ha is not None
        killed = kill(ha, "replica-2")
        eventually(
            lambda: (m := member(ha, "replica-2")).pid not in (None, killed) and m.link_up,
            timeout_seconds=30,
            what="postback up restarts the killed replica, which links up again",
        )
        close_connections(up.http)  # done with the API, as its clients would be
        up.process.send_signal(signal.SIGTERM)
        assert up.process.wait(timeout=60) == 0, up.output()
    assert valkey_pids(data_dir) == []


def test_up_refuses_a_data_dir_whose_set_has_another_shape(data_dir: Path) -> None:
    """`postback up` on a data dir holding an HA set needs its --replicas: anything else is
    one line and exit status 1, nothing started."""
    with ha_set(data_dir, replicas=1):
        pass
    done = subprocess.run(
        [*POSTBACK, "up", "--data-dir", str(data_dir), "--port", "0"],
        env=cli_env(),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "holds an HA set with 1 replicas: run `postback up --replicas 1`" in done.stderr.decode()
    assert valkey_pids(data_dir) == []
