"""Signed webhook delivery, following the Standard Webhooks specification.

Knows nothing of Flask or of job handlers: it takes an event (a body, a URL and
an owner whose secrets sign it), keeps it in Redis, and posts it until it is
delivered or given up.

Exceptions::

    CallbacksError
    ├── SecretError          a signing secret is not `whsec_<base64>`
    └── UnsafeUrl            a callback URL is malformed or aims at a non-public address
"""

from __future__ import annotations

from callbacks.errors import CallbacksError, SecretError, UnsafeUrl
from callbacks.outbox import Event, Outbox, destination
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.signing import generate_secret, sign
from callbacks.ssrf import DEFAULT_URL_POLICY, UrlPolicy, resolve_and_check

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_URL_POLICY",
    "CallbacksError",
    "Event",
    "Outbox",
    "RetryPolicy",
    "SecretError",
    "UnsafeUrl",
    "UrlPolicy",
    "destination",
    "generate_secret",
    "resolve_and_check",
    "sign",
]
