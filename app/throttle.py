"""Protection from too much: per-partner rate limits, a bound on the queued backlog, and
headroom in Redis's memory.

Per-partner bounds on queued jobs and stored bytes are checked by Redis when
the job is created (`worker.quotas`); the bounds here are on the whole service.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Any, cast

import redis
from flask import Response, g
from limits import parse
from rq import Queue

from app.partners_store import api_key_index, hash_api_key, partner_key
from postback import metrics as pm
from postback.errors import Unavailable
from postback.ratewindow import AUTHENTICATE_AND_COUNT, RateCheck, RateLimited
from worker.jobs import QUEUES

# The former name of the refusal `RateLimiter.refused` makes.
TooManyRequests = RateLimited

# Retry-After of a refused submission: the backlog drains as workers start jobs; memory
# is freed only as finished jobs pass their retention.
BACKLOG_RETRY_SECONDS = 30
MEMORY_RETRY_SECONDS = 60

# Find the partner of an API key and count the request against its limit, in one
# round trip. KEYS[1] the key's index entry. ARGV: rate-key prefix, limit, window
# seconds, now. Returns {partner id or false, allowed 0/1, remaining, seconds to reset}.
_AUTHENTICATE_AND_COUNT = (
    AUTHENTICATE_AND_COUNT
    + """
