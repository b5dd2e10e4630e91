"""Group commit (postback.groupcommit): calls made at once share a pipeline, each with its
own reply, its WAITAOF on the connection that wrote, and a frozen server costs one timeout."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from postback import connection
from postback.connection import connect, on_behalf_of
from postback.embedded import free_port
from postback.groupcommit import GroupCommit
from postback.lua import Script
from postback.settings import Settings
from tests.processes import OwnRedis, own_redis
from worker.runtime import job_store

# Records its call, and returns what it was given.
ECHO = Script("redis.call('RPUSH', KEYS[1], ARGV[1]) return ARGV[1]")
FAIL = Script("return redis.error_reply('REFUSED this one')")


@pytest.fixture(autouse=True)
def loaded(redis_client) -> None:
    """The scripts known to the server, as they are after their first call."""
    for script in (ECHO, FAIL):
        redis_client.script_load(script.source)


@pytest.fixture
def exchanges(monkeypatch) -> list[tuple[int, list[str]]]:
    """Each round trip a group makes: (its connection's id, the commands' names)."""
    seen: list[tuple[int, list[str]]] = []
    real = connection.exchange

    def spy(conn, commands):
        seen.append((id(conn), [str(command[0]) for command in commands]))
        return real(conn, commands)

    monkeypatch.setattr(connection, "exchange", spy)
    return seen


def _first_in_flight(redis_client, commit: GroupCommit) -> threading.Thread:
    """A call sent while Redis holds back writes (CLIENT PAUSE) for 500 ms: in flight that long."""
    redis_client.client_pause(500, all=False)
    first = threading.Thread(target=commit.run, args=(ECHO, ["first"], ["first"]))
    first.start()
    time.sleep(0.1)
    return first


def _in_threads(count: int, work) -> list:
    results: list = [None] * count

    def one(i: int) -> None:
        try:
            results[i] = work(i)
        except Exception as exc:  # returned for the test to look at
            results[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_a_lone_call_is_sent_at_once_in_one_round_trip(redis_client, exchanges):
    """A call with nobody else in flight makes one round trip and gets its reply."""
    commit = GroupCommit(redis_client)
    assert commit.run(ECHO, ["calls"], ["alone"]) == (b"alone", None)
    assert [names for _, names in exchanges] == [["EVALSHA"]]
    assert redis_client.lrange("calls", 0, -1) == [b"alone"]


def test_calls_made_while_one_is_in_flight_share_the_next_pipeline(redis_client, exchanges):
    """Calls queued behind one that holds the server go out together, each with its reply."""
    commit = GroupCommit(redis_client)
    first = _first_in_flight(redis_client, commit)
    replies = _in_threads(8, lambda i: commit.run(ECHO, ["calls"], [f"call-{i}"]))
    first.join(timeout=30)
    assert replies == [(f"call-{i}".encode(), None) for i in range(8)]
    assert sorted(redis_client.lrange("calls", 0, -1)) == sorted(
        f"call-{i}".encode() for i in range(8)
    )
    # One round trip for the first call, one for the eight queued behind it.
    assert [len(names) for _, names in exchanges] == [1, 8]


def test_an_error_reply_goes_to_its_own_caller_only(redis_client):
    """A script that fails in a group raises for its caller; the others get their replies."""
    commit = GroupCommit(redis_client)
    first = _first_in_flight(redis_client, commit)
    scripts = [ECHO, FAIL, ECHO]
    replies = _in_threads(3, lambda i: commit.run(scripts[i], ["calls"], [f"call-{i}"]))
    first.join(timeout=30)
    assert replies[0] == (b"call-0", None) and replies[2] == (b"call-2", None)
    assert isinstance(replies[1], redis.ResponseError) and "REFUSED" in str(replies[1])


def test_the_wait_for_the_disk_follows_the_writes_on_their_own_connection(redis_client, exchanges):
    """With fsync_wait_ms, one WAITAOF after the group's scripts, on the same connection,
    answers every call in the group (the test server keeps an append-only file)."""
    commit = GroupCommit(redis_client)
    first = _first_in_flight(redis_client, commit)
    replies = _in_threads(4, lambda i: commit.run(ECHO, ["calls"], [i], fsync_wait_ms=2000))
    first.join(timeout=30)
    assert [fsync for _, fsync in replies] == [[1, 0]] * 4
    _, (scripts, script_names), (waited, wait_names) = exchanges
    assert script_names == ["EVALSHA"] * 4 and wait_names == ["WAITAOF"]
    assert waited == scripts


def test_scripts_a_server_forgot_are_sent_whole(redis_client):
    """After SCRIPT FLUSH the next group's calls still run (as EVAL), and later ones as EVALSHA."""
    commit = GroupCommit(redis_client)
    commit.run(ECHO, ["calls"], ["before"])
    redis_client.script_flush()
    assert commit.run(ECHO, ["calls"], ["after"]) == (b"after", None)
    assert redis_client.script_exists(ECHO.sha) == [True]


@pytest.fixture
def server(data_dir: Path) -> Iterator[OwnRedis]:
    with own_redis(data_dir / "store") as own:
        yield own


