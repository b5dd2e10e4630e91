"""Signed, expiring links to large results, so they can be fetched without the API key."""

from __future__ import annotations

import secrets
from typing import cast

import redis
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

SECRET_KEY = "pb:secret:result-links"

__all__ = ["BadSignature", "ResultLinks", "SignatureExpired"]


def kept_key(client: redis.Redis, name: str) -> bytes:
    """The signing key kept in Redis under `name`: the first process to need it makes it
    (SET NX), every other one reads it."""
    client.set(name, secrets.token_urlsafe(32), nx=True)
    return cast(bytes, client.get(name))


class ResultLinks:
    """Make and check `/v1/results/{token}` links; the signing key lives in Redis."""

    def __init__(self, client: redis.Redis, *, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl_seconds = ttl_seconds
        self._serializer: URLSafeTimedSerializer | None = None

    def _signer(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            self._serializer = URLSafeTimedSerializer(
                kept_key(self.redis, SECRET_KEY), salt="postback.result-link"
            )
        return self._serializer

    def url(self, base_url: str, job_id: str) -> str:
        """A link to the job's result, valid for `ttl_seconds` from now."""
        return f"{base_url.rstrip('/')}/v1/results/{self._signer().dumps(job_id)}"

    def job_id(self, token: str) -> str:
        """The job a token links to; raises BadSignature, or SignatureExpired past the TTL."""
        return self._signer().loads(token, max_age=self.ttl_seconds)
