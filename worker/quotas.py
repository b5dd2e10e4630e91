"""Per-partner quotas, checked by Redis in the same script that creates the job.

Two bounds, each on what one partner holds, so that one partner's flood cannot
refuse or starve another:

- retained bytes: the input and result bytes of the partner's stored jobs.
  `pb:partner:{pid}:retained_bytes` counts them; each job records in its own
  hash (`retained_bytes`) what it added, and the script that deletes the job
  subtracts exactly that, so the counter cannot drift (a job deleted twice
  subtracts once; a job made before the counter existed subtracts nothing).
  The quota bounds admissions: a result is always stored, so a partner's
  retained bytes may exceed the quota by the results of the jobs it already
  had in flight when it reached it.
- backlog: the partner's queued jobs, the size of its `queued` index (the
  set every transition already keeps exact: start, retry, cancel).

Exceptions (under `postback.errors.LimitExceeded`)::

    OverQuota            used, limit, retry_after_seconds
    ├── RetainedBytesFull
    └── BacklogFull

The same script makes a creation once under a key when asked (an Idempotency-Key's
record): `AlreadyMade`, nothing written, if the key exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis

from postback import lua
from postback.errors import LimitExceeded
from postback.groupcommit import GroupCommit
from postback.ratewindow import AUTHENTICATE_AND_COUNT, KeyChanged, RateCheck, RateLimited

DEFAULT_MAX_RETAINED_BYTES = 1_073_741_824
DEFAULT_MAX_BACKLOG = 10_000
# The field of a job's hash that holds the bytes it added to its partner's counter.
RETAINED_FIELD = "retained_bytes"


def retained_key(partner_id: str) -> str:
    return f"pb:partner:{partner_id}:retained_bytes"


@dataclass(frozen=True, kw_only=True)
class Quota:
    """What one partner may hold; the settings override the defaults."""

    max_retained_bytes: int = DEFAULT_MAX_RETAINED_BYTES
    max_backlog: int = DEFAULT_MAX_BACKLOG


DEFAULT_QUOTA = Quota()


class OverQuota(LimitExceeded):
    """A new job would take a partner past one of its bounds; nothing was stored.

    `used` of `limit` are taken; `retry_after_seconds` is how soon room is likely.
    """

    # Retained bytes are freed only as the partner's finished jobs pass their retention.
    retry_after_seconds: int | None = 300

    def __init__(self, message: str, *, used: int, limit: int) -> None:
        super().__init__(message, limit=limit, retry_after_seconds=self.retry_after_seconds)
        self.used = used
        self.limit: int = limit


class RetainedBytesFull(OverQuota):
    """The partner's retained jobs hold as many bytes as it may keep."""


class BacklogFull(OverQuota):
    """As many of the partner's jobs are queued as it may have waiting."""

    # Queued jobs start within seconds.
    retry_after_seconds: int | None = 5


class AlreadyMade(Exception):
    """The key that a creation was to be made once under exists: it was made already;
    nothing was written."""


# KEYS: the partner's retained-bytes counter, its queued index. ARGV: the most
# bytes, the new job's bytes, the most queued, then the creation's writes.
# {0} once written (or the first write's error), {1, retained} or {2, queued} if refused.
_ADMIT_BODY = """
local retained = tonumber(redis.call('GET', KEYS[1]) or '0')
if retained + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return {1, retained} end
local queued = redis.call('ZCARD', KEYS[2])
if queued >= tonumber(ARGV[3]) then return {2, queued} end
redis.call('INCRBY', KEYS[1], ARGV[2])
return apply_writes(4) or {0}
"""
_ADMIT = lua.Script(lua.WRITES + _ADMIT_BODY)

# `_ADMIT` once: KEYS[3] exists once the job was made (an Idempotency-Key's record,
# which the writes set); {5}, nothing written, if it does.
_ADMIT_ONCE = lua.Script(
    lua.WRITES + "if redis.call('EXISTS', KEYS[3]) == 1 then return {5} end" + _ADMIT_BODY
)

# The same, after counting the request against the partner's rate limit: KEYS and
# ARGV as `_ADMIT`'s, then KEYS[3] the API key's index entry, ARGV[4..8] the rate
# check (`RateCheck.args`), the writes from ARGV[9]. {3} if the key leads elsewhere,
# {4, reset} if over the limit (neither writes anything); {0, remaining, reset} once written,
# and the quota refusals {1, ...} and {2, ...} with remaining and reset after them.
_ADMIT_COUNTED = lua.Script(
    lua.WRITES
    + AUTHENTICATE_AND_COUNT
    + """
local auth = authenticate_and_count(
  KEYS[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
if auth[1] ~= ARGV[8] then return {3} end
if auth[2] == 0 then return {4, auth[4]} end
local retained = tonumber(redis.call('GET', KEYS[1]) or '0')
if retained + tonumber(ARGV[2]) > tonumber(ARGV[1]) then
  return {1, retained, auth[3], auth[4]}
end
local queued = redis.call('ZCARD', KEYS[2])
if queued >= tonumber(ARGV[3]) then return {2, queued, auth[3], auth[4]} end
redis.call('INCRBY', KEYS[1], ARGV[2])
return apply_writes(9) or {0, auth[3], auth[4]}
"""
)

