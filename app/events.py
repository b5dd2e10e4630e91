"""`GET /v1/events`: the partner's feed of webhook events, for receivers that pull.

Every `job.completed`, `job.failed` and `job.cancelled` of the partner's
jobs, oldest first, each exactly the webhook that is (or would be) sent:
the same `webhook_id`, `type`, `timestamp` and `data`, so one receiver can
take both channels and de-duplicate on `webhook_id`. A page is
`{"items", "next_cursor"}`; `?wait=N` answers as soon as there is an event.
With `Accept: text/event-stream` the feed streams (`event:` the type, `id:`
the cursor; `Last-Event-ID` resumes).

With `?signed=true` each item also carries `webhook`: the exact body and the
Standard Webhooks headers of a request signed now with the partner's signing
secrets, which `postback listen` forwards as it is, so a receiver verifies
it exactly as a delivered webhook, without the secret leaving the server.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app import sse
from app.auth import partner_required
from app.errors import Malformed
from app.schemas import FeedQuery, load
from app.services import Services, services
from callbacks.signing import headers as signed_headers
from postback import clock
from worker import feed

bp = Blueprint("events", __name__, url_prefix="/v1/events")

# A stream sends at most this many events per wake (the rest on the next turn).
STREAM_BATCH = 100


@bp.get("")
@partner_required
def list_events() -> Response:
    """A page of the partner's feed, or the feed as a stream (see the module docstring)."""
    query = load(FeedQuery, request.args.to_dict())
    svc = services()
    if sse.wants_stream():
        return _stream(svc, query)
    events = feed.page(svc.redis, g.partner_id, after=query["after"], limit=query["limit"])
    if not events and query["wait"]:
        events = _wait_for_events(svc, query)
    items = _items(svc, g.partner_id, events, signed=query["signed"])
    next_cursor = events[-1].cursor if events else query["after"]
    return jsonify({"items": items, "next_cursor": next_cursor})


def _wait_for_events(svc: Services, query: dict[str, Any]) -> list[feed.FeedEvent]:
    """The first events after `after` once there are any, or none after `wait` seconds."""
    partner_id = g.partner_id
    return svc.waits.until(
        partner_id,
        feed.channel(partner_id),
        query["wait"],
        request.environ,
        look=lambda: feed.page(svc.redis, partner_id, after=query["after"], limit=query["limit"]),
        done=bool,
    )


def _items(
    svc: Services, partner_id: str, events: list[feed.FeedEvent], *, signed: bool
) -> list[dict[str, Any]]:
    """The events as the feed shows them; signed now, each with its `webhook`, if asked."""
    items = [event.item() for event in events]
    if signed and events:
        secrets = svc.partners.secrets.signing_secrets(partner_id)
        timestamp = int(clock.now())
        for item, event in zip(items, events, strict=True):
            item["webhook"] = {
                "body": event.body.decode(),
                "headers": {
                    "content-type": "application/json",
                    **signed_headers(secrets, event.webhook_id, timestamp, event.body),
                },
            }
    return items


def _stream(svc: Services, query: dict[str, Any]) -> Response:
    after = sse.last_event_id() or query["after"]
    if after is not None and not feed.is_cursor(after):
        raise Malformed(
            "Last-Event-ID is not a cursor of this feed",
            errors={"Last-Event-ID": ["must be an id this stream sent, like 1765000000000-0"]},
        )
    partner_id, signed = g.partner_id, query["signed"]
    position = {"after": after}
    pace = sse.Pace()

    def step() -> tuple[list[bytes], bool]:
        # One batch per turn, written before the next is read: a long feed is never held
        # in memory whole, and a client that stops reading stops the reads.
        events = feed.page(svc.redis, partner_id, after=position["after"], limit=STREAM_BATCH)
        if not events:
            return [], False
        items = _items(svc, partner_id, events, signed=signed)
        position["after"] = events[-1].cursor
        if len(events) == STREAM_BATCH:
            pace.at(time.monotonic())  # more may follow at once
        messages = [
            sse.message(event.type, event.cursor, item)
            for event, item in zip(events, items, strict=True)
        ]
        return messages, False

    return sse.stream(
        waits=svc.waits,
        hub=svc.hub,
        partner_id=partner_id,
        channels=(feed.channel(partner_id),),
        step=step,
        pace=pace,
    )
