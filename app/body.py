"""Request bodies: read within `POSTBACK_MAX_BODY_BYTES` however they are framed, then
decoded by the one strict JSON decoder (`app.strictjson`) every endpoint uses."""

from __future__ import annotations

from typing import Any

from flask import g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app import strictjson
from app.errors import BodyTimeout, UnsupportedMediaType
from app.services import services
from postback.errors import Malformed


def raw_body() -> bytes:
    """The body's bytes; 413 past `POSTBACK_MAX_BODY_BYTES`, with or without Content-Length.

    A declared Content-Length over the limit is refused before anything is read; one
    within it is read from the server's input as it is, and a body that ends before
    its length is a 400. A chunked body has no length to check: werkzeug stops
    reading it at the limit and says nothing, so it is allowed one byte more, and a
    body that has it is too large rather than cut short. Read once per request.
    """
    cached = g.get("raw_body")
    if cached is not None:
        return cached
    limit = services().settings.max_body_bytes
    length = request.content_length
    try:
        if length is None:
            request.max_content_length = limit + 1
            raw = request.get_data()
        elif length > limit:
            raise RequestEntityTooLarge()
        else:
            # A declared length is read as it is, without werkzeug's stream around it.
            raw = request.environ["wsgi.input"].read(length) if length else b""
            if len(raw) < length:
                raise Malformed(
                    f"the body ended after {len(raw)} of its {length} bytes (Content-Length)"
                )
    except (HTTPException, Malformed, BodyTimeout):
        raise
    except Exception as exc:
        # The server could not decode the body's framing (a malformed chunk).
        raise Malformed(f"the body could not be read: {exc}") from None
    if len(raw) > limit:
        raise RequestEntityTooLarge()
    g.raw_body = raw
    return raw


def json_body() -> Any:
    """The request's JSON body: 415 unless it is declared JSON, 400 unless it is strict JSON."""
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType("send the body as application/json")
    # InvalidJson is a Malformed: a 400 that says what is wrong.
    return strictjson.loads(raw_body() or b"null", max_depth=services().settings.max_json_depth)


def optional_json_body() -> Any:
    """Like `json_body`, but an empty body is an empty object."""
    if not request.content_length and not raw_body():
        return {}
    return json_body()
