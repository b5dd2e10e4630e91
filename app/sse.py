"""Server-sent events: the wire format, and the loop every stream runs.

A stream (`text/event-stream`) holds a place among its partner's waits for
as long as it is open, sleeps on a watch of the subscription hub between
changes, writes a comment every `KEEPALIVE_SECONDS` so that proxies keep
the connection, and ends when its source says so, when the client hangs up
or when the server stops (the client reconnects with `Last-Event-ID`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
from flask import Response, request

from app import hangup
from app.auth import still_valid
from app.hub import Hub, Watch
from app.waits import Place, Waits
from postback.connection import current_tenant, on_behalf_of

log = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
KEEPALIVE_SECONDS = 15.0
# Sent once: how long a client waits before it reconnects.
RETRY_MILLISECONDS = 2000
# A stream's place among its partner's waits is a lease, renewed while it is open.
PLACE_LEASE_SECONDS = 60.0
PLACE_RENEW_SECONDS = 20.0


def message(event: str, id: str, data: Any) -> bytes:
    """One message: `event:`, `id:` and one `data:` line of compact JSON."""
    text = json.dumps(data, separators=(",", ":"))
    return f"event: {event}\nid: {id}\ndata: {text}\n\n".encode()


def comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


def retry() -> bytes:
    return f"retry: {RETRY_MILLISECONDS}\n\n".encode()


def wants_stream() -> bool:
    """Whether the request asks for `text/event-stream` (before JSON)."""
    accepted = request.accept_mimetypes
    return accepted.quality(MEDIA_TYPE) > accepted.quality("application/json")


def last_event_id() -> str | None:
    """The `Last-Event-ID` a reconnecting client sends, if any."""
    value = request.headers.get("Last-Event-ID")
    return value.strip() if value is not None and value.strip() else None


# What a stream's source does on each wake: the messages to send now (if any), and
# whether the stream is over; and when it next wants to be called without a wake.
Step = Callable[[], tuple[list[bytes], bool]]


class Pace:
    """When a source wants to be looked at again without news (progress coalescing)."""

    def __init__(self) -> None:
        self.next_at: float | None = None

    def at(self, moment: float) -> None:
        self.next_at = moment if self.next_at is None else min(self.next_at, moment)


def stream(
    *,
    waits: Waits,
    hub: Hub,
    partner_id: str,
    channels: tuple[str, ...],
    step: Step,
    pace: Pace | None = None,
) -> Response:
    """A `text/event-stream` response fed by `step` on every change of `channels`.

    The partner's place among its waits is taken now (429 before anything is
    sent when it holds them all) and given back when the stream ends.
    """
    places = contextlib.ExitStack()
    place = places.enter_context(waits.hold(partner_id, PLACE_LEASE_SECONDS))
    environ = request.environ
    allowed = still_valid()
    # The body runs after the view has returned: its Redis reads take their turn as the
    # partner's, as the view's did (`postback.connection.on_behalf_of`).
    tenant = current_tenant()

    def body() -> Iterator[bytes]:
        with (
            on_behalf_of(tenant),
            places,
            hub.watch(*channels) as watch,
            hangup.watch(environ, watch) as client,
        ):
            yield from _run(step, watch, client, place, hub, pace or Pace(), allowed)

    response = Response(body(), mimetype=MEDIA_TYPE)
    response.headers["Cache-Control"] = "no-cache"
    # Proxies that buffer answers (nginx) pass this one through as it comes.
    response.headers["X-Accel-Buffering"] = "no"
    response.call_on_close(places.close)
    return response


def _run(
    step: Step,
    watch: Watch,
    client: hangup.Hangup,
    place: Place,
    hub: Hub,
    pace: Pace,
    allowed: Callable[[], bool],
) -> Iterable[bytes]:
    yield retry()
    written = renewed = time.monotonic()
    while True:
        try:
            pace.next_at = None
            messages, over = step()
        except redis.RedisError as exc:
            # The client reconnects with Last-Event-ID once Redis answers again.
            log.warning("an event stream ends on a Redis fault (%s)", exc)
            return
        if messages:
            yield b"".join(messages)
            written = time.monotonic()
        if over or hub.stopping:
            return
        while True:
            now = time.monotonic()
            if now - written >= KEEPALIVE_SECONDS:
                # The key may have been rotated or the partner disabled since the stream began.
                try:
                    if not allowed():
                        return
                except redis.RedisError:
                    return
                yield comment("keep-alive")
                written = now
                # And a look without news: a source removed meanwhile (retention) ends here.
                break
            if now - renewed >= PLACE_RENEW_SECONDS:
                place.renew(PLACE_LEASE_SECONDS)
                renewed = now
            timeout = min(written + KEEPALIVE_SECONDS, renewed + PLACE_RENEW_SECONDS) - now
            if pace.next_at is not None:
                timeout = min(timeout, pace.next_at - now)
            woken = watch.sleep(timeout)
            if hub.stopping or client.gone():
                return
            if woken or (pace.next_at is not None and time.monotonic() >= pace.next_at):
                break
