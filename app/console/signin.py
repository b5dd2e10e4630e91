"""Signing in to the console with the admin token, and signing out.

The token is posted once, from a form with a password field, and exchanged for
a session cookie (`app.console.sessions`); it is never kept or shown. Failed
attempts are counted per client address: past `MAX_FAILURES` in
`FAILURE_WINDOW_SECONDS`, the form refuses with 429 until the window ends.
"""

from __future__ import annotations

from typing import cast

from flask import Blueprint, Response, redirect, request, url_for

from app.auth import is_admin
from app.console import filters, web
from app.console.sessions import Kind
from app.services import services
from postback.errors import LimitExceeded

bp = Blueprint(
    "console",
    __name__,
    url_prefix="/console",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
web.protect(bp, template="console/error.html")
filters.register(bp)

MAX_FAILURES = 20
FAILURE_WINDOW_SECONDS = 300
_FAILURES_PREFIX = "pb:console:sign-in-failures:"


def _next_page() -> str:
    """Where to go after signing in: a console page the request names, else the overview."""
    wanted = request.values.get("next", "")
    if wanted.startswith("/console") and not wanted.startswith("/console/sign-"):
        return wanted
    return url_for("console_overview.show")


@bp.get("/sign-in")
def sign_in() -> tuple[str, int]:
    """The sign-in form."""
    return _form()


def _form(*, status: int = 200, error: str = "") -> tuple[str, int]:
    return web.page(
        "console/sign_in.html",
        status=status,
        form_token=web.pre_session_token(),
        next_page=_next_page(),
        error=error,
        configured=bool(services().settings.admin_token),
        signed_out=request.args.get("signed_out") == "1",
    )


@bp.post("/sign-in")
def sign_in_with_token() -> Response | tuple[str, int]:
    """Exchange the admin token for a session cookie."""
    web.check_pre_session()
    failures_key = _FAILURES_PREFIX + (request.remote_addr or "unknown")
    client = services().redis
    failures = int(cast("bytes | None", client.get(failures_key)) or 0)
    if failures >= MAX_FAILURES:
        raise LimitExceeded(
            "too many failed sign-ins from this address: try again in a few minutes",
            retry_after_seconds=FAILURE_WINDOW_SECONDS,
        )
    if not is_admin(request.form.get("token", "").strip()):
        with client.pipeline() as pipe:
            pipe.incr(failures_key)
            pipe.expire(failures_key, FAILURE_WINDOW_SECONDS)
            pipe.execute()
        return _form(status=401, error="That is not the admin token.")
    token = web.sessions().open(Kind.ADMIN, grant=web.admin_grant())
    response = cast(Response, redirect(_next_page(), 303))
    web.set_session_cookie(response, Kind.ADMIN, token)
    return response


@bp.post("/sign-out")
@web.signed_in(Kind.ADMIN)
def sign_out() -> Response:
    """End the session: its cookie opens nothing any more."""
    web.sessions().end(web.current())
    response = cast(Response, redirect(url_for("console.sign_in", signed_out=1), 303))
    web.clear_session_cookie(response, Kind.ADMIN)
    return response
