"""Signing secrets per owner (a partner, for Postback), kept in Redis, with rotation.

An owner's secrets are a list, oldest to newest (as itsdangerous takes them):
the newest signs until the next rotation; each older one was rotated out at
some moment and signs beside the newer ones until its own expiry, that moment
plus the grace period it was given. Rotation appends, expiry removes; a
rotation never shortens the grace an earlier one promised.

In Redis the list is the JSON field `secrets` of the owner's hash,
`[[secret, expires_at], …]` with `expires_at` 0 for the newest. Records of the
earlier two-slot layout (`current`, `previous`, `previous_until`) are read as
the list they stand for and rewritten as a list by the next change.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

from callbacks.errors import CallbacksError
from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.signing import generate_secret
from postback import clock
from postback.lua import Script

# How long a delivery process reuses an owner's secrets before reading them again.
CACHE_SECONDS = 1.0
# The most secrets that may sign an owner's messages at once: every one is an HMAC
# per attempt and a signature in the header.
MAX_SECRETS = 10


class TooManySecrets(CallbacksError):
    """A rotation would make more than `MAX_SECRETS` sign at once; expire some first."""

    def __init__(self, owner: str, count: int) -> None:
        super().__init__(f"{count} secrets already sign for {owner}")
        self.owner = owner
        self.count = count


@dataclass(frozen=True)
class SecretState:
    """What signs an owner's messages now: how many secrets, and when the older ones expire
    (oldest first; the newest has no expiry)."""

    count: int
    expires_at: tuple[float, ...]


_FIELDS = ("secrets", "current", "previous", "previous_until")
_LEGACY = ("current", "previous", "previous_until")

# Lua: the owner's list from the hash's fields (either layout), live entries only.
_READ = """
local function live_secrets(key, now)
  local raw = redis.call('HMGET', key, 'secrets', 'current', 'previous', 'previous_until')
  local list = {}
  if raw[1] then
    list = cjson.decode(raw[1])
  else
    local until_ = tonumber(raw[4] or '0') or 0
    if raw[3] and raw[3] ~= '' and until_ > 0 then table.insert(list, {raw[3], until_}) end
    if raw[2] and raw[2] ~= '' then table.insert(list, {raw[2], 0}) end
  end
  local live = {}
  for _, entry in ipairs(list) do
    local until_ = tonumber(entry[2])
    if until_ == 0 or until_ > now then table.insert(live, {entry[1], until_}) end
  end
  return live
end
local function store(key, list)
  redis.call('HSET', key, 'secrets', cjson.encode(list))
  redis.call('HDEL', key, 'current', 'previous', 'previous_until')
end
local function expiries(list)
  local found = {}
  for _, entry in ipairs(list) do
    if entry[2] ~= 0 then table.insert(found, string.format('%.6f', entry[2])) end
  end
  return found
end
"""
# KEYS[1] the owner's hash. ARGV: the new secret, now, grace seconds, most secrets.
# The newest is rotated out (expiring at now + grace, dropped if that is not later
# than now), the new one appended. Returns {count, expiries…}, or {-1, count} if full.
_ROTATE = Script(
    _READ
    + """
local now, grace = tonumber(ARGV[2]), tonumber(ARGV[3])
local kept = {}
for _, entry in ipairs(live_secrets(KEYS[1], now)) do
  -- Whole milliseconds, down (no grace stays no grace): the list is stored as JSON,
  -- whose numbers keep 14 digits.
  if entry[2] == 0 then entry[2] = math.floor((now + grace) * 1000) / 1000 end
  if entry[2] > now then table.insert(kept, entry) end
