"""Identifiers: a prefix and a ULID (time-ordered, so ids sort newest-last as text)."""

from __future__ import annotations

import os
import re
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
_ULID_RE = "[0-9A-HJKMNP-TV-Z]{26}"


def ulid() -> str:
    """26 characters: 48 bits of milliseconds, then 80 random bits."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, index = divmod(value, 32)
        chars.append(_ALPHABET[index])
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """`job_01J...`, `ptn_01J...`, `msg_01J...`."""
    return f"{prefix}_{ulid()}"


def is_id(prefix: str, value: str) -> bool:
    """Whether `value` is a well-formed id with this prefix."""
    return re.fullmatch(f"{prefix}_{_ULID_RE}", value) is not None