def test_calls_queued_behind_a_frozen_server_fail_with_the_first(server):
    """With Redis SIGSTOPped, the call in flight times out and those queued behind it fail at
    the same moment: one timeout in all, not one after another."""
    commit = GroupCommit(connect(server.url, timeout_seconds=1.0, max_connections=8))
    assert commit.run(ECHO, ["calls"], ["warm"])[0] == b"warm"
    with server.frozen():
        started = time.monotonic()
        first: list = []
        leader = threading.Thread(
            target=lambda: first.append(_outcome(lambda: commit.run(ECHO, ["calls"], ["x"])))
        )
        leader.start()
        time.sleep(0.2)
        queued = _in_threads(6, lambda i: commit.run(ECHO, ["calls"], [i]))
        leader.join(timeout=30)
        elapsed = time.monotonic() - started
    assert isinstance(first[0], redis.TimeoutError)
    assert all(isinstance(outcome, redis.TimeoutError) for outcome in queued)
    # One 1 s timeout; served one group after another it would be two or more.
    assert elapsed < 1.9
    # Nothing queued was sent (the call in flight ran once the server went on).
    assert commit.run(ECHO, ["calls"], ["after"])[0] == b"after"
    assert set(server.client().lrange("calls", 0, -1)) <= {b"warm", b"x", b"after"}


def _outcome(work):
    try:
        return work()
    except Exception as exc:
        return exc


def test_a_job_created_in_fsync_durability_waits_on_the_connection_that_wrote_it(
    redis_client, exchanges
):
    """JobStore.create's WAITAOF follows its script on the same connection, so its
    confirmation covers the job (on another connection it would cover nothing)."""
    store = job_store(redis_client, Settings(durability="fsync"))
    store.create(partner_id="ptn_x", type="echo", input={}, callback_url=None, timeout_seconds=5)
    (wrote, script_names), (waited, wait_names) = exchanges[-2:]
    assert script_names in (["EVALSHA"], ["EVAL"]) and wait_names == ["WAITAOF"]
    assert waited == wrote


GREENLETS = """
from gevent import monkey

monkey.patch_all()
import sys

import gevent
import redis

from postback import connection
from postback.groupcommit import GroupCommit
from tests.test_groupcommit import ECHO

client = redis.Redis.from_url(sys.argv[1])
sizes = []
real = connection.exchange
connection.exchange = lambda conn, commands: sizes.append(len(commands)) or real(conn, commands)
commit = GroupCommit(client)
replies = gevent.joinall([gevent.spawn(commit.run, ECHO, ["calls"], [i]) for i in range(8)])
assert [g.value[0] for g in replies] == [str(i).encode() for i in range(8)], replies
print(sizes)
"""


def test_greenlets_ready_together_send_one_group(redis_url, redis_client):
    """In an event loop (the API's gevent), calls made by greenlets that run one after
    another without blocking go out in one pipeline, not one each."""
    ran = subprocess.run(
        [sys.executable, "-c", GREENLETS, redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "[8]"


def test_a_flooding_partner_does_not_push_another_partners_call_back(redis_client, exchanges):
    """Groups are taken a tenant at a time: with 40 calls of one partner waiting, another
    partner's call that came after them all still goes out in the very next group."""
    commit = GroupCommit(redis_client, max_calls=8)
    first = _first_in_flight(redis_client, commit)

    def call_as(tenant: str, value: str):
        with on_behalf_of(tenant):
            return commit.run(ECHO, ["calls"], [value])

    flood = [threading.Thread(target=call_as, args=("flooder", f"flood-{i}")) for i in range(40)]
    for thread in flood:
        thread.start()
    time.sleep(0.2)  # all 40 queued behind the call in flight
    assert call_as("other", "mine") == (b"mine", None)
    first.join(timeout=30)
    for thread in flood:
        thread.join(timeout=30)
    groups = [names for _, names in exchanges]
    assert len(groups) == 1 + 6 and all(len(g) <= 8 for g in groups)
    sent = redis_client.lrange("calls", 0, -1)
    # The other partner's call was among the first 8 sent after the call in flight.
    assert b"mine" in sent[:8]


def test_large_calls_fill_a_group_only_up_to_its_byte_bound(redis_client, exchanges):
    """A partner's large calls are split over groups of at most `max_bytes` of arguments
    (a call larger than that goes alone), and another partner's small call still goes
    out in the next group; every call gets its own reply."""
    commit = GroupCommit(redis_client, max_bytes=10_000)
    first = _first_in_flight(redis_client, commit)
    sizes = [4_000] * 6 + [25_000]

    def call_as(tenant: str, value: str):
        with on_behalf_of(tenant):
            return commit.run(ECHO, ["calls"], [value])

    large = [
        threading.Thread(target=call_as, args=("large", str(i) * size))
        for i, size in enumerate(sizes)
    ]
    for thread in large:
        thread.start()
    time.sleep(0.2)  # all queued behind the call in flight
    assert call_as("other", "mine") == (b"mine", None)
    first.join(timeout=30)
    for thread in large:
        thread.join(timeout=30)
    sent = redis_client.lrange("calls", 0, -1)
    assert sorted(len(value) for value in sent) == sorted([4, *sizes])  # with "mine"
    # The calls in the order Redis ran them, cut into the groups they were sent in
    # after the call in flight (which wrote elsewhere).
    groups, start = [], 0
    for _, names in exchanges[1:]:
        groups.append(sent[start : start + len(names)])
        start += len(names)
    assert start == len(sent)
    for group in groups:
        assert len(group) == 1 or sum(len(value) for value in group) <= 10_000
    assert len(groups) >= 4  # 6 x 4,000 bytes need 3 groups at least, the 25,000 one more
    assert b"mine" in groups[0]


def test_a_server_that_cannot_be_reached_fails_every_call_and_blocks_none():
    """When no connection can be made, each call raises ConnectionError at once, and the
    next call is not left waiting for a turn that never comes."""
    commit = GroupCommit(connect(f"redis://127.0.0.1:{free_port()}/0", timeout_seconds=0.5))
    outcomes: list = []

    def three_calls() -> None:
        for number in range(3):
            outcomes.append(_outcome(lambda n=number: commit.run(ECHO, ["calls"], [n])))

    caller = threading.Thread(target=three_calls)
    caller.start()
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert [type(outcome) for outcome in outcomes] == [redis.ConnectionError] * 3
