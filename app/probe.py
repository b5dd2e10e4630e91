"""A partner's test webhook: one signed message to a URL of theirs, sent now, stored nowhere.

The URL passes the API's `callback_url` validation first (`check_callback_url`:
a 422 and nothing sent if it is refused); the message is signed with every
secret that signs the partner's webhooks now, exactly as a delivery is
(`callbacks.signing.headers`), and posted once by `callbacks.probe.post`, with
the delivery's SSRF policy and resolver and its deadline
(`delivery_timeout_seconds`). While it is in flight the request holds a place
among the partner's waits (`app.waits`), so that one partner cannot tie up the
API's connections with receivers that never answer (429 when it holds them all).
No delivery, attempt or dead letter is recorded.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from marshmallow import RAISE, Schema, fields, validate

from app.schemas import check_callback_url
from app.services import Services
from callbacks import probe, signing
from callbacks.errors import SecretError
from callbacks.model import Message
from callbacks.sender import Response
from postback import WEBHOOK_USER_AGENT, clock, ids
from postback.errors import LimitExceeded

TEST_EVENT_TYPE = "postback.test"


class ProbeForm(Schema):
    """The test webhook's form: where to send it, and the event type it claims."""

    class Meta:
        unknown = RAISE

    # Named as the API names a callback URL, so that its refusal names this field.
    callback_url = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    event_type = fields.String(
        load_default=TEST_EVENT_TYPE,
        validate=validate.Regexp(
            r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}",
            error="letters, digits, dots, dashes and underscores, at most 100",
        ),
    )


@dataclass(frozen=True)
class Sent:
    """A test webhook and what became of it."""

    message: Message
    url: str
    probe: probe.Probe

    @property
    def payload(self) -> Any:
        return json.loads(self.message.body)


def probe_message(partner_id: str, event_type: str = TEST_EVENT_TYPE) -> Message:
    """A test message of the partner's, shaped like every webhook: type, timestamp, data."""
    now = clock.now()
    payload = {
        "type": event_type,
        "timestamp": clock.rfc3339(now),
        "data": {
            "message": "A test webhook from Postback: no job is behind it.",
            "partner_id": partner_id,
        },
    }
    return Message(
        id=ids.new_id("msg"),
        owner=partner_id,
        type=event_type,
        body=json.dumps(payload, separators=(",", ":")).encode(),
        created_at=now,
    )


def send(svc: Services, partner_id: str, url: str, event_type: str = TEST_EVENT_TYPE) -> Sent:
    """Post one signed test message of the partner's to `url` and report the answer.

    ValidationFailed (422) if the API would refuse `url` as a `callback_url` (nothing
    is sent); LimitExceeded (429) if the partner holds all its waits.
    """
    check_callback_url(url, svc)
    message = probe_message(partner_id, event_type)
    try:
        secrets = svc.partners.secrets.signing_secrets(partner_id)
        signed = signing.headers(secrets, message.id, int(clock.now()), message.body)
    except SecretError as exc:
        failed = Response(status_code=None, duration_ms=0, error=f"signing: {exc}")
        return Sent(message, url, probe.Probe(response=failed))
    timeout_seconds = svc.settings.delivery_timeout_seconds
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(svc.waits.hold(partner_id, timeout_seconds))
        except LimitExceeded as exc:
            raise LimitExceeded(
                f"{exc.detail} (a test webhook holds one while it waits for its answer)",
                limit=exc.limit,
                retry_after_seconds=exc.retry_after_seconds,
            ) from None
        answer = probe.post(
            url,
            message.body,
            {**message.headers, **signed},
            timeout_seconds=timeout_seconds,
            user_agent=WEBHOOK_USER_AGENT,
            url_policy=svc.url_policy,
            resolver=svc.resolver,
        )
    return Sent(message, url, answer)
