"""Time, in one place: epoch seconds for storage, RFC 3339 UTC for the API."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def now() -> float:
    """Seconds since the epoch (wall clock; stored in Redis, compared across processes)."""
    return time.time()


# The last second formatted, `(second, "2026-11-24T05:46:27.")`: most calls fall in it.
_last_second: tuple[int, str] = (0, "")


def rfc3339(epoch_seconds: float | None) -> str | None:
    """`2026-11-24T05:46:27.123Z`, or None for None."""
    global _last_second
    if epoch_seconds is None:
        return None
    # Whole microseconds first, rounded as datetime rounds them, then milliseconds cut off.
    fraction, whole = math.modf(epoch_seconds)
    second, micros = int(whole), round(fraction * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    elif micros < 0:
        second, micros = second - 1, micros + 1_000_000
    known, text = _last_second
    if second != known or not text:
        moment = datetime.fromtimestamp(second, tz=UTC)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (second, text)
    return f"{text}{micros // 1000:03d}Z"