# Delete a job's hash and subtract what it added to its partner's counter.
# KEYS: the job. ARGV: the counter's key with %s for the partner id.
_FORGET = lua.Script(
    """
local bytes = tonumber(redis.call('HGET', KEYS[1], ARGV[2]) or '0')
if bytes > 0 then
  local key = string.format(ARGV[1], redis.call('HGET', KEYS[1], 'partner_id'))
  if redis.call('DECRBY', key, bytes) < 0 then redis.call('SET', key, 0) end
end
return redis.call('DEL', KEYS[1])
"""
)


def admit_and_write(
    writer: GroupCommit,
    writes: redis.client.Pipeline,
    *,
    partner_id: str,
    queued_index: str,
    new_bytes: int,
    quota: Quota,
    rate: RateCheck | None = None,
    fsync_wait_ms: int | None = None,
    replicas: int = 0,
    once: str | None = None,
) -> Any:
    """Apply `writes` (a new job's), counting `new_bytes`, if the partner is within `quota`.

    Raises RetainedBytesFull or BacklogFull, having written nothing. With `rate`, the
    request is first counted against the partner's rate limit in the same script:
    KeyChanged or RateLimited then also write nothing, and `rate` holds the answer.
    With `once` (a key the writes set; not with `rate`), raises AlreadyMade, having
    written nothing, if that key exists. Once written, returns WAITAOF's reply with
    `fsync_wait_ms` (`GroupCommit.run`, waiting for `replicas` replicas too), else None.
    """
    args: list[object] = [quota.max_retained_bytes, new_bytes, quota.max_backlog]
    keys = [retained_key(partner_id), queued_index]
    if once is not None and rate is not None:
        raise ValueError("a creation made once is counted against the rate limit first")
    if rate is None:
        reply, fsync = writer.run(
            _ADMIT if once is None else _ADMIT_ONCE,
            keys if once is None else [*keys, once],
            [*args, *lua.flat_writes(writes)],
            fsync_wait_ms=fsync_wait_ms,
            replicas=replicas,
        )
    else:
        reply, fsync = writer.run(
            _ADMIT_COUNTED,
            [*keys, rate.index_key],
            [*args, *rate.args(), *lua.flat_writes(writes)],
            fsync_wait_ms=fsync_wait_ms,
            replicas=replicas,
        )
        if reply[0] == 3:
            raise KeyChanged()
        if reply[0] == 4:
            raise RateLimited(_text(reply[1]))
        # Counted, whether written or refused for a quota.
        rate.remaining, rate.reset = int(reply[-2]), _text(reply[-1])
    if reply[0] == 5:
        raise AlreadyMade()
    if reply[0] == 1:
        raise RetainedBytesFull(
            f"this partner's retained jobs hold {reply[1]} bytes and this job's input is "
            f"{new_bytes}; the most it may keep is {quota.max_retained_bytes} "
            "(POSTBACK_PARTNER_MAX_RETAINED_BYTES); space is freed as finished jobs pass "
            "their retention",
            used=int(reply[1]),
            limit=quota.max_retained_bytes,
        )
    if reply[0] == 2:
        raise BacklogFull(
            f"{reply[1]} of your jobs are waiting "
            f"(POSTBACK_PARTNER_MAX_BACKLOG={quota.max_backlog}); submit again once they start",
            used=int(reply[1]),
            limit=quota.max_backlog,
        )
    return fsync


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def count_result(pipe: redis.client.Pipeline, job_key: str, partner_id: str, size: int) -> None:
    """Queue the writes that count a stored result of `size` bytes (with the result's write)."""
    pipe.hincrby(job_key, RETAINED_FIELD, size)
    pipe.incrby(retained_key(partner_id), size)


def forget(pipe: redis.client.Pipeline, job_key: str) -> None:
    """Queue the deletion of a job's hash with the subtraction of its bytes."""
    _FORGET.run(pipe, [job_key], [retained_key("%s"), RETAINED_FIELD])


def retained_bytes(client: redis.Redis, partner_id: str) -> int:
    """The input and result bytes the partner's stored jobs hold."""
    return int(cast("bytes | None", client.get(retained_key(partner_id))) or 0)
