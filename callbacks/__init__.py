"""Signed webhook delivery, following the Standard Webhooks specification.

Knows nothing of Flask or of job handlers. It takes a `Message` (an id, an
owner whose secrets sign it, a type and a body) and a URL, keeps the
`Delivery` in Redis under a key prefix it is given, and posts it — under a
hard deadline, one attempt at a time, with fair and adaptive concurrency,
circuits per owner and destination — until it is delivered or given up.
What happens is reported to an `Observer`.

Modules: `model` (the nouns), `observer` (how it talks back), `outbox`
(store and schedule) with `claims` (take, keep, give back and settle, fenced
by a token), `parking` (held back while a circuit is open) and `rounds`
(replay, redelivery), `lanes` (who gets the next slot), `dispatcher` (the
loop), `courier` (one delivery's turn), `verdict` (what an answer means),
`sender` (one HTTP attempt), `probe` (one message posted and answered at once, stored
nowhere: the portal's test webhook), `breaker` (circuits), `ratelimit`,
`deadletters`, `secrets`, `signing`, `ssrf`, `policy`.

Exceptions::

    CallbacksError
    ├── SecretError          a signing secret is not `whsec_<base64>`
    └── UnsafeUrl            a callback URL is malformed or aims at a non-public address
"""

from __future__ import annotations

from callbacks.errors import CallbacksError, SecretError, UnsafeUrl
from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.model import Attempt, Delivery, DeliveryStatus, Message, Outcome, destination
from callbacks.observer import NoObserver, Observer
from callbacks.outbox import Outbox
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.signing import generate_secret, sign
from callbacks.ssrf import DEFAULT_URL_POLICY, UrlPolicy, resolve_and_check

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_URL_POLICY",
    "Attempt",
    "CallbacksError",
    "Delivery",
    "DeliveryStatus",
    "Keys",
    "Message",
    "NoObserver",
    "Observer",
    "Outbox",
    "Outcome",
    "RetryPolicy",
    "SecretError",
    "UnsafeUrl",
    "UrlPolicy",
    "destination",
    "generate_secret",
    "resolve_and_check",
    "sign",
]
