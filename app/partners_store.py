"""Partners: a name, a hashed API key, and a signing secret (kept by `callbacks`)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import redis

from callbacks.secrets import SecretStore
from callbacks.signing import generate_secret
from postback import clock, ids

API_KEY_PREFIX = "pbk_"


def partner_key(partner_id: str) -> str:
    return f"pb:partner:{partner_id}"


def api_key_index(key_hash: str) -> str:
    return f"pb:apikey:{key_hash}"


def hash_api_key(api_key: str) -> str:
    """SHA-256 of the key: keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class PartnerStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.secrets = SecretStore(client)

    def create(self, name: str) -> dict[str, Any]:
        """A new partner; the returned API key and signing secret are shown only this once."""
        partner_id = ids.new_id("ptn")
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        signing_secret = generate_secret()
        key_hash = hash_api_key(api_key)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                partner_key(partner_id),
                mapping={
                    "id": partner_id,
                    "name": name,
                    "key_hash": key_hash,
                    "created_at": repr(clock.now()),
                    "disabled": 0,
                },
            )
            pipe.set(api_key_index(key_hash), partner_id)
            pipe.sadd("pb:partners", partner_id)
            self.secrets.set(partner_id, signing_secret, pipeline=pipe)
            pipe.execute()
        return {
            "id": partner_id,
            "name": name,
            "api_key": api_key,
            "signing_secret": signing_secret,
        }

    def authenticate(self, api_key: str) -> str | None:
        """The id of the enabled partner that owns `api_key`, or None."""
        key_hash = hash_api_key(api_key)
        partner_id = self.redis.get(api_key_index(key_hash))
        if partner_id is None:
            return None
        stored = self.redis.hmget(partner_key(partner_id.decode()), "key_hash", "disabled")
        if stored[0] is None or stored[1] == b"1":
            return None
        if not hmac.compare_digest(stored[0].decode(), key_hash):
            return None
        return partner_id.decode()

    def exists(self, partner_id: str) -> bool:
        return bool(self.redis.exists(partner_key(partner_id)))

    def rotate_secret(self, partner_id: str, *, grace_seconds: float) -> dict[str, Any] | None:
        """A new signing secret; the old one signs beside it for `grace_seconds`."""
        if not self.exists(partner_id):
            return None
        secret = self.secrets.rotate(partner_id, grace_seconds=grace_seconds)
        return {
            "id": partner_id,
            "signing_secret": secret,
            "previous_secret_expires_at": clock.rfc3339(clock.now() + grace_seconds),
        }
