"""What gunicorn answers by itself, before Flask sees a request, as problem+json.

gunicorn refuses a request it cannot parse with a `text/html` page of its own: a request
line over `limit_request_line` (414), more header fields than `limit_request_fields` or
one over `limit_request_field_size` (431), a malformed request line, header or chunked
framing (400). `ProblemErrors` is a mixin for any gunicorn worker class that answers
those, and any error of its own, with an RFC 9457 problem instead; the API's worker
(`app.serving.ApiWorker`) has it.
"""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any

from gunicorn import util
from gunicorn.http.errors import ParseException
from werkzeug.http import HTTP_STATUS_CODES

from app.errors import INTERNAL, PROBLEM_JSON, PROBLEMS, problem_document, status_slug
from postback.errors import Malformed

# gunicorn's exceptions by class name (so that versions without one still load), the
# status gunicorn gives each; any other ParseException is a 400.
_STATUSES = {
    # A header the application sent: the server's fault, as gunicorn sees it.
    "InvalidResponseHeader": 500,
    "InvalidResponseHeaderName": 500,
    "ConfigurationProblem": 500,
    "LimitRequestLine": 414,
    "LimitRequestHeaders": 431,
    "UnsupportedTransferCoding": 501,
    "ExpectationFailed": 417,
    "ForbiddenProxyRequest": 403,
}
MAX_DETAIL_CHARS = 200


def classify(exc: BaseException) -> int:
    """The status gunicorn answers `exc` with."""
    for kind in type(exc).__mro__:
        if kind.__name__ in _STATUSES:
            return _STATUSES[kind.__name__]
    if isinstance(exc, ParseException):
        return 400
    if isinstance(exc, ssl.SSLError):
        return 403
    return 500


def problem_response(status: int, exc: BaseException, path: str | None) -> bytes:
    """The whole HTTP/1.1 answer: status line, headers, problem+json body."""
    if status == 400:
        malformed = PROBLEMS[Malformed]
        title, slug, detail = malformed.title, malformed.slug, str(exc)
    elif status >= 500 and status != 501:
        title, slug, detail = INTERNAL.title, INTERNAL.slug, INTERNAL.detail or ""
    else:
        title = HTTP_STATUS_CODES.get(status, "Error")
        slug, detail = status_slug(title), str(exc)
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[:MAX_DETAIL_CHARS] + "…"
    body = json.dumps(problem_document(status, title, detail, slug=slug, instance=path)).encode()
    reason = HTTP_STATUS_CODES.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class ProblemErrors:
    """Mixin for a gunicorn worker class: `handle_error` answers with problem+json.

    Put it first among the bases: `class W(ProblemErrors, SomeGunicornWorker)`.
    Logging follows gunicorn's: a warning for a client's error, the traceback for ours.
    """

    log: Any

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        status = classify(exc)
        peer = (addr or ("", -1))[0]
        if status < 500 or status == 501:
            self.log.warning("Invalid request from ip=%s: %s", peer, exc)
        else:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        try:
            util.write_nonblock(client, problem_response(status, exc, getattr(req, "path", None)))
        except Exception:
            self.log.debug("Failed to send error message.")
