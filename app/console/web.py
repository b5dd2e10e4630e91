"""What every console and portal page shares: sessions, CSRF, security headers, errors.

Pages are rendered on the server from Jinja templates (every value escaped by
autoescaping); the only script is `static/console.js`, served from the package.
`protect(bp, kind)` gives a blueprint the headers, the error pages and the
session check; a view reads its session from `current()`.

A state-changing request (anything but GET and HEAD) must carry the session's
CSRF token in the `csrf_token` form field or the `X-CSRF-Token` header, and,
when the browser sends one, an `Origin` of this server; the sign-in forms,
which come before a session, use a token in a cookie (`pb_csrf`) instead.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import redis
from flask import Blueprint, Flask, Response, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from app.allow import allowed_methods
from app.console.sessions import Kind, Session, Sessions, digest, same_token
from app.errors import explain, http_problem
from app.services import services
from postback.connection import on_behalf_of
from postback.errors import RedisFault
from postback.faults import classify

COOKIES = {Kind.ADMIN: ("pb_console", "/console"), Kind.PORTAL: ("pb_portal", "/portal")}
PRE_SESSION_COOKIE = "pb_csrf"
# The fair connection queue's name for the admin (`app.auth.admin_required` uses it too).
ADMIN_TENANT = "admin"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
# What console.js sends when it fetches a page again for one element: that element's id.
REFRESH_HEADER = "X-Console-Refresh"

# Scripts and styles only from this server's files: no inline code, no CDN; no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # A portal link carries its token in the URL: no page may pass it on to another
    # site. (With `no-referrer`, browsers send `Origin: null` even to this server.)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class Refused(Exception):
    """A console request without a valid session or CSRF token; `status` says which. Not
    an error of the domain: only the console's pages raise and answer it."""

    def __init__(self, detail: str, /, *, status: int, title: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title


def sessions() -> Sessions:
    """The session store, with the configured session length."""
    svc = services()
    return Sessions(svc.redis, ttl_seconds=svc.settings.console_session_seconds)


def current() -> Session:
    """The session of the request (a view behind `protect` always has one)."""
    return g.console_session


def portal_partner() -> str:
    """The partner the request's portal session is scoped to."""
    partner_id = current().partner_id
    assert partner_id is not None  # a portal session always names its partner
    return partner_id


def filled(values: Mapping[str, str]) -> dict[str, Any]:
    """The fields of a query or form that carry a value, less the CSRF token: a form sends
    a field left blank as "", which the API means by leaving the field out."""
    return {k: v for k, v in values.items() if v.strip() != "" and k != CSRF_FIELD}


def next_page(endpoint: str, given: Mapping[str, Any], cursor: str | None) -> str | None:
    """The link to the page after this one (`given` is the query as filled), or None."""
    return url_for(endpoint, **{**given, "cursor": cursor}) if cursor is not None else None


def admin_grant() -> str:
    """The digest an admin session must hold: of the admin token configured now."""
    token = services().settings.admin_token
    return digest("admin-token:" + token) if token else ""


def secure_cookies() -> bool:
    """Whether cookies are marked Secure: behind https (the request's, or the public URL's)."""
    public_url = services().settings.public_url or ""
    return request.is_secure or public_url.startswith("https:")


def set_session_cookie(response: Response, kind: Kind, token: str) -> None:
    name, path = COOKIES[kind]
    response.set_cookie(
        name,
        token,
        max_age=int(services().settings.console_session_seconds),
        path=path,
        httponly=True,
        samesite="Strict",
        secure=secure_cookies(),
    )


def clear_session_cookie(response: Response, kind: Kind) -> None:
    name, path = COOKIES[kind]
    response.delete_cookie(
        name, path=path, httponly=True, samesite="Strict", secure=secure_cookies()
    )


def pre_session_token() -> str:
    """The sign-in form's CSRF token: the one in the request's cookie, or a new one
    (`remember_pre_session` puts it in the response)."""
    found = request.cookies.get(PRE_SESSION_COOKIE, "")
    if 20 <= len(found) <= 64:
        return found
    if "pre_session_token" not in g:
        g.pre_session_token = secrets.token_urlsafe(24)
    return g.pre_session_token


def remember_pre_session(response: Response) -> Response:
    if "pre_session_token" in g:
        response.set_cookie(
            PRE_SESSION_COOKIE,
            g.pre_session_token,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=secure_cookies(),
        )
    return response


def check_pre_session() -> None:
    """Refuse a sign-in form posted without the token of its own cookie (403)."""
    check_origin()
    if not same_token(request.form.get(CSRF_FIELD), request.cookies.get(PRE_SESSION_COOKIE, "-")):
        raise _csrf_refused()


def check_origin() -> None:
    """Refuse a state change whose browser says it came from another site (403)."""
    origin = request.headers.get("Origin")
    # "null" is what a privacy-minded context sends; the CSRF token still has to match.
    if origin is None or origin == "null":
        return
    if urlsplit(origin).netloc.lower() != request.host.lower():
        raise Refused(
            "the request came from another site", status=403, title="Cross-site request refused"
        )


def _csrf_refused() -> Refused:
    return Refused(
        "the form's CSRF token is missing or not this session's: reload the page and try again",
        status=403,
        title="CSRF token missing or wrong",
    )


def _session_for(kind: Kind) -> Session | None:
    name, _ = COOKIES[kind]
    found = sessions().find(request.cookies.get(name, ""))
    if found is None or found.kind != kind:
        return None
    if kind is Kind.ADMIN:
        grant = admin_grant()
        if not grant or not same_token(found.grant, grant):
            return None
    elif found.partner_id is None:
        return None
    return found


def _not_signed_in(kind: Kind) -> Refused:
    return Refused(
        "sign in again: this session has ended or never began"
        if kind is Kind.ADMIN
        else "open the portal again from a fresh link: this session has ended",
        status=401,
        title="Not signed in",
    )


def signed_in(kind: Kind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A view that needs a session of `kind` (and, to change anything, its CSRF token).

    Without one, a page asked for by GET leads to the sign-in (the admin's) or says
    the link has to be opened again (the portal's); anything else is a 401.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            found = _session_for(kind)
            if found is None:
                if request.method in ("GET", "HEAD") and kind is Kind.ADMIN:
                    return redirect(url_for("console.sign_in", next=request.full_path), 303)
                raise _not_signed_in(kind)
            if request.method not in ("GET", "HEAD"):
                check_origin()
                given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                if not same_token(given, found.csrf_token):
                    raise _csrf_refused()
            g.console_session = found
            # Its Redis reads take their turn with the admin API's, or with its partner's.
            if kind is Kind.ADMIN:
                with on_behalf_of(ADMIN_TENANT):
                    return view(*args, **kwargs)
            # A portal page is a request of its partner: it takes the partner's turn for
            # Redis connections and counts against the partner's rate limit, as the API
            # does. The count's script also ends the session of a partner disabled since.
            with on_behalf_of(f"portal:{found.owner}"):
                if not services().rate_limiter.count(portal_partner()):
                    raise _not_signed_in(kind)
                return view(*args, **kwargs)

        return wrapped

    return decorate


def page(template: str, *, status: int = 200, **context: Any) -> tuple[str, int]:
    """A page from `template`, with the session's CSRF token and its waiting notice."""
    session = g.get("console_session")
    notice = sessions().take_notice(session) if session is not None else ""
    return (
        render_template(
            template,
            session=session,
            csrf_token=session.csrf_token if session is not None else "",
            notice=notice,
            **context,
        ),
        status,
    )


def done(notice: str, to: str) -> Response:
    """After an action: say what happened on the next page, which is `to` (303)."""
    sessions().notify(current(), notice)
    return redirect(to, 303)  # type: ignore[return-value]


def protect(bp: Blueprint, *, template: str) -> None:
    """Security headers on every answer of `bp`, and errors as pages from `template`
    (`console/error.html` or `portal/error.html`) instead of problem+json."""

    @bp.after_request
    def headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return remember_pre_session(response)

    bp.register_error_handler(Exception, functools.partial(error_page, template))


def error_page(template: str, exc: Exception) -> tuple[str, int, dict[str, str]]:
    """`exc` as a page from `template`, with the status, reason and headers the API's
    problem would have."""
    status, title, detail, errors, headers = _explain(exc)
    body, _ = page(template, status=status, title=title, detail=detail, errors=errors)
    return body, status, headers


def claim_unmatched(app: Flask, templates: Mapping[str, str]) -> None:
    """A path under one of `templates`' prefixes that no page has (404, or 405 for its
    method) answers as an error page from that prefix's template, with the pages' headers,
    not as problem+json; every other path keeps the API's answer."""

    def unmatched(exc: HTTPException) -> Response:
        for prefix, template in templates.items():
            if request.path == prefix or request.path.startswith(prefix + "/"):
                response = app.make_response(error_page(template, exc))
                response.headers.update(SECURITY_HEADERS)
                return response
        return http_problem(exc)

    app.register_error_handler(NotFound, unmatched)
    app.register_error_handler(MethodNotAllowed, unmatched)


def _explain(exc: Exception) -> tuple[int, str, str, Any, dict[str, str]]:
    """Status, title, detail, field errors and headers (when to retry; no bearer challenge,
    which means nothing to a browser) of `exc`, as the API's problem would say them."""
    if isinstance(exc, Refused):
        return exc.status, exc.title, str(exc), None, {}
    if isinstance(exc, HTTPException):
        valid = getattr(exc, "valid_methods", None)
        allow = {"Allow": ", ".join(allowed_methods(valid))} if exc.code == 405 and valid else {}
        return exc.code or 500, exc.name or "Error", exc.description or "", None, allow
    if isinstance(exc, redis.RedisError):
        timeout = services().settings.redis_timeout_seconds
        fault = classify(exc, timeout_seconds=timeout)
        if fault is not None:
            exc = RedisFault(
                fault.detail,
                cause=str(fault.cause),
                retry_after_seconds=fault.retry_after_seconds,
            )
    found, detail = explain(exc)
    headers = {k: v for k, v in found.headers(exc).items() if k != "WWW-Authenticate"}
    return found.status, found.title, detail, found.members(exc).get("errors"), headers
