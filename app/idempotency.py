"""Idempotency-Key for job submission (draft-ietf-httpapi-idempotency-key-header).

A key's record is written only by the script that creates its job, with the
response, and that script writes nothing if the record exists: concurrent
duplicates cannot both create a job (the later ones get the first one's
response), a crash cannot leave a job without its record, and a request that
fails before its job is made leaves nothing behind, whatever became of Redis
meanwhile (after a failover, a marker written on the old primary would hold the
key for every retry). A submission that waited for its job (`Prefer: wait`)
replaces the record with the answer it gave in the end, so a replay answers what
the first got. A key reused with a different body is a 422. Keys are scoped per
partner and forgotten after `POSTBACK_IDEMPOTENCY_TTL_SECONDS`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, cast

import redis

from postback.errors import Conflict, InvalidInput, Malformed

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255

_SF_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\])*)"')
_TOKEN = re.compile(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*")


def parse_key(value: str) -> str:
    """The key from the header: a structured-field string (`"abc"`) or a bare token."""
    value = value.strip()
    match = _SF_STRING.fullmatch(value)
    if match:
        key = re.sub(r"\\(.)", r"\1", match.group(1))
    elif _TOKEN.fullmatch(value):
        key = value
    else:
        raise Malformed(f'{HEADER} must be a quoted string ("…") or a token')
    if not key or len(key) > MAX_KEY_LENGTH:
        raise Malformed(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters")
    return key


def fingerprint(body: Any) -> str:
    """The body's identity, blind to key order and whitespace."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Stored:
    """A response kept for replay."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def _done(print_: str, stored: Stored) -> str:
    """The record of a request answered with `stored`."""
    record = {
        "state": "done",
        "fingerprint": print_,
        "status": stored.status,
        "body": stored.body,
        "headers": stored.headers,
    }
    return json.dumps(record)


class Idempotency:
    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def record_key(partner_id: str, key: str) -> str:
        """The Redis key of the record of `key`: the job's creation is made once under it."""
        return f"pb:idem:{partner_id}:{hashlib.sha256(key.encode()).hexdigest()}"

    def lookup(self, partner_id: str, key: str, print_: str) -> Stored | None:
        """The stored response if a request with the key made its job; None if none did.

        Raises InvalidInput if the key was used with a different body, and Conflict
        (state "processing") for the marker an earlier version kept while it worked.
        """
        # A synchronous client: its replies are values, never awaitables.
        raw = cast(bytes | None, self.redis.get(self.record_key(partner_id, key)))
        if raw is None:
            return None
        record = json.loads(raw)
        if record["fingerprint"] != print_:
            raise InvalidInput(
                f"this {HEADER} was used with a different request body",
                errors={HEADER: ["already used with a different body"]},
            )
        if record["state"] != "done":
            raise Conflict(
                f"a request with this {HEADER} is still being processed; retry",
                state="processing",
            )
        return Stored(record["status"], record["body"], record["headers"])

    def finish(
        self, pipe: redis.client.Pipeline, partner_id: str, key: str, print_: str, stored: Stored
    ) -> None:
        """Keep the response, inside the transaction that made it (made once under
        `record_key`)."""
        pipe.set(self.record_key(partner_id, key), _done(print_, stored), ex=self.ttl_seconds)

    def replace(self, partner_id: str, key: str, print_: str, stored: Stored) -> None:
        """Keep `stored` instead of the response `finish` kept, for the rest of the key's
        time: the request was answered otherwise in the end (a `Prefer: wait` that saw
        its job end). Nothing is kept if the key has been forgotten meanwhile."""
        name = self.record_key(partner_id, key)
        self.redis.set(name, _done(print_, stored), xx=True, keepttl=True)
