"""Lua scripts that run the same from a blocking client and from an asyncio one.

The API and the command line use blocking clients; the dispatcher uses an
asyncio client. A `Script` is the source once, callable from either: `run`
with a blocking client or pipeline, `arun` with an asyncio client. Both load
the script again if the server has forgotten it (a restart flushes scripts).

`Batch` sends the script calls that many asyncio tasks make in one turn of the
event loop as one pipeline: how the dispatcher's hundreds of settlements a
second each avoid a round of their own.

`WRITES` is a Lua function that applies a list of writes recorded on a
pipeline (`flat_writes`): how a caller adds its own writes (the timeline,
metrics) to a script's atomic step.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable
from typing import Any, cast

import redis
import redis.asyncio

from postback import connection, resend

# The first line of a script that writes more than once. A script that declares flags
# (here none) is refused whole while Redis is over its maxmemory. Without it Redis refuses
# each write that may grow memory until the script has made any write at all (one that
# frees memory, an EXPIRE), and lets every later one through: part of the script applied.
ALL_OR_NOTHING = "#!lua\n"

# ARGV from `first` on: each write as its argument count, then its arguments.
# As in MULTI/EXEC, a failing write does not stop the others; the first error is returned.
# It opens its script (`ALL_OR_NOTHING`): scripts start with it.
WRITES = (
    ALL_OR_NOTHING
    + """
local function apply_writes(first)
  local i, failed = first, nil
  while i <= #ARGV do
    local count = tonumber(ARGV[i])
    local reply = redis.pcall(unpack(ARGV, i + 1, i + count))
    if type(reply) == 'table' and reply.err and not failed then failed = reply end
    i = i + count + 1
  end
  return failed
end
"""
)


class Script:
    """One Lua script, by its SHA-1, for blocking and asyncio clients alike.

    A `repeatable` script is safe to run twice (it only reads, or checks a token or a
    version before it writes): a client whose connection broke sends it again
    (`postback.resend`).
    """

    def __init__(self, source: str, *, repeatable: bool = False) -> None:
        if repeatable:
            resend.repeatable(source)
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def run(
        self,
        client: redis.Redis | redis.client.Pipeline,
        keys: list[str],
        args: list[Any],
    ) -> Any:
        """Call with a blocking client (the reply) or queue on a pipeline (its result later)."""
        if isinstance(client, redis.client.Pipeline):
            # A pipeline loads missing scripts itself before it executes.
            client.scripts.add(client.register_script(self.source))
            return client.evalsha(self.sha, len(keys), *keys, *args)
        try:
            return connection.call(client, "EVALSHA", self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return connection.call(client, "EVAL", self.source, len(keys), *keys, *args)

    async def arun(
        self, client: redis.asyncio.Redis | Batch, keys: list[str], args: list[Any]
    ) -> Any:
        """Call with an asyncio client, or with the next pipeline of a `Batch`."""
        if isinstance(client, Batch):
            return await client.call(self, keys, args)
        try:
            return await cast(Awaitable[Any], client.evalsha(self.sha, len(keys), *keys, *args))
        except redis.exceptions.NoScriptError:
            return await cast(Awaitable[Any], client.eval(self.source, len(keys), *keys, *args))


class Batch:
    """Script calls queued in one turn of the event loop, sent to Redis as one pipeline.

    Sent one by one, each call takes a connection from the pool, a write and a wake-up
    of its own; a delivery process settling hundreds of attempts a second spends more
    on that than on the scripts (P7 in BENCHMARKS.md). Calls that tasks queue before
    the loop turns again go out together, at most `max_calls` to a pipeline, and
    several pipelines may be in flight. Not a transaction: each script is atomic by
    itself, as it is when called alone, and each caller gets its own reply or error.
    """

    def __init__(self, client: redis.asyncio.Redis, *, max_calls: int = 256) -> None:
        self.client = client
        self.max_calls = max_calls
        self._queued: list[_Call] = []
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, script: Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one call; the future holds its reply, or the error Redis answered."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((script, keys, args, future))
        if len(self._queued) >= self.max_calls:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    async def aclose(self) -> None:
        """Send what is queued and wait for every pipeline in flight."""
        self._flush()
        while self._sending:
            await asyncio.wait(set(self._sending))

    def _flush(self) -> None:
        self._flush_scheduled = False
        calls, self._queued = self._queued, []
        if calls:
            task = asyncio.get_running_loop().create_task(self._send(calls))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, calls: list[_Call]) -> None:
        try:
            replies = await self._execute(calls)
            missing = [
                i for i, r in enumerate(replies) if isinstance(r, redis.exceptions.NoScriptError)
            ]
            if missing:
                # A restarted server has forgotten the scripts: load them, then call again.
                for script in {calls[i][0].sha: calls[i][0] for i in missing}.values():
                    await self.client.script_load(script.source)
                again = await self._execute([calls[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except Exception as exc:  # the connection, a timeout: every call in it failed
            for *_, future in calls:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for *_, future in calls:
                future.cancel()
            raise
        for (*_, future), reply in zip(calls, replies, strict=True):
            if future.done():  # its caller gave up waiting; the call was made all the same
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, calls: list[_Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in calls:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


_Call = tuple[Script, list[str], list[Any], "asyncio.Future[Any]"]


def flat_writes(writes: redis.client.Pipeline) -> list[Any]:
    """The writes queued on `writes`, each as its argument count and arguments; empties it."""
    args: list[Any] = []
    for command, _options in writes.command_stack:
        args.append(len(command))
        args.extend(command)
    writes.reset()
    return args


_RECORDING = redis.Redis()


def recorder() -> redis.client.Pipeline:
    """A pipeline that only records writes (for `flat_writes`); it never talks to a server."""
    return _RECORDING.pipeline(transaction=False)
