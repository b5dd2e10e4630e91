"""Time, in one place: epoch seconds for storage, RFC 3339 UTC for the API."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def now() -> float:
    """Seconds since the epoch (wall clock; stored in Redis, compared across processes)."""
    return time.time()


def rfc3339(epoch_seconds: float | None) -> str | None:
    """`2026-11-24T05:46:27.123Z`, or None for None."""
    if epoch_seconds is None:
        return None
    moment = datetime.fromtimestamp(epoch_seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
