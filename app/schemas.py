"""marshmallow schemas for request bodies and query strings."""

from __future__ import annotations

import functools
import re
from datetime import UTC
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from app.errors import ValidationFailed
from app.services import Services, services
from callbacks.deadletters import Filter
from callbacks.errors import UnsafeUrl
from callbacks.ssrf import checked_destination, resolve_and_check
from postback import ids
from worker import feed
from worker import jobs as js


@functools.cache
def _schema(kind: type[Schema]) -> Schema:
    # Building a schema costs more than loading with it; they are reusable.
    return kind()


def load(kind: type[Schema], data: Any) -> dict[str, Any]:
    """`data` validated by the schema `kind`, or a 422 naming every bad field."""
    schema = _schema(kind)
    if not isinstance(data, dict) and not schema.many:
        raise ValidationFailed(
            "the body must be a JSON object", errors={"_schema": ["not an object"]}
        )
    try:
        return schema.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationFailed("the request is not valid", errors=messages) from None


def _callback_url() -> fields.String:
    # Only the shape is checked here; `callbacks.ssrf` judges the URL itself (and
    # understands every host notation, IPv6 literals included).
    return fields.String(
        load_default=None, allow_none=True, validate=validate.Length(min=1, max=2048)
    )


def check_callback_url(url: str, svc: Services | None = None) -> None:
    """422 unless the URL is safe to call: every address it resolves to is public
    (by the rules and the resolver of `svc`, default the current app's)."""
    svc = svc or services()
    try:
        resolve_and_check(url, svc.url_policy, svc.resolver)
    except UnsafeUrl as exc:
        raise ValidationFailed(
            f"callback_url refused: {exc.reason}", errors={"callback_url": [exc.reason]}
        ) from None


class PartnerCreate(Schema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class Page(Schema):
    """`limit` and `cursor` of a listing; a cursor is the last id of the previous page."""

    class Meta:
        unknown = RAISE

    cursor_prefix = ""
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    cursor = fields.String(load_default=None)

    @validates("cursor")
    def valid_cursor(self, value: str | None, **kwargs: Any) -> None:
        if value is not None and not ids.is_id(self.cursor_prefix, value):
            raise ValidationError("not a cursor returned by this API")


class PartnerListQuery(Page):
    cursor_prefix = "ptn"


class JobSubmission(Schema):
    class Meta:
        unknown = RAISE

    type = fields.String(required=True, validate=validate.Length(min=1, max=100))
    input = fields.Dict(keys=fields.String(), load_default=dict)
    callback_url = _callback_url()
    priority = fields.String(load_default="normal", validate=validate.OneOf(js.PRIORITIES))
    timeout_seconds = fields.Integer(
        load_default=None, allow_none=True, validate=validate.Range(min=1), strict=True
    )


_SUBMISSION_FIELDS = frozenset(("type", "input", "callback_url", "priority", "timeout_seconds"))


def load_submission(data: Any) -> dict[str, Any]:
    """`load(JobSubmission, data)`, with the plainly valid body recognised without marshmallow.

    A submission is the one body every partner sends many times a second, and
    marshmallow's load costs a few per cent of accepting it. A body whose every
    field has exactly the type and bounds the schema asks for is taken as the schema
    would load it; anything else, valid or not, goes through the schema, which alone
    words the errors. `tests/test_input.py` checks that both agree on generated bodies.
    """
    loaded = _plain_submission(data)
    return loaded if loaded is not None else load(JobSubmission, data)


def _plain_submission(data: Any) -> dict[str, Any] | None:
    if type(data) is not dict or not data.keys() <= _SUBMISSION_FIELDS:
        return None
    kind = data.get("type")
    job_input = data.get("input", {})
    callback_url = data.get("callback_url")
    priority = data.get("priority", "normal")
    timeout_seconds = data.get("timeout_seconds")
    if type(kind) is not str or not 1 <= len(kind) <= 100:
        return None
    if type(job_input) is not dict or any(type(key) is not str for key in job_input):
        return None
    if callback_url is not None and (
        type(callback_url) is not str or not 1 <= len(callback_url) <= 2048
    ):
        return None
    if type(priority) is not str or priority not in js.PRIORITIES:
        return None
    if timeout_seconds is not None and (type(timeout_seconds) is not int or timeout_seconds < 1):
        return None
    return {
        "type": kind,
        "input": dict(job_input),
        "callback_url": callback_url,
        "priority": priority,
        "timeout_seconds": timeout_seconds,
    }


# The longest a request waits for a job's end (`?wait=`, `Prefer: wait`).
MAX_WAIT_SECONDS = 30


class JobQuery(Schema):
    class Meta:
        unknown = RAISE

    wait = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_SECONDS))


class JobListQuery(Page):
    cursor_prefix = "job"
    status = fields.String(load_default=None, validate=validate.OneOf(js.STATUSES))


def _feed_cursor(text: str) -> None:
    if not feed.is_cursor(text):
        raise ValidationError("must be a cursor from this feed, like 1765000000000-0")


class FeedQuery(Schema):
    """`GET /v1/events`: where to start, how many, how long to wait, and whether to sign."""

    class Meta:
        unknown = RAISE

    after = fields.String(
        load_default=None,
        validate=_feed_cursor,
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=500))
    wait = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_SECONDS))
    signed = fields.Boolean(load_default=False)


class DestinationField(fields.String):
    """A destination, `scheme://host:port`; a full URL is reduced to its destination."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        try:
            return checked_destination(text)
        except UnsafeUrl as exc:
            raise ValidationError(
                f"must be an http(s) URL or scheme://host:port: {exc.reason}"
            ) from None


class DeadLetterFilter(Schema):
    class Meta:
        unknown = RAISE

    partner_id = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    destination = DestinationField(load_default=None, validate=validate.Length(max=2048))
    since = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    until = fields.AwareDateTime(load_default=None, default_timezone=UTC)

    @staticmethod
    def to_filter(data: dict[str, Any]) -> Filter:
        return Filter(
            owner=data["partner_id"],
            destination=data["destination"],
            since=data["since"].timestamp() if data["since"] else None,
            until=data["until"].timestamp() if data["until"] else None,
        )


class DeadLetterQuery(DeadLetterFilter, Page):
    class Meta:
        unknown = RAISE

    cursor_prefix = "dlq"


class ReplayBody(Schema):
    class Meta:
        unknown = RAISE

    callback_url = _callback_url()


class CircuitReset(Schema):
    class Meta:
        unknown = RAISE

    destination = DestinationField(required=True, validate=validate.Length(max=2048))
    # Without it, every partner's circuit to the destination is reset.
    partner_id = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


# A circuit's id, as a listing returns it: its destination, a space, its partner's id.
_CIRCUIT_ID = re.compile(r"https?://[^\s]{1,2048}:[0-9]{1,5} [A-Za-z0-9_]{1,100}")


class CircuitQuery(Page):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    destination = DestinationField(load_default=None, validate=validate.Length(max=2048))

    @validates("cursor")
    def valid_cursor(self, value: str | None, **kwargs: Any) -> None:
        if value is not None and not _CIRCUIT_ID.fullmatch(value):
            raise ValidationError("not a cursor returned by this API")
