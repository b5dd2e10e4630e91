"""Signed webhook delivery, following the Standard Webhooks specification.

Knows nothing of Flask or of job handlers: it takes an event (a body, a URL and
an owner whose secrets sign it), keeps it in Redis, and posts it until it is
delivered or given up.

Exceptions::

    CallbacksError
    └── SecretError          a signing secret is not `whsec_<base64>`
"""

from __future__ import annotations

from callbacks.errors import CallbacksError, SecretError
from callbacks.outbox import Event, Outbox, destination
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.signing import generate_secret, sign

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "CallbacksError",
    "Event",
    "Outbox",
    "RetryPolicy",
    "SecretError",
    "destination",
    "generate_secret",
    "sign",
]
