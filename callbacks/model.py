"""The nouns of delivery: a message, its delivery to one URL, and the attempts of that delivery.

A `Message` is what is signed and sent: id (the `webhook-id`), owner (whose
secrets sign it), type and body, fixed once created. A `Delivery` is one
message on its way to one URL: its state, its attempt counts, its schedule
and, while a dispatcher holds it, its claim. An `Attempt` is one HTTP
exchange of a delivery. Today a message has exactly one delivery, under the
message's own id; fan-out to several endpoints would give it more.

Records are frozen and cross the Redis boundary through `from_hash`/`to_hash`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from postback import clock

_DEFAULT_PORTS = {"http": 80, "https": 443}


class DeliveryStatus(StrEnum):
    """The public `delivery.status`: pending → delivered | retrying → dead."""

    PENDING = "pending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"

    @property
    def settled(self) -> bool:
        return self in (DeliveryStatus.DELIVERED, DeliveryStatus.DEAD)


class Outcome(StrEnum):
    """What one attempt came to, as the attempt log records it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    GONE = "gone"


@functools.lru_cache(maxsize=4096)
def destination(url: str) -> str:
    """`scheme://host:port` of a URL: the unit of connection limits, rate limits and circuits."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    return f"{scheme}://{host}:{port}"


def _text(raw: dict[str, str], name: str) -> str:
    return raw.get(name) or ""


def _time(raw: dict[str, str], name: str) -> float | None:
    value = raw.get(name)
    return float(value) if value else None


def decode_hash(raw: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any]:
    """A hash as Redis returns it (bytes) → str keys and values (a `body` stays as bytes)."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        if name == "body":
            out[name] = value if isinstance(value, bytes) else value.encode()
        else:
            out[name] = value.decode() if isinstance(value, bytes) else value
    return out


@dataclass(frozen=True, kw_only=True)
class Message:
    """One webhook message: its body is fixed; every attempt signs it afresh."""

    id: str
    owner: str
    body: bytes
    type: str = ""
    # What the message is about (for Postback, a job id): observers use it.
    subject: str = ""
    created_at: float = field(default_factory=clock.now)
    # Sent with every attempt besides the signature headers (empty values are left out).
    headers: dict[str, str] = field(default_factory=dict)

    def to_hash(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "type": self.type,
            "subject": self.subject,
            "body": self.body,
            "created_at": repr(self.created_at),
            "headers": json.dumps({k: v for k, v in self.headers.items() if v}),
        }

    @classmethod
    def from_hash(cls, raw: dict[str, Any]) -> Message:
        return cls(
            id=raw["id"],
            owner=raw["owner"],
            body=raw.get("body") or b"",
            type=raw.get("type") or "",
            subject=raw.get("subject") or "",
            created_at=float(raw["created_at"]),
            headers=json.loads(raw["headers"]) if raw.get("headers") else {},
        )


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One message on its way to one URL."""

    id: str
    message: Message
    url: str
    status: DeliveryStatus = DeliveryStatus.PENDING
    # Every attempt ever made, across rounds; the attempt log has exactly this many entries.
    attempts: int = 0
    # Attempts in the current round (a replay or redelivery starts a new round).
    round_attempts: int = 0
    round_started_at: float = 0.0
    last_attempt_at: float | None = None
    next_attempt_at: float | None = None
    last_error: str = ""
    settled_at: float | None = None
    dead_letter_id: str = ""
    dead_at: float | None = None
    # The claim a dispatcher holds on it (a fencing token), "" when nobody does.
    claim: str = ""

    @property
    def owner(self) -> str:
        return self.message.owner

    @property
    def destination(self) -> str:
        return destination(self.url)

    def to_hash(self) -> dict[str, Any]:
        """The delivery's own fields (the message is stored apart)."""
        return {
            "id": self.id,
            "message": self.message.id,
            "owner": self.owner,
            "url": self.url,
            "destination": self.destination,
            "status": str(self.status),
            "attempts": self.attempts,
            "round_attempts": self.round_attempts,
            "round_started_at": repr(self.round_started_at),
            "last_error": self.last_error,
            "claim": self.claim,
        }

    @classmethod
    def from_hashes(cls, raw: dict[str, Any], message: Message) -> Delivery:
        return cls(
            id=raw["id"],
            message=message,
            url=raw["url"],
            status=DeliveryStatus(raw["status"]),
            attempts=int(raw.get("attempts") or 0),
            round_attempts=int(raw.get("round_attempts") or 0),
            round_started_at=float(raw.get("round_started_at") or message.created_at),
            last_attempt_at=_time(raw, "last_attempt_at"),
            next_attempt_at=_time(raw, "next_attempt_at"),
            last_error=_text(raw, "last_error"),
            settled_at=_time(raw, "settled_at"),
            dead_letter_id=_text(raw, "dead_letter_id"),
            dead_at=_time(raw, "dead_at"),
            claim=_text(raw, "claim"),
        )

    def public(self) -> dict[str, Any]:
        """The public `delivery` object."""
        return {
            "status": str(self.status),
            "attempts": self.attempts,
            "last_attempt_at": clock.rfc3339(self.last_attempt_at),
            "next_attempt_at": clock.rfc3339(self.next_attempt_at),
        }


def stored_delivery(raw: dict[str, Any], message: dict[str, Any] | None) -> Delivery | None:
    """The delivery of decoded hashes `raw` and `message`; None if either is gone."""
    if not raw or not message:
        return None
    return Delivery.from_hashes(raw, Message.from_hash(message))


PENDING_DELIVERY = {
    "status": "pending",
    "attempts": 0,
    "last_attempt_at": None,
    "next_attempt_at": None,
}


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """What one HTTP attempt did; `number` runs 1, 2, 3… across a delivery's rounds."""

    number: int
    at: float
    status_code: int | None
    duration_ms: int
    error: str | None
    outcome: Outcome

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.number,
            "at": clock.rfc3339(self.at),
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "outcome": str(self.outcome),
        }
