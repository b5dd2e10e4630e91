"""Lua scripts that run the same from a blocking client and from an asyncio one.

The API and the command line use blocking clients; the dispatcher uses an
asyncio client. A `Script` is the source once, callable from either: `run`
with a blocking client or pipeline, `arun` with an asyncio client. Both load
the script again if the server has forgotten it (a restart flushes scripts).

`WRITES` is a Lua function that applies a list of writes recorded on a
pipeline (`flat_writes`): how a caller adds its own writes (the timeline,
metrics) to a script's atomic step.
"""

from __future__ import annotations

import hashlib
from typing import Any

import redis
import redis.asyncio

# ARGV from `first` on: each write as its argument count, then its arguments.
# As in MULTI/EXEC, a failing write does not stop the others; the first error is returned.
WRITES = """
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


class Script:
    """One Lua script, by its SHA-1, for blocking and asyncio clients alike."""

    def __init__(self, source: str) -> None:
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
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)

    async def arun(self, client: redis.asyncio.Redis, keys: list[str], args: list[Any]) -> Any:
        """Call with an asyncio client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)


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
