"""Guarded changes to one record, each checked and applied by Redis in one round trip.

A change is computed in Python from a snapshot of the record (its hash and
its timeline list) and sent with the snapshot's version, a digest of both. A
script applies the change's writes only if the record still has that
version; otherwise it returns the current snapshot, from which the caller
computes the change again. This is WATCH/MULTI's optimistic concurrency with
the check made by the server: a change costs two round trips (read, apply)
instead of four, and one when the caller already holds a fresh snapshot (a
run finishing the job it started holds the snapshot its start returned).
A transition that Redis can decide alone is a script of its own
(`transition`), which returns the snapshot after it.

The writes may touch any key (indexes, schedules, queues, metrics), which is
fine on one Redis server and would not be on a cluster. As with MULTI/EXEC,
a write that fails at run time neither undoes nor stops the others, and the
caller gets the error (redis.ResponseError).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import redis

from postback import lua, resend

# A record's version: the SHA-1 of its fields (sorted, so that field order in
# the hash does not matter) and of its timeline.
_VERSION = """
local function snapshot(key, list_key)
  local fields = redis.call('HGETALL', key)
  if #fields == 0 then return nil end
  local timeline = redis.call('LRANGE', list_key, 0, -1)
  local entries = {}
  for i = 1, #fields, 2 do entries[#entries + 1] = fields[i] .. '\\0' .. fields[i + 1] end
  table.sort(entries)
  local text = table.concat(entries, '\\0') .. '\\1' .. table.concat(timeline, '\\0')
  return {redis.sha1hex(text), fields, timeline}
end
"""

# Both are safe to send again on a broken connection (`postback.resend`): one reads, the
# other applies its writes only to the version they were computed from.
_READ = resend.repeatable(
    _VERSION
    + """
return snapshot(KEYS[1], KEYS[2]) or {}
"""
)

# ARGV: the expected version, then the writes.
# Returns {0} if the record is gone, {1, snapshot} if it changed, {2} if applied.
_APPLY = resend.repeatable(
    lua.WRITES
    + _VERSION
    + """
local current = snapshot(KEYS[1], KEYS[2])
if not current then return {0} end
if current[1] ~= ARGV[1] then return {1, current[1], current[2], current[3]} end
return apply_writes(2) or {2}
"""
)


# ARGV: the writes, all applied.
_WRITE = lua.WRITES + "return apply_writes(1)"


class Outcome(Enum):
    GONE = 0
    CHANGED = 1
    APPLIED = 2


@dataclass(frozen=True)
class Snapshot:
    version: str
    fields: dict[str, str]
    timeline: list[bytes]


class Guard:
    """Reads snapshots of records and applies changes recorded on a pipeline against them."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._read = client.register_script(_READ)
        self._apply = client.register_script(_APPLY)
        self._write = client.register_script(_WRITE)

    def transition(self, body: str) -> Callable[..., Snapshot | None]:
        """A script of its own for a transition that can be decided in Redis alone.

        `body` sees `snapshot(key, list_key)` and must return `snapshot(KEYS[1],
        KEYS[2])` after its writes, or `{}` to decline. Called with `keys` and
        `args`, it returns that snapshot, or None.
        """
        script = self.redis.register_script(lua.ALL_OR_NOTHING + _VERSION + body)
        return lambda *, keys, args: _snapshot(script(keys=keys, args=args))

    def read(self, key: str, timeline_key: str) -> Snapshot | None:
        """The record at `key` with the list at `timeline_key`, or None if there is no record."""
        return _snapshot(self._read(keys=[key, timeline_key]))

    def recorder(self) -> redis.client.Pipeline:
        """A pipeline to queue a change's writes on; `apply` sends them, never `execute`.

        It is in MULTI mode, as code that adds to a caller's transaction expects (RQ's enqueue).
        """
        writes = self.redis.pipeline(transaction=True)
        writes.multi()
        return writes

    def apply(
        self,
        key: str,
        timeline_key: str,
        version: str,
        writes: redis.client.Pipeline,
    ) -> tuple[Outcome, Snapshot | None]:
        """Apply the writes queued on `writes` if the record still has `version`.

        (APPLIED, None), (CHANGED, the current snapshot) or (GONE, None).
        """
        args = [version, *lua.flat_writes(writes)]
        reply = self._apply(keys=[key, timeline_key], args=args)
        return Outcome(reply[0]), _snapshot(reply[1:])

    def write(self, writes: redis.client.Pipeline) -> None:
        """Apply the writes queued on `writes`, unconditionally, as one script.

        What a MULTI/EXEC of the same writes does, with one reply to read
        instead of two per write (a new record needs no guard).
        """
        self._write(keys=[], args=lua.flat_writes(writes))


def _snapshot(reply: list) -> Snapshot | None:
    if not reply:
        return None
    version, flat, timeline = reply
    fields = {
        name.decode(): value.decode() for name, value in zip(flat[::2], flat[1::2], strict=True)
    }
    return Snapshot(version.decode(), fields, timeline)
