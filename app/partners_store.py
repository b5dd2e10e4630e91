"""Partners: a name, a hashed API key, and a signing secret (kept by `callbacks`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any, cast

import redis

from callbacks.secrets import SecretState, SecretStore
from callbacks.signing import generate_secret
from postback import clock, ids
from postback.errors import Conflict
from postback.lua import Script

API_KEY_PREFIX = "pbk_"
# Every partner id, at score 0: ids sort by creation time, so paging is a range by id.
PARTNERS_KEY = "pb:partners"
# API key hash -> partner id, for exactly the keys that work now.
API_KEY_INDEX_PREFIX = "pb:apikey:"

# The two changes of a partner's key, each one script, so that no interleaving of a
# rotation and a disabling leaves a disabled partner with a key in the index.
# KEYS[1] the partner. ARGV: the new key's hash, the partner id, the index prefix.
# Returns 1 rotated, 0 no such partner, -1 disabled.
_ROTATE_KEY = Script("""
local disabled = redis.call('HGET', KEYS[1], 'disabled')
if not disabled then return 0 end
if disabled == '1' then return -1 end
local old = redis.call('HGET', KEYS[1], 'key_hash')
if old then redis.call('DEL', ARGV[3] .. old) end
redis.call('HSET', KEYS[1], 'key_hash', ARGV[1])
redis.call('SET', ARGV[3] .. ARGV[1], ARGV[2])
return 1
""")
# KEYS[1] the partner. ARGV: the index prefix. Returns 1 disabled (or already), 0 no such partner.
_DISABLE = Script("""
local hash = redis.call('HGET', KEYS[1], 'key_hash')
if not hash then return 0 end
redis.call('HSET', KEYS[1], 'disabled', 1)
redis.call('DEL', ARGV[1] .. hash)
return 1
""")


class PartnerDisabled(Conflict):
    """The partner was deleted: it can no longer be changed."""

    def __init__(self, partner_id: str) -> None:
        super().__init__(f"partner {partner_id} is disabled", state="disabled")
        self.partner_id = partner_id


def partner_key(partner_id: str) -> str:
    return f"pb:partner:{partner_id}"


def api_key_index(key_hash: str) -> str:
    return f"{API_KEY_INDEX_PREFIX}{key_hash}"


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
            pipe.zadd(PARTNERS_KEY, {partner_id: 0})
            self.secrets.set(partner_id, signing_secret, pipeline=pipe)
            pipe.execute()
        return {
            "id": partner_id,
            "name": name,
            "api_key": api_key,
            "signing_secret": signing_secret,
        }

    def authenticate(self, api_key: str) -> str | None:
        """The id of the enabled partner that owns `api_key`, or None.

        One lookup: the index holds exactly the live keys (rotation and
        disabling delete the old entry in the same script). The lookup
        is by a SHA-256 of a 256-bit key, so it leaks nothing by its timing.
        """
        partner_id = cast(bytes | None, self.redis.get(api_key_index(hash_api_key(api_key))))
        return partner_id.decode() if partner_id is not None else None

    def get(self, partner_id: str) -> dict[str, Any] | None:
        """The partner without secrets: id, name, created_at, disabled."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(partner_key(partner_id)))
        if not raw:
            return None
        record = {k.decode(): v.decode() for k, v in raw.items()}
        return {
            "id": record["id"],
            "name": record["name"],
            "created_at": clock.rfc3339(float(record["created_at"])),
            "disabled": record.get("disabled") == "1",
        }

    def names(self, partner_ids: Iterable[str]) -> dict[str, str]:
        """The name of each partner of `partner_ids` that exists, in one round trip."""
        wanted = sorted(set(partner_ids))
        if not wanted:
            return {}
        with self.redis.pipeline(transaction=False) as pipe:
            for partner_id in wanted:
                pipe.hget(partner_key(partner_id), "name")
            found = pipe.execute()
        return {pid: name.decode() for pid, name in zip(wanted, found, strict=True) if name}

    def page(self, *, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Partners, oldest first, `limit` at a time after `cursor` (a partner id)."""
        start = f"({cursor}" if cursor else "-"
        found = cast(
            list[bytes],
            self.redis.zrange(PARTNERS_KEY, start, "+", bylex=True, offset=0, num=limit + 1),
        )
        partner_ids = [item.decode() for item in found]
        more = len(partner_ids) > limit
        partner_ids = partner_ids[:limit]
        items = [p for p in (self.get(i) for i in partner_ids) if p is not None]
        return items, (partner_ids[-1] if more else None)

    def _enabled(self, partner_id: str) -> bool:
        """True if the partner exists and is enabled; raises PartnerDisabled if disabled."""
        disabled = self.redis.hget(partner_key(partner_id), "disabled")
        if disabled is None:
            return False
        if disabled == b"1":
            raise PartnerDisabled(partner_id)
        return True

    def rotate_key(self, partner_id: str) -> dict[str, Any] | None:
        """A new API key; the old one stops working at once. None if no such partner.

        One script: a partner disabled at the same moment is either disabled after
        the rotation (and the new key deleted with it) or refused (PartnerDisabled).
        """
        api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        args = [hash_api_key(api_key), partner_id, API_KEY_INDEX_PREFIX]
        done = _ROTATE_KEY.run(self.redis, [partner_key(partner_id)], args)
        if done == -1:
            raise PartnerDisabled(partner_id)
        return {"id": partner_id, "api_key": api_key} if done == 1 else None

    def disable(self, partner_id: str) -> bool:
        """Disable a partner: its keys stop working at once. False if no such partner."""
        args = [API_KEY_INDEX_PREFIX]
        return bool(_DISABLE.run(self.redis, [partner_key(partner_id)], args))

    def rotate_secret(self, partner_id: str, *, grace_seconds: float) -> dict[str, Any] | None:
        """A new signing secret; the one it replaces signs beside it for `grace_seconds`, and
        every older one still in its grace until its own expiry. None if no such partner.

        TooManySecrets (from `callbacks.secrets`) if `MAX_SECRETS` would sign at once.
        """
        if not self._enabled(partner_id):
            return None
        secret, state = self.secrets.rotate(partner_id, grace_seconds=grace_seconds)
        # The secret just rotated out is the last to expire (with no grace: it has, now).
        rotated_out = state.expires_at[-1] if grace_seconds > 0 and state.expires_at else None
        return {
            "id": partner_id,
            "signing_secret": secret,
            "previous_secret_expires_at": clock.rfc3339(rotated_out or clock.now()),
            **_secret_state(state),
        }

    def expire_secrets(self, partner_id: str) -> dict[str, Any] | None:
        """End the grace of every rotated-out secret now: only the newest signs. None if no
        such partner."""
        if not self._enabled(partner_id):
            return None
        before, _ = self.secrets.expire(partner_id)
        state = self.secrets.state(partner_id)
        return {"id": partner_id, "expired": max(0, before - state.count), **_secret_state(state)}


def _secret_state(state: SecretState) -> dict[str, Any]:
    """`secrets`: how many sign now; `secrets_expire_at`: when the older ones stop, oldest
    first (the newest has no expiry)."""
    return {
        "secrets": state.count,
        "secrets_expire_at": [clock.rfc3339(at) for at in state.expires_at],
    }