end
if #kept + 1 > tonumber(ARGV[4]) then return {-1, #kept} end
table.insert(kept, {ARGV[1], 0})
store(KEYS[1], kept)
local reply = {#kept}
for _, at in ipairs(expiries(kept)) do table.insert(reply, at) end
return reply
"""
)
# KEYS[1] the owner's hash. ARGV: now. Only the newest secret is kept.
# Returns {count before, count after}.
_EXPIRE = Script(
    _READ
    + """
local live = live_secrets(KEYS[1], tonumber(ARGV[1]))
if #live == 0 then return {0, 0} end
store(KEYS[1], {{live[#live][1], 0}})
return {#live, 1}
"""
)


class SecretStore:
    """The secrets that sign an owner's messages.

    After a rotation each earlier secret keeps signing, beside the newer ones,
    until its own grace period ends: receivers switch over without losing a message.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys = DEFAULT_KEYS,
        aclient: redis.asyncio.Redis | None = None,
    ) -> None:
        self.redis = client
        self.aredis = aclient
        self.keys = keys
        self._cache: dict[str, tuple[float, list[str]]] = {}
        # Reads in flight: the attempts that start together wait for one read, not each its own.
        self._reading: dict[str, asyncio.Future[list[str]]] = {}

    def set(
        self, owner: str, secret: str, *, pipeline: redis.client.Pipeline | None = None
    ) -> None:
        """Make `secret` the only signing secret of `owner`."""
        target: Any = pipeline if pipeline is not None else self.redis
        key = self.keys.secrets(owner)
        target.hset(key, "secrets", json.dumps([[secret, 0]]))
        target.hdel(key, *_LEGACY)

    def rotate(
        self, owner: str, *, grace_seconds: float, max_secrets: int = MAX_SECRETS
    ) -> tuple[str, SecretState]:
        """A new newest secret; the one it replaces signs for `grace_seconds` more, and every
        older one until its own expiry. TooManySecrets if `max_secrets` would sign at once."""
        new = generate_secret()
        args = [new, repr(clock.now()), repr(float(grace_seconds)), max_secrets]
        reply = _ROTATE.run(self.redis, [self.keys.secrets(owner)], args)
        if int(reply[0]) == -1:
            raise TooManySecrets(owner, int(reply[1]))
        return new, SecretState(int(reply[0]), tuple(float(at) for at in reply[1:]))

    def expire(self, owner: str) -> tuple[int, int]:
        """End every grace now: only the newest secret signs. (count before, count after)."""
        before, after = _EXPIRE.run(self.redis, [self.keys.secrets(owner)], [repr(clock.now())])
        return int(before), int(after)

    def state(self, owner: str) -> SecretState:
        """How many secrets sign `owner`'s messages now, and when the older ones expire."""
        entries = _live(self._fields(self.redis.hmget(self.keys.secrets(owner), list(_FIELDS))))
        return SecretState(len(entries), tuple(at for _, at in entries if at))

    def signing_secrets(self, owner: str) -> list[str]:
        """Every secret that signs `owner`'s messages now, oldest first (empty if none)."""
        return _secrets(self._fields(self.redis.hmget(self.keys.secrets(owner), list(_FIELDS))))

    async def asigning_secrets(self, owner: str) -> list[str]:
        """`signing_secrets` from the asyncio client, reused for up to `CACHE_SECONDS`."""
        cached = self._cache.get(owner)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        reading = self._reading.get(owner)
        if reading is None:
            reading = self._reading[owner] = asyncio.ensure_future(self._read(owner, now))
            reading.add_done_callback(lambda _: self._reading.pop(owner, None))
        # Shielded: one waiter that gives up does not cancel the read for the others.
        return await asyncio.shield(reading)

    async def _read(self, owner: str, now: float) -> list[str]:
        assert self.aredis is not None
        reply = await cast(
            "Awaitable[list[Any]]", self.aredis.hmget(self.keys.secrets(owner), list(_FIELDS))
        )
        found = _secrets(self._fields(reply))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[owner] = (now, found)
        return found

    @staticmethod
    def _fields(reply: Any) -> list[bytes | None]:
        return cast(list[bytes | None], reply)


def _live(reply: list[bytes | None]) -> list[tuple[str, float]]:
    """The (secret, expires_at) entries that sign now, oldest first, from either layout."""
    listed, current, previous, until = reply
    if listed is not None:
        entries = [(str(secret), float(at)) for secret, at in json.loads(listed)]
    else:
        entries = []
        if previous and until and float(until) > 0:
            entries.append((previous.decode(), float(until)))
        if current:
            entries.append((current.decode(), 0.0))
    now = clock.now()
    return [(secret, at) for secret, at in entries if at == 0 or at > now]


def _secrets(reply: list[bytes | None]) -> list[str]:
    return [secret for secret, _ in _live(reply)]
