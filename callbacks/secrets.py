"""Signing secrets per owner (a partner, for Postback), kept in Redis, with rotation."""

from __future__ import annotations

import redis

from callbacks.outbox import PREFIX
from callbacks.signing import generate_secret
from postback import clock


def _key(owner: str) -> str:
    return f"{PREFIX}secrets:{owner}"


class SecretStore:
    """The secrets that sign an owner's events.

    After a rotation the previous secret keeps signing, beside the new one,
    until its grace period ends: receivers switch over without losing a message.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def set(
        self, owner: str, secret: str, *, pipeline: redis.client.Pipeline | None = None
    ) -> None:
        """Make `secret` the only signing secret of `owner`."""
        target = pipeline if pipeline is not None else self.redis
        target.hset(_key(owner), mapping={"current": secret, "previous": "", "previous_until": 0})

    def rotate(self, owner: str, *, grace_seconds: float) -> str:
        """A new current secret; the old one also signs for `grace_seconds` more."""
        new = generate_secret()
        key = _key(owner)
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    old = pipe.hget(key, "current")
                    pipe.multi()
                    pipe.hset(
                        key,
                        mapping={
                            "current": new,
                            "previous": old or "",
                            "previous_until": repr(clock.now() + grace_seconds) if old else 0,
                        },
                    )
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def signing_secrets(self, owner: str) -> list[str]:
        """Every secret that signs `owner`'s events now, oldest first (empty if none)."""
        current, previous, until = self.redis.hmget(
            _key(owner), "current", "previous", "previous_until"
        )
        secrets = []
        if previous and until and float(until) > clock.now():
            secrets.append(previous.decode())
        if current:
            secrets.append(current.decode())
        return secrets
