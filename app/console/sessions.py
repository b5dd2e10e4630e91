"""Sign-in sessions of the console and the portal, kept in Redis so that signing out ends them.

A session is a random token in a cookie; Redis keeps only its SHA-256, under
`pb:console:session:{hash}`, with what it may do (`admin`, or `portal` for one
partner), its CSRF token, a message to show once, and an expiry as the key's TTL.
An admin session also keeps a digest of the admin token it was opened with: when
the operator changes `POSTBACK_ADMIN_TOKEN`, every admin session ends with it.

Each owner (the admin, or one partner) holds at most `MAX_SESSIONS_PER_OWNER`:
opening one more ends its oldest, so a leaked portal link cannot fill Redis.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import cast

import redis

from postback import clock

KEY_PREFIX = "pb:console:session:"
# Per owner: session hashes scored by their expiry.
OWNER_PREFIX = "pb:console:sessions:"
MAX_SESSIONS_PER_OWNER = 20
ADMIN_OWNER = "admin"


class Kind(StrEnum):
    ADMIN = "admin"
    PORTAL = "portal"


@dataclass(frozen=True)
class Session:
    """A signed-in session: who it is for and the token its forms must carry."""

    token_hash: str
    kind: Kind
    # The partner a portal session is scoped to; None for the admin.
    partner_id: str | None
    csrf_token: str
    expires_at: float
    # What the admin token was when the session opened (a digest); "" for the portal.
    grant: str
    # A message to show on the next page, once.
    notice: str = ""

    @property
    def owner(self) -> str:
        return self.partner_id or ADMIN_OWNER


def digest(text: str) -> str:
    """The SHA-256 of `text`, hex: what Redis keeps instead of a token."""
    return hashlib.sha256(text.encode()).hexdigest()


class Sessions:
    """Open, find and end sessions; each lasts `ttl_seconds` from its opening."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds

    def open(self, kind: Kind, *, partner_id: str | None = None, grant: str = "") -> str:
        """A new session; returns its token (for the cookie), which is not kept."""
        token = secrets.token_urlsafe(32)
        token_hash = digest(token)
        now = clock.now()
        expires_at = now + self.ttl_seconds
        owner = OWNER_PREFIX + (partner_id or ADMIN_OWNER)
        ttl_ms = max(1, int(self.ttl_seconds * 1000))
        with self.redis.pipeline() as pipe:
            pipe.hset(
                KEY_PREFIX + token_hash,
                mapping={
                    "kind": str(kind),
                    "partner_id": partner_id or "",
                    "csrf": secrets.token_urlsafe(32),
                    "expires_at": repr(expires_at),
                    "grant": grant,
                },
            )
            pipe.pexpire(KEY_PREFIX + token_hash, ttl_ms)
            pipe.zremrangebyscore(owner, "-inf", now)
            pipe.zadd(owner, {token_hash: expires_at})
            pipe.pexpire(owner, ttl_ms)
            pipe.zrange(owner, 0, -MAX_SESSIONS_PER_OWNER - 1)
            *_, oldest = pipe.execute()
        for old in cast("list[bytes]", oldest):
            self._end_hash(old.decode(), owner=partner_id or ADMIN_OWNER)
        return token

    def find(self, token: str) -> Session | None:
        """The live session of `token`, or None (unknown, expired or ended)."""
        if not token or len(token) > 128:
            return None
        token_hash = digest(token)
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(KEY_PREFIX + token_hash))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        return Session(
            token_hash=token_hash,
            kind=Kind(fields["kind"]),
            partner_id=fields["partner_id"] or None,
            csrf_token=fields["csrf"],
            expires_at=float(fields["expires_at"]),
            grant=fields.get("grant", ""),
            notice=fields.get("notice", ""),
        )

    def end(self, session: Session) -> None:
        """Sign out: the session's cookie no longer opens anything."""
        self._end_hash(session.token_hash, owner=session.owner)

    def _end_hash(self, token_hash: str, *, owner: str) -> None:
        with self.redis.pipeline() as pipe:
            pipe.delete(KEY_PREFIX + token_hash)
            pipe.zrem(OWNER_PREFIX + owner, token_hash)
            pipe.execute()

    def notify(self, session: Session, notice: str) -> None:
        """Show `notice` on the session's next page (the outcome of an action)."""
        self.redis.hset(KEY_PREFIX + session.token_hash, "notice", notice)

    def take_notice(self, session: Session) -> str:
        """The notice waiting for the session, if any, now shown and forgotten."""
        if not session.notice:
            return ""
        self.redis.hdel(KEY_PREFIX + session.token_hash, "notice")
        return session.notice


def same_token(given: str | None, expected: str) -> bool:
    """Whether a form's CSRF token is the session's, compared in constant time."""
    return bool(given) and hmac.compare_digest(str(given).encode(), expected.encode())