return authenticate_and_count(
  KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
"""
)
# Count one request of a partner known otherwise (a portal session), if the partner
# exists and is enabled. KEYS[1] the partner's record. ARGV as above, then the
# partner's id. Returns as above (false, nothing counted, for no enabled partner).
_COUNT = (
    AUTHENTICATE_AND_COUNT
    + """
local disabled = redis.call('HGET', KEYS[1], 'disabled')
if not disabled or disabled == '1' then return {false, 0, 0, '0'} end
return count_request(
  ARGV[5], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
"""
)
RATE_PREFIX = "pb:ratelimit:"


class RateLimiter:
    """`POSTBACK_RATE_LIMIT` per partner, counted in Redis so every API process shares it."""

    # How many keys a process remembers the partner of, and for how long: a known key's
    # submission is counted by the script that creates its job (`pending`).
    known_keys = 10_000
    known_seconds = 60.0

    def __init__(self, client: redis.Redis, rate: str) -> None:
        self.item = parse(rate)
        self.redis = client
        self._script = client.register_script(_AUTHENTICATE_AND_COUNT)
        self._count = client.register_script(_COUNT)
        self._known: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._known_lock = threading.Lock()

    def pending(self, api_key: str) -> RateCheck | None:
        """The count of this request, to be made by the script that writes for it, if
        this process knows the key's partner (else None: `authenticate_and_count`).

        The script looks the key up again and refuses if it no longer leads to that
        partner, so what is remembered here never lets a revoked key write."""
        key_hash = hash_api_key(api_key)
        with self._known_lock:
            found = self._known.get(key_hash)
        if found is None or time.monotonic() - found[1] > self.known_seconds:
            return None
        return RateCheck(
            index_key=api_key_index(key_hash),
            partner_id=found[0],
            prefix=RATE_PREFIX,
            limit=self.item.amount,
            window_seconds=self.item.get_expiry(),
            now=time.time(),
        )

    def forget(self, api_key: str) -> None:
        with self._known_lock:
            self._known.pop(hash_api_key(api_key), None)

    def answered(self, check: RateCheck) -> None:
        """The RateLimit-* headers of a count made by a write (`pending`)."""
        self._headers(check.remaining, check.reset)

    def refused(self, reset: str) -> RateLimited:
        """The refusal of a request over the limit, counted (`reset` as the script gave it)."""
        reset_seconds = self._headers(0, reset)
        pm.counter(self.redis, "postback_rate_limited_total")
        return RateLimited(
            reset,
            limit=self.item.amount,
            detail=f"more than {self.item.amount} requests per {self.item.GRANULARITY.name}; "
            f"retry in {reset_seconds} s",
        )

    def _headers(self, remaining: int, reset: str) -> int:
        reset_seconds = max(1, math.ceil(float(reset)))
        g.rate_limit_headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, int(remaining))),
            "RateLimit-Reset": str(reset_seconds),
        }
        return reset_seconds

    def _remember(self, key_hash: str, partner_id: str) -> None:
        with self._known_lock:
            self._known[key_hash] = (partner_id, time.monotonic())
            self._known.move_to_end(key_hash)
            while len(self._known) > self.known_keys:
                self._known.popitem(last=False)

    def authenticate_and_count(self, api_key: str) -> str | None:
        """The partner owning `api_key` (None if no live key), its request counted.

        Raises RateLimited past the limit; the RateLimit-* headers go on the response
        either way.
        """
        key_hash = hash_api_key(api_key)
        partner, allowed, remaining, reset = self._script(
            keys=[api_key_index(key_hash)],
            args=[RATE_PREFIX, self.item.amount, self.item.get_expiry(), repr(time.time())],
        )
        if not partner:
            self.forget(api_key)
            return None
        partner_id = partner.decode()
        self._remember(key_hash, partner_id)
        reset = reset.decode() if isinstance(reset, bytes) else reset
        if not allowed:
            raise self.refused(reset)
        self._headers(remaining, reset)
        return partner_id

    def count(self, partner_id: str) -> bool:
        """Count one request of `partner_id` against its limit (a portal page, which acts
        for the partner without its key): False, nothing counted, if there is no such
        enabled partner; RateLimited past the limit."""
        partner, allowed, remaining, reset = self._count(
            keys=[partner_key(partner_id)],
            args=[
                RATE_PREFIX,
                self.item.amount,
                self.item.get_expiry(),
                repr(time.time()),
                partner_id,
            ],
        )
        if not partner:
            return False
        reset = reset.decode() if isinstance(reset, bytes) else reset
        if not allowed:
            raise self.refused(reset)
        self._headers(remaining, reset)
        return True


def add_rate_limit_headers(response: Response) -> Response:
    """After each request: the partner's rate-limit headers, when there are any (a 429
    carries them already)."""
    headers = g.get("rate_limit_headers")
    if headers and "RateLimit-Limit" not in response.headers:
        response.headers.extend(headers)
    return response


class Backlog:
    """A bound on queued jobs that costs a Redis read only now and then.

    The count is read at most every `refresh_seconds`, and again whenever this
    process's own submissions since the last read could have reached the
    limit, so the bound is exact for one process and close for several.
    """

    refresh_seconds = 0.25

    def __init__(self, client: redis.Redis, max_backlog: int) -> None:
        self.redis = client
        self.max_backlog = max_backlog
        self._waiting = 0
        self._added = 0
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def _read(self) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            for name in QUEUES.values():
                pipe.llen(Queue(name, connection=self.redis).key)
            self._waiting = sum(pipe.execute())
        self._added = 0
        self._read_at = time.monotonic()

    def admit(self) -> None:
        """Count one submission; Unavailable (with a retry time) while the backlog is full."""
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_seconds:
                self._read()
            if self._waiting + self._added >= self.max_backlog:
                self._read()
            if self._waiting + self._added >= self.max_backlog:
                # No count: the backlog is every partner's, and none of this one's business.
                raise Unavailable(
                    "the service is busy; submissions resume when its backlog drains",
                    retry_after_seconds=BACKLOG_RETRY_SECONDS,
                )
            self._added += 1


# Submissions are refused once Redis uses this much of its `maxmemory`, so that
# Redis itself (`noeviction`) never has to refuse a write: jobs already accepted
# keep running and finishing, and reads keep working.
MEMORY_REFUSE_FRACTION = 0.9


class MemoryHeadroom:
    """Refuses submissions while Redis is near its `maxmemory`, from an INFO read now and then.

    INFO costs more than a submission, so each process reads it at most every
    `refresh_seconds`. A Redis without `maxmemory` (0) is never refused here.
    """

    refresh_seconds = 0.5

    def __init__(self, client: redis.Redis, *, refuse_fraction: float = MEMORY_REFUSE_FRACTION):
        self.redis = client
        self.refuse_fraction = refuse_fraction
        self._full = False
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def _read(self) -> None:
        # A synchronous client: its reply is the dict, never an awaitable.
        info = cast(dict[str, Any], self.redis.info("memory"))
        limit = int(info.get("maxmemory") or 0)
        self._full = limit > 0 and int(info["used_memory"]) >= limit * self.refuse_fraction
        self._read_at = time.monotonic()

    def admit(self) -> None:
        """Unavailable (with a retry time) while Redis's memory is nearly full."""
        with self._lock:
            if time.monotonic() - self._read_at > self.refresh_seconds:
                self._read()
            full = self._full
        if full:
            raise Unavailable(
                "the job store is nearly out of memory; submissions resume as finished "
                "jobs are removed",
                retry_after_seconds=MEMORY_RETRY_SECONDS,
            )
