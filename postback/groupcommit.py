"""Group commit: the script calls a process's requests make at once, sent to Redis together.

An API process serves hundreds of requests at a time, and each submission ends
in one Lua script that writes the job (and, in `fsync` durability, a WAITAOF
that waits for the disk). Sent one by one, each pays a round trip of its own: a
write, a wait for the reply, a wake-up, and in the API's event loop a switch
to the loop and back — more CPU than the script's arguments cost to pack.

`GroupCommit.run` sends the first call as soon as the requests ready to run
beside it have reached theirs: a request alone waits for nobody. Calls made
while that one is in flight queue behind it, and when its
reply comes the first of them sends all that are queued as one pipeline on one
connection, the others waiting for their replies (the writers' queue of
LevelDB, or a database's group commit). Each script stays atomic by itself and
each caller gets its own reply or error, as if it had called alone.
Waiting calls are taken into a group a tenant at a time (`connection.on_behalf_of`,
as the connection pool serves them): one partner's flood of submissions fills
the groups only as far as nobody else is waiting, and another partner's call
goes out in the next group, not behind the flood.

With `fsync_wait_ms`, the pipeline's replies are followed, on the same
connection, by one WAITAOF for the whole group: WAITAOF waits for the writes
of the connection it is sent on, so it proves nothing on another one, and one
wait after N writes confirms all N (on the primary's disk, and on those of as
many replicas as the call that asks for most `replicas`).

A replica reports what it has fsynced when the primary asks (each time a
WAITAOF starts to wait) or once a second; asked with the write itself, it
answers before its fsync. So a wait for replicas waits for the local fsync
first, then asks again with a short WAITAOF until they confirm or the
wait's time is out: a confirmation in milliseconds rather than at the
replica's next report, up to a second later. The turn passes as soon as the scripts
have answered, so the next group is written while this one waits for the disk.

A call that finds Redis frozen or gone fails with the group it was sent in, and
the calls queued behind that group fail with it at once instead of each waiting
out a timeout of its own.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any

import redis

from postback import connection
from postback.lua import Script

# Calls sent in one pipeline at most, and the bytes of their arguments: bounds on how
# long any one caller waits behind the others of its group. A group always takes
# its first call, however large (submissions are bounded by the API's body limit).
MAX_CALLS = 128
MAX_BYTES = 1_048_576
# How long each WAITAOF that asks the replicas again waits: a server ends a blocked
# command's wait at its clock's tick (10 a second by default), not sooner.
REPLICAS_ASKED_EVERY_MS = 100


class _Call:
    __slots__ = (
        "args",
        "done",
        "error",
        "fsync",
        "fsync_wait_ms",
        "keys",
        "replicas",
        "reply",
        "script",
        "size",
        "turn",
    )

    def __init__(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        fsync_wait_ms: int | None,
        replicas: int,
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.size = _size(args)
        self.fsync_wait_ms = fsync_wait_ms
        self.replicas = replicas
        self.reply: Any = None
        self.fsync: Any = None
        self.error: BaseException | None = None
        self.done = False
        # Set when the call has its outcome, or when it is its turn to send the queue.
        self.turn = threading.Event()

    def command(self, *, whole: bool = False) -> tuple[Any, ...]:
        script = ("EVAL", self.script.source) if whole else ("EVALSHA", self.script.sha)
        return (*script, len(self.keys), *self.keys, *self.args)


def _wait_aof(conn: redis.connection.AbstractConnection, replicas: int, wait_ms: int) -> Any:
    """WAITAOF's reply (or its error reply) once the writes made on `conn` are fsynced
    locally and on `replicas` replicas, or once `wait_ms` have passed (see the module)."""
    deadline = time.monotonic() + wait_ms / 1000
    (reply,) = connection.exchange(conn, [("WAITAOF", 1, 0, wait_ms)])
    while not isinstance(reply, Exception) and reply[0] >= 1 and reply[1] < replicas:
        left_ms = round((deadline - time.monotonic()) * 1000)
        if left_ms < 1:
            break
        step_ms = min(REPLICAS_ASKED_EVERY_MS, left_ms)
        (reply,) = connection.exchange(conn, [("WAITAOF", 1, replicas, step_ms)])
    return reply


def _size(args: list[Any]) -> int:
    """About the bytes `args` take on the wire (their strings and bytes)."""
    return sum([len(arg) for arg in args if isinstance(arg, _TEXT)])  # a list: faster here


_TEXT = (str, bytes)


class Interrupted(redis.ConnectionError):
    """The call that was sending a group was interrupted (its request ended): the group's
    outcome is unknown, as after a lost connection."""


class GroupCommit:
    """Script calls on `client`, sent together while one is in flight (see the module)."""

    def __init__(
        self, client: redis.Redis, *, max_calls: int = MAX_CALLS, max_bytes: int = MAX_BYTES
    ) -> None:
        self.client = client
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # The calls waiting, in one line per tenant (`connection.on_behalf_of`), the
        # tenants in their turn's order; and whether a call holds the turn to send.
        self._lines: dict[str | None, collections.deque[_Call]] = {}
        self._busy = False

    def run(
        self,
        script: Script,
        keys: list[str],
        args: list[Any],
        *,
        fsync_wait_ms: int | None = None,
        replicas: int = 0,
    ) -> tuple[Any, Any]:
        """(the script's reply, WAITAOF's reply) for one call of `script`.

        Raises what the script raised (an error reply, a timeout, a lost connection).
        Without `fsync_wait_ms` the second is None; with it, WAITAOF's reply after
        the write (waiting for the local fsync and those of at least `replicas`
        replicas), or the exception WAITAOF raised, for the caller to judge.
        """
        call = _Call(script, keys, args, fsync_wait_ms, replicas)
        with self._lock:
            self._lines.setdefault(connection.current_tenant(), collections.deque()).append(call)
            first = not self._busy
            self._busy = True
        if not first:
            call.turn.wait()
        if not call.done:
            self._send_queued()
        if call.error is not None:
            raise call.error
        return call.reply, call.fsync

    def _take(self) -> list[_Call]:
        """The next group: a call from each tenant in turn, until `max_calls` calls or
        `max_bytes` of arguments, or none left.

        A partner with a thousand calls waiting fills the groups only as far as no
        other partner has a call waiting: another's call goes out in the next group.
        A partner's large calls fill a group only up to `max_bytes`, so the calls
        sent with them (another partner's among them) are not held up by the transfer.
        The call holding the turn is the first of the first line, so it is in it.
        """
        group: list[_Call] = []
        size = 0
        while self._lines and len(group) < self.max_calls:
            tenant = next(iter(self._lines))
            line = self._lines[tenant]
            size += line[0].size
            if group and size > self.max_bytes:
                break
            del self._lines[tenant]
            group.append(line.popleft())
            if line:  # back in line behind the other tenants
                self._lines[tenant] = line
        return group

    def _send_queued(self) -> None:
        """Send the next group (this caller's call in it), pass the turn to a call still
        waiting, then wait for the disk if the group asks to, and settle the group."""
        # Let the requests that are ready to run (in the API's event loop: those whose
        # bytes arrived with this one's) reach their own call first and join this group:
        # twice the calls per round trip under load (BENCHMARKS.md, P1), and no wait at
        # all for a request that is alone.
        time.sleep(0)
        with self._lock:
            group = self._take()
        failure: BaseException | None = None
        try:
            with contextlib.ExitStack() as held:
                try:
                    conn = held.enter_context(connection.checked_out(self.client))
                    self._write(conn, group)
                except Exception as exc:
                    failure = exc
                except BaseException:
                    failure = Interrupted("the call was interrupted while it was sent")
                    raise
                finally:
                    self._pass_turn(failure)
                if failure is None:
                    # The next group is sent meanwhile, on another connection.
                    self._wait_for_disk(conn, group)
        finally:
            for call in group:
                if failure is not None and call.error is None:
                    call.error = failure
                call.done = True
                call.turn.set()

    def _pass_turn(self, failure: BaseException | None) -> None:
        """Wake the first call still waiting, to send the next group, or free the turn."""
        stranded: list[_Call] = []
        with self._lock:
            if isinstance(failure, redis.TimeoutError | redis.ConnectionError) and not isinstance(
                failure, Interrupted
            ):
                # Queued while Redis did not answer this group: it would not answer them.
                stranded = [call for line in self._lines.values() for call in line]
                self._lines.clear()
            following = next(iter(self._lines.values()))[0] if self._lines else None
            self._busy = following is not None
        for call in stranded:
            call.error, call.done = failure, True
            call.turn.set()
        if following is not None:
            following.turn.set()

    def _write(self, conn: redis.connection.AbstractConnection, group: list[_Call]) -> None:
        """The group's scripts in one round trip; each call's reply or error set on it."""
        commands = [call.command() for call in group]
        replies = connection.exchange(conn, commands)
        missing = [
            i
            for i, reply in enumerate(replies)
            if isinstance(reply, redis.exceptions.NoScriptError)
        ]
        if missing:
            # A restarted server has forgotten the scripts: send them whole (EVAL
            # also keeps them for the next EVALSHA).
            again = connection.exchange(conn, [group[i].command(whole=True) for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for call, reply in zip(group, replies, strict=True):
            if isinstance(reply, Exception):
                call.error = reply
            else:
                call.reply = reply

    def _wait_for_disk(self, conn: redis.connection.AbstractConnection, group: list[_Call]) -> None:
        """One WAITAOF for the calls of `group` that wrote and asked for it, on `conn`."""
        asking = [c for c in group if c.fsync_wait_ms is not None and not c.error]
        if not asking:
            return
        wait_ms = max(c.fsync_wait_ms or 0 for c in asking)
        replicas = max(c.replicas for c in asking)
        fsync: Any
        try:
            fsync = _wait_aof(conn, replicas, wait_ms)
        except (redis.TimeoutError, redis.ConnectionError) as exc:
            fsync = exc
        for call in group:
            if call.fsync_wait_ms is not None and call.error is None:
                call.fsync = fsync
