"""Small helpers several test modules share."""

from __future__ import annotations

import redis

PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def stored_state(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key and its value, but the rate limiter's counters (which every request moves)."""
    return {
        key: client.dump(key) for key in client.scan_iter() if not key.startswith(b"pb:ratelimit")
    }
