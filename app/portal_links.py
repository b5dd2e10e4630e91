"""Signed, expiring links that open a partner's portal: `{base}/portal/enter?token=…`.

A token carries a partner id and an explicit expiry (epoch seconds), signed with
itsdangerous under its own salt by a key kept in Redis, which the first process
to need it makes (SET NX) and every other one reads. A link is only a way in: the
portal checks the partner again when it is opened, so a disabled partner's links
open nothing, and the session it opens lasts as long as any console session.

Checking a token answers the domain errors, so the API and the portal say the same:

    NotFound        a token not signed by this key (tampered with, cut, garbage)
    └── LinkExpired  a token that was signed here, past its expiry (410)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from itsdangerous import BadData, URLSafeSerializer

from app.errors import LinkExpired, NotFound
from postback import clock, ids
from worker.results import kept_key

SECRET_KEY = "pb:secret:portal-links"
SALT = "postback.portal-link"
PATH = "/portal/enter"
# Far above any token this module signs: a longer one is refused unread.
MAX_TOKEN_CHARS = 512


@dataclass(frozen=True)
class PortalLink:
    """A link that opens `partner_id`'s portal until `expires_at` (epoch seconds)."""

    partner_id: str
    url: str
    expires_at: float

    def as_json(self) -> dict[str, Any]:
        """The body of `POST /v1/admin/partners/{id}/portal-link`."""
        return {"url": self.url, "expires_at": clock.rfc3339(self.expires_at)}


class PortalLinks:
    """Sign and check portal links; each is valid for `ttl_seconds` from its signing."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: float) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self._serializer: URLSafeSerializer | None = None

    def _signer(self) -> URLSafeSerializer:
        if self._serializer is None:
            self._serializer = URLSafeSerializer(kept_key(self.redis, SECRET_KEY), salt=SALT)
        return self._serializer

    def token(self, partner_id: str, *, expires_at: float) -> str:
        """A token for `partner_id` that expires at `expires_at` (tests sign past ones)."""
        return self._signer().dumps([partner_id, int(expires_at)])

    def make(self, base_url: str, partner_id: str) -> PortalLink:
        """A link to `partner_id`'s portal under `base_url`, valid for `ttl_seconds`."""
        expires_at = int(clock.now() + self.ttl_seconds)
        token = self.token(partner_id, expires_at=expires_at)
        return PortalLink(partner_id, f"{base_url.rstrip('/')}{PATH}?token={token}", expires_at)

    def partner_id(self, token: str) -> str:
        """The partner a live token opens; NotFound if it was not signed here, LinkExpired
        once its expiry has passed."""
        try:
            if not token or len(token) > MAX_TOKEN_CHARS:
                raise BadData("no token")
            payload = self._signer().loads(token)
        except BadData:
            raise NotFound("no such portal link", kind="portal link") from None
        if not (
            isinstance(payload, list)
            and len(payload) == 2
            and isinstance(payload[0], str)
            and ids.is_id("ptn", payload[0])
            and isinstance(payload[1], int)
        ):
            raise NotFound("no such portal link", kind="portal link")
        partner_id, expires_at = payload
        if clock.now() >= expires_at:
            raise LinkExpired("This portal link has expired: ask for a new one", kind="portal link")
        return partner_id
