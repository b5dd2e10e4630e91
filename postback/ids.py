"""Identifiers: a prefix and a ULID (time-ordered, so ids sort by creation time as text)."""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_ULID_RE = "[0-9A-HJKMNP-TV-Z]{26}"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


_last = [0]
_lock = threading.Lock()


def ulid(at: float | None = None) -> str:
    """26 characters: 48 bits of milliseconds, then 80 random bits.

    Ids made now by one process strictly increase, even within a millisecond
    (the random part is incremented), so they sort in the order they were made.
    """
    millis = int((time.time() if at is None else at) * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    if at is None:
        with _lock:
            if value <= _last[0] and value >> 80 >= millis - 1000:
                value = _last[0] + 1
            _last[0] = value
    return _encode(value, 26)


def time_bound(prefix: str, at: float) -> str:
    """The smallest id with `prefix` made at `at` (seconds): a bound for range queries by time."""
    return f"{prefix}_{_encode(max(0, int(at * 1000)), 10)}{'0' * 16}"


def lex_range(
    prefix: str, *, since: float | None, until: float | None, cursor: str | None
) -> tuple[str, str]:
    """The lexical range (low, high) of a sorted set of `prefix` ids, for ZRANGE BYLEX
    read newest first: made at or after `since`, before `until` and strictly before the
    id `cursor` (the last of the page before), each bound when given."""
    high = f"({cursor}" if cursor else "+"
    if until is not None:
        bound = time_bound(prefix, until)
        if cursor is None or bound < cursor:
            high = f"({bound}"
    low = f"[{time_bound(prefix, since)}" if since is not None else "-"
    return low, high


def new_id(prefix: str, *, at: float | None = None) -> str:
    """`job_01J...`, `ptn_01J...`, `msg_01J...`; made now, or at `at` (epoch seconds)."""
    return f"{prefix}_{ulid(at)}"


def is_id(prefix: str, value: str) -> bool:
    """Whether `value` is a well-formed id with this prefix."""
    return re.fullmatch(f"{prefix}_{_ULID_RE}", value) is not None
