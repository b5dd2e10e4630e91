"""Small helpers several test modules share."""

from __future__ import annotations

import redis
import requests
from requests.adapters import HTTPAdapter

from callbacks.model import Message
from callbacks.outbox import Outbox
from postback import ids

PROBLEM = "application/problem+json"


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {token}"}


def close_connections(session: requests.Session) -> None:
    """Close every connection `session` keeps alive, now, and the session.

    `Session.close` only lets go of its connection pools: a connection stays open for as
    long as something still refers to its pool (a response the test holds does), and an
    API process with a kept-alive connection open waits its graceful timeout to stop.
    """
    for adapter in session.adapters.values():
        if isinstance(adapter, HTTPAdapter):
            pools = adapter.poolmanager.pools
            for key in list(pools.keys()):
                pools[key].close()
    session.close()


def stored_state(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key and its value, but the rate limiter's counters (which every request moves)."""
    return {
        key: client.dump(key) for key in client.scan_iter() if not key.startswith(b"pb:ratelimit")
    }


# The owner of the messages `add_event` creates; the `outbox` fixture gives it a secret.
SECRET_OWNER = "ptn_test"


def add_event(outbox: Outbox, url: str, *, owner: str = SECRET_OWNER, **fields: object) -> str:
    """A new message of `owner` to `url`, due now; its id."""
    message = Message(
        id=ids.new_id("msg"),
        owner=owner,
        type="job.completed",
        body=b'{"type":"job.completed"}',
        subject="job_x",
        **fields,  # type: ignore[arg-type]
    )
    outbox.add(message, url)
    return message.id
