"""Postback through Sentinel: its settings, clients that follow a failover by themselves, the
hub's subscription, `postback serve` and `postback worker` across a failover, `postback failover`.

The HA sets are real processes (`tests.ha`): a primary, replicas and three Sentinels.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from app import cli
from app.hub import Hub
from postback.connection import (
    AsyncSentinelConnection,
    FairQueue,
    async_twin,
    connect,
    describe,
    redis_target,
    target_environ,
)
from postback.faults import classify
from postback.ha import HaSet
from postback.resend import PrimaryMoved, ReplyLost
from postback.sentinel import (
    AsyncSentinelPool,
    FairSentinelPool,
    SentinelConnection,
    SentinelPool,
    Sentinels,
)
from postback.settings import Settings, SettingsError
from tests.conftest import ADMIN_TOKEN
from tests.ha import ha_set, kill
from tests.processes import POSTBACK, cli_env, eventually, postback_worker
from tests.test_serving import postback_serve

# Bounds waits for what takes a few seconds: a failover (the set's Sentinels count a
# primary down after 1.5 s), a switch seen by every client, a job run.
SWITCH_SECONDS = 30.0


def target_of(ha: HaSet) -> Sentinels:
    return Sentinels(
        addresses=tuple(ha.sentinels()),
        service=ha.service,
        password=ha.data_password,
        sentinel_password=ha.sentinel_password,
    )


def environ_of(ha: HaSet) -> dict[str, str]:
    return target_environ(target_of(ha))


def port_of(client: redis.Redis) -> int:
    """The port of the server `client` talks to now, as that server says."""
    return int(client.config_get("port")["port"])


def plain(address: tuple[str, int], ha: HaSet) -> redis.Redis:
    return redis.Redis(*address, password=ha.data_password, socket_timeout=5)


# -- settings and construction (no servers) ------------------------------------------------


def test_the_sentinel_settings_are_read_and_checked():
    """POSTBACK_REDIS_SENTINELS is host:port pairs (IPv6 in brackets); the service defaults
    to `postback`; passwords are kept out of the settings' repr."""
    read = Settings.from_env(
        {
            "POSTBACK_REDIS_SENTINELS": "s1:26379, [::1]:26380",
            "POSTBACK_REDIS_PASSWORD": "data-pw-0123",
            "POSTBACK_REDIS_SENTINEL_PASSWORD": "sentinel-pw-4567",
        }
    )
    assert read.sentinel_addresses == (("s1", 26379), ("::1", 26380))
    assert read.redis_sentinel_service == "postback"
    assert read.redis_password == "data-pw-0123"
    assert "pw-0123" not in repr(read) and "pw-4567" not in repr(read)
    assert Settings().redis_sentinels == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("POSTBACK_REDIS_SENTINELS", "s1"),
        ("POSTBACK_REDIS_SENTINELS", "s1:0"),
        ("POSTBACK_REDIS_SENTINELS", "s1:26379,s2:65536"),
        ("POSTBACK_REDIS_SENTINELS", ":26379"),
        ("POSTBACK_REDIS_SENTINELS", "::1:26379"),
        ("POSTBACK_REDIS_SENTINEL_SERVICE", "my service"),
    ],
)
def test_a_bad_sentinel_setting_is_refused_naming_its_variable(name, value):
    """A Sentinel address without a host or a port from 1 to 65535, or a service name with a
    space, is a SettingsError naming the variable."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    assert refused.value.name == name


def test_a_bad_sentinel_address_is_one_line_and_exit_status_2(monkeypatch, capsys):
    """The command line refuses a bad POSTBACK_REDIS_SENTINELS in one line naming it."""
    monkeypatch.setenv("POSTBACK_REDIS_SENTINELS", "sentinel.internal")
    assert cli.main(["status"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "POSTBACK_REDIS_SENTINELS='sentinel.internal'" in lines[0]


def test_sentinels_win_over_redis_url_and_keep_its_credentials_and_database():
    """With Sentinels set, REDIS_URL gives only its user, password and database (the host is
    Sentinel's); POSTBACK_REDIS_PASSWORD overrides its password; no password is shown; a
    child process given `target_environ` finds the same target."""
    settings = Settings.from_env(
        {
            "REDIS_URL": "redis://app:p%40ss@old-host:6379/3",
            "POSTBACK_REDIS_SENTINELS": "s1:26379,s2:26379",
            "POSTBACK_REDIS_SENTINEL_SERVICE": "jobs",
            "POSTBACK_REDIS_SENTINEL_PASSWORD": "sentinel-pw-4567",
        }
    )
    target = redis_target(settings)
    assert target == Sentinels(
        addresses=(("s1", 26379), ("s2", 26379)),
        service="jobs",
        username="app",
        password="p@ss",
        db=3,
        sentinel_password="sentinel-pw-4567",
    )
    assert describe(target) == "the primary of Sentinel service 'jobs' (s1:26379,s2:26379)"
    assert "p@ss" not in repr(target) and "pw-4567" not in repr(target)
    assert redis_target(Settings.from_env(target_environ(target))) == target
    overridden = Settings.from_env({**target_environ(target), "POSTBACK_REDIS_PASSWORD": "new"})
    assert redis_target(overridden).password == "new"  # type: ignore[union-attr]
    url = Settings.from_env({"REDIS_URL": "redis://h:1/0", "POSTBACK_REDIS_PASSWORD": "a b"})
    assert redis_target(url) == "redis://:a%20b@h:1/0"


def test_sentinel_clients_keep_postbacks_connection_rules():
    """A Sentinel client has the timeouts and keepalive of any client; the API's keeps its
    bound and its fair queue; RQ's blocking one still asks Sentinel with a timeout; the
    delivery process's asyncio twin follows Sentinel through a bounded pool too."""
    target = Sentinels(addresses=(("127.0.0.1", 1),), password="x")
    api = connect(target, timeout_seconds=1.5, max_connections=3)
    pool = api.connection_pool
    assert isinstance(pool, FairSentinelPool)
    assert isinstance(pool.pool, FairQueue) and pool.max_connections == 3
    assert pool.timeout == 1.5 and pool.connection_class is SentinelConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (1.5, 1.5)
    assert kwargs["socket_keepalive"] and kwargs["password"] == "x"
    blocking = connect(target, timeout_seconds=1.5, blocking=True)
    assert isinstance(blocking.connection_pool, SentinelPool)
    assert blocking.connection_pool.connection_kwargs["socket_timeout"] is None
    (node,) = blocking.connection_pool.sentinel_manager.sentinels
    assert node.connection_pool.connection_kwargs["socket_timeout"] == 1.5
    twin = async_twin(api, max_connections=5)()
    assert isinstance(twin.connection_pool, AsyncSentinelPool)
    assert twin.connection_pool.max_connections == 5
    assert twin.connection_pool.connection_class is AsyncSentinelConnection
    asyncio.run(twin.aclose())


def test_a_failover_reaching_the_api_is_a_503_with_retry_after(app, client):
    """READONLY from the old primary (once the retry also met it) is a 503 named
    `readonly`, and a lost reply a 503 too; never a 500."""
    raised = {"moved": PrimaryMoved("moved"), "lost": ReplyLost("Connection reset")}

    def fail(kind: str) -> Any:
        raise raised[kind]

    app.add_url_rule("/test/fault/<kind>", view_func=fail)
    moved = client.get("/test/fault/moved")
    assert moved.status_code == 503 and moved.headers["Retry-After"] == "5"
    assert moved.json["cause"] == "readonly"
    lost = client.get("/test/fault/lost")
    assert lost.status_code == 503 and lost.headers["Retry-After"]
    assert lost.json["cause"] == "unreachable"


def test_failover_without_sentinel_is_refused_naming_the_setting(monkeypatch, capsys, redis_url):
    """`postback failover` with no Sentinel configured exits 2 with one line that names
    POSTBACK_REDIS_SENTINELS."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.delenv("POSTBACK_REDIS_SENTINELS", raising=False)
    assert cli.main(["failover"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "POSTBACK_REDIS_SENTINELS" in lines[0]


# -- real HA sets ------------------------------------------------------------------------


@pytest.fixture
def ha(data_dir: Path) -> Iterator[HaSet]:
    with ha_set(data_dir, replicas=2) as running:
        yield running


def test_clients_follow_a_killed_primary_to_the_new_one(ha):
    """After the primary is SIGKILLed, every failure meanwhile is a named Redis fault, and
    once a replica is promoted the next command of each client (the API's bounded one, a
    plain one, the delivery process's asyncio one) goes to it and finds the data."""
    target = target_of(ha)
    assert redis_target(Settings(data_dir=ha.data_dir)) == target  # found through ha.json
    api = connect(target, timeout_seconds=2, max_connections=4)
    worker = connect(target, timeout_seconds=2)
    maker = async_twin(worker, max_connections=2)
    api.set("kept", "yes")
    assert api.execute_command("WAIT", 2, 5000) == 2
    former = port_of(api)
    kill(ha, "primary")
    faults: list[str] = []

    def written() -> bool:
        try:
            api.set("after", "1")
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=2)
            faults.append(str(found.cause) if found else repr(exc))
            return False
        return True

    eventually(written, timeout_seconds=SWITCH_SECONDS, what="a write on a new primary")
    assert all(cause in {"unreachable", "timeout", "readonly"} for cause in faults), faults
    new = port_of(api)
    assert new != former
    assert eventually(lambda: _or_none(worker.get, "kept"), timeout_seconds=5, what="get") == b"yes"
    assert port_of(worker) == new

    async def through_twin() -> tuple[bytes | None, int]:
        client = maker()
        try:
            await client.set("async", "1")
            return await client.get("kept"), int((await client.config_get("port"))["port"])
        finally:
            await client.aclose()

    assert asyncio.run(through_twin()) == (b"yes", new)
    # The bound held: every place in the API's pool is back, connection or placeholder.
    assert len(api.connection_pool.pool.queue) == 4


def _or_none(read: Any, *args: Any) -> Any:
    try:
        return read(*args)
    except redis.RedisError:
        return None


def test_postback_failover_switches_the_primary_and_clients_and_the_hub_follow(ha):
    """`postback failover`, given the HA set's data dir only, prints the former and the new
    primary and exits 0; a client's
    commands then go to the new primary, and the hub subscribes there again: a publish on
    the new primary wakes a watch."""
    target = target_of(ha)
    client = connect(target, timeout_seconds=2, max_connections=4)
    former = port_of(client)
    hub = Hub(client)
    with hub.watch("news") as watch:
        assert watch.live
        # Given only the data dir, the command finds the Sentinels in its ha.json.
        done = subprocess.run(
            [*POSTBACK, "failover", "--data-dir", str(ha.data_dir)],
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=SWITCH_SECONDS + 15,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        printed = json.loads(done.stdout)
        assert printed["former_primary"] == f"127.0.0.1:{former}"
        new_host, new_port = printed["primary"].rsplit(":", 1)
        assert int(new_port) != former
        eventually(
            lambda: _or_none(port_of, client) == int(new_port),
            timeout_seconds=SWITCH_SECONDS,
            what="the client on the new primary",
        )
        primary = plain((new_host, int(new_port)), ha)
        eventually(
            lambda: primary.pubsub_numsub("news") == [(b"news", 1)] and watch.live,
            timeout_seconds=SWITCH_SECONDS,
            what="the hub subscribed on the new primary",
        )
        while watch.sleep(0):  # the wake of its resubscription
            pass
        primary.publish("news", "hello")
        assert watch.sleep(SWITCH_SECONDS) and watch.live
        primary.close()
    hub.stop()


def test_serve_and_worker_keep_accepting_and_finish_jobs_across_a_failover(ha):
    """`postback serve` and `postback worker` configured with POSTBACK_REDIS_SENTINELS (and a
    REDIS_URL nothing listens on, which Sentinel overrides) answer every submission while
    the primary is killed and replaced with a 202 or a 503 with Retry-After, never a 500,
    and run the jobs accepted on the new primary to completion."""
    env = {
        **environ_of(ha),
        "POSTBACK_ADMIN_TOKEN": ADMIN_TOKEN,
        "POSTBACK_DURABILITY": "everysec",
        "POSTBACK_RATE_LIMIT": "100000/second",
        "POSTBACK_REDIS_TIMEOUT_SECONDS": "1",
        "POSTBACK_JOB_LEASE_SECONDS": "2",
    }
    nowhere = "redis://127.0.0.1:1/0"
    with postback_serve(nowhere, **env) as served, postback_worker(nowhere, **env):
        made = served.post(
            "/v1/admin/partners",
            json={"name": "Acme"},
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert made.status_code == 201, made.text
        headers = {"Authorization": f"Bearer {made.json()['api_key']}"}

        def submit() -> requests.Response:
            return served.post("/v1/jobs", json={"type": "echo", "input": {}}, headers=headers)

        def completed(job_id: str) -> bool:
            reply = served.get(f"/v1/jobs/{job_id}", headers=headers)
            return reply.status_code == 200 and reply.json()["status"] == "completed"

        first = submit()
        assert first.status_code == 202
        eventually(lambda: completed(first.json()["id"]), timeout_seconds=20, what="a job")

        answers: list[requests.Response] = []
        stop = threading.Event()

        def keep_submitting() -> None:
            while not stop.is_set():
                answers.append(submit())
                stop.wait(0.05)

        submitter = threading.Thread(target=keep_submitting)
        submitter.start()
        try:
            eventually(lambda: len(answers) >= 3, timeout_seconds=10, what="submissions")
            kill(ha, "primary")
            killed_at = len(answers)
            eventually(
                lambda: (
                    any(a.status_code == 503 for a in answers[killed_at:])
                    and answers[-1].status_code == 202
                ),
                timeout_seconds=SWITCH_SECONDS,
                what="503s while the primary is replaced, then 202s again",
            )
            accepted_at = len(answers)
            eventually(
                lambda: len(answers) >= accepted_at + 5, timeout_seconds=10, what="more jobs"
            )
        finally:
            stop.set()
            submitter.join()
        assert {a.status_code for a in answers} <= {202, 503}
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) > 0
        after = [a.json()["id"] for a in answers[accepted_at:] if a.status_code == 202]
        assert after
        for job_id in after:
            eventually(
                lambda job_id=job_id: completed(job_id),
                timeout_seconds=SWITCH_SECONDS,
                what=f"{job_id} completed on the new primary",
            )
