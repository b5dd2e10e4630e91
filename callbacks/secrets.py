"""Signing secrets per owner (a partner, for Postback), kept in Redis."""

from __future__ import annotations

import redis

from callbacks.outbox import PREFIX


def _key(owner: str) -> str:
    return f"{PREFIX}secrets:{owner}"


class SecretStore:
    """The secrets that sign an owner's events, oldest first."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def set(
        self, owner: str, secret: str, *, pipeline: redis.client.Pipeline | None = None
    ) -> None:
        """Make `secret` the only signing secret of `owner`."""
        (pipeline if pipeline is not None else self.redis).hset(_key(owner), "current", secret)

    def signing_secrets(self, owner: str) -> list[str]:
        """Every secret that signs `owner`'s events now (empty if none)."""
        current = self.redis.hget(_key(owner), "current")
        return [current.decode()] if current else []
