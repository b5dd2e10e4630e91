"""Request bodies, decoded by the one strict JSON decoder (`app.strictjson`) every endpoint uses."""

from __future__ import annotations

from typing import Any

from flask import request

from app import strictjson
from app.errors import MalformedRequest, UnsupportedMediaType
from app.services import services


def json_body() -> Any:
    """The request's JSON body: 415 unless it is declared JSON, 400 unless it is strict JSON."""
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    raw = request.get_data(cache=True)
    try:
        return strictjson.loads(raw or b"null", max_depth=services().settings.max_json_depth)
    except strictjson.InvalidJson as exc:
        raise MalformedRequest(str(exc)) from None


def optional_json_body() -> Any:
    """Like `json_body`, but an empty body is an empty object."""
    if not request.content_length and not request.get_data(cache=True):
        return {}
    return json_body()
