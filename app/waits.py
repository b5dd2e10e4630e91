"""Long-polls: a request waits for a job's end without holding a thread or a Redis connection.

Each API process keeps one subscription to every job's end channel, in a
thread of its own (a greenlet under the gevent server). A waiting request
registers an event for its job and sleeps on it; the subscription sets the
events of the jobs it hears end. While the subscription is down (Redis
restarting), waiters re-read their job every `FALLBACK_POLL_SECONDS` instead,
and every waiter re-reads once when it comes back, so no end is missed.

The subscription ends when nobody waits, and starts with the next wait.

A partner holds at most `partner_max_waits` waits at once across API
processes: a sorted set per partner of wait tokens scored by when they lapse
(a process that dies leaves entries that lapse by themselves).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator

import redis

from postback import clock, lua
from postback.errors import LimitExceeded
from worker.jobs import done_channel

log = logging.getLogger(__name__)

FALLBACK_POLL_SECONDS = 1.0
# A wait's entry outlives the wait by this much (a crashed process's entries lapse after it).
LEASE_SLACK_SECONDS = 30.0
RESUBSCRIBE_MAX_SECONDS = 5.0

_PREFIX, _SUFFIX = done_channel("\0").split("\0")

# KEYS[1] the partner's waits. ARGV: now, lapses at, token, most at once.
# Returns the number of waits held before this one; the token is added only below the bound.
_HOLD = lua.Script("""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
end
return held
""")


def waits_key(partner_id: str) -> str:
    return f"pb:waits:{partner_id}"


class Waits:
    """The waits of one API process."""

    def __init__(self, client: redis.Redis, *, max_per_partner: int) -> None:
        self.redis = client
        self.max_per_partner = max_per_partner
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = {}
        self._subscribed = threading.Event()
        self._listener: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, partner_id: str, seconds: float) -> Iterator[None]:
        """A place among the partner's waits for `seconds`; 429 when it has them all."""
        token = secrets.token_hex(8)
        key = waits_key(partner_id)
        now = clock.now()
        held = _HOLD.run(
            self.redis,
            [key],
            [repr(now), repr(now + seconds + LEASE_SLACK_SECONDS), token, self.max_per_partner],
        )
        if int(held) >= self.max_per_partner:
            raise LimitExceeded(
                f"this partner already holds {int(held)} waits (?wait=), the most it may hold "
                f"at once (POSTBACK_PARTNER_MAX_WAITS={self.max_per_partner}); poll without "
                "?wait= or retry when one ends",
                limit=self.max_per_partner,
                retry_after_seconds=1,
            )
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):
                self.redis.zrem(key, token)

    @contextlib.contextmanager
    def watch(self, job_id: str) -> Iterator[threading.Event]:
        """An event set when the job may have ended (re-read it, then `clear` and wait again).

        Subscribed before it is returned (when Redis answers): read the job
        after entering, and an end between the read and the wait is not missed.
        """
        ended = threading.Event()
        with self._lock:
            self._waiting.setdefault(job_id, set()).add(ended)
            self._start()
        self._subscribed.wait(FALLBACK_POLL_SECONDS)
        try:
            yield ended
        finally:
            with self._lock:
                events = self._waiting.get(job_id)
                if events is not None:
                    events.discard(ended)
                    if not events:
                        del self._waiting[job_id]

    def sleep(self, ended: threading.Event, seconds: float) -> bool:
        """Wait up to `seconds` for `ended` (re-checking sooner while unsubscribed)."""
        if not self._subscribed.is_set():
            seconds = min(seconds, FALLBACK_POLL_SECONDS)
        woken = ended.wait(seconds)
        ended.clear()
        return woken or not self._subscribed.is_set()

    def _start(self) -> None:
        if self._listener is None or not self._listener.is_alive():
            self._listener = threading.Thread(target=self._listen, name="waits", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        pause = 0.1
        while not self._idle():
            pubsub = self.redis.pubsub()
            try:
                pubsub.psubscribe(done_channel("*"))
                while not self._idle():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._subscribed.set()
                        pause = 0.1
                        # Ends published while unsubscribed were not heard: all re-read.
                        self._wake(None)
                    elif message["type"] == "pmessage":
                        channel = message["channel"].decode()
                        self._wake(channel[len(_PREFIX) : len(channel) - len(_SUFFIX)])
            except redis.RedisError as exc:
                if self._subscribed.is_set():
                    log.warning("long-polls lost their subscription (%s); polling", exc)
                self._subscribed.clear()
                time.sleep(pause)
                pause = min(pause * 2, RESUBSCRIBE_MAX_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def _idle(self) -> bool:
        """Whether nobody waits; if so the listener is done (the next wait starts another)."""
        with self._lock:
            if self._waiting:
                return False
            self._listener = None
            self._subscribed.clear()
            return True

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            if job_id is None:
                events = [event for group in self._waiting.values() for event in group]
            else:
                events = list(self._waiting.get(job_id, ()))
        for event in events:
            event.set()
