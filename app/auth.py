"""Bearer authentication: partner API keys and the admin token."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import g, request

from app.partners_store import hash_api_key
from app.services import services
from postback import logs
from postback.connection import on_behalf_of
from postback.errors import Forbidden, Unauthorized


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


def is_admin(token: str) -> bool:
    """Whether `token` is the configured admin token (never, if none is configured)."""
    admin_token = services().settings.admin_token
    if not admin_token:
        return False
    return hmac.compare_digest(token.encode(), admin_token.encode())


def _authenticate(token: str) -> None:
    """Find and count the partner of `token` (401 or 403 if it is none), acting as it."""
    partner_id = services().rate_limiter.authenticate_and_count(token)
    if partner_id is None:
        if is_admin(token):
            raise Forbidden("the admin token does not act as a partner; use a partner API key")
        raise Unauthorized("the API key is not valid")
    _act_as(partner_id)


def _act_as(partner_id: str) -> None:
    g.partner_id = partner_id
    logs.add(partner_id=partner_id)


def still_valid() -> Callable[[], bool]:
    """For a long answer (a stream): whether the request's partner key still names the
    partner it named, the partner enabled; a rotated key or a disabled partner ends it."""
    token, partner_id, partners = _bearer(), g.partner_id, services().partners
    return lambda: partners.authenticate(token) == partner_id


def partner_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only a partner's API key passes; `g.partner_id` names the partner."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        # The key's requests take their turn for Redis connections together, from the
        # lookup of the key on: a flood from one key waits behind itself.
        with on_behalf_of(hash_api_key(token)):
            _authenticate(token)
            return view(*args, **kwargs)

    return wrapped


def partner_submitting(view: Callable[..., Any]) -> Callable[..., Any]:
    """`partner_required` for a view whose write counts the request itself.

    A key this process knows the partner of is not counted now: the view passes
    `g.pending_rate` to the script that writes (one round trip for both), and that
    script looks the key up again. Whatever keeps the view from that write (an
    invalid body, a refusal, an idempotent replay, which calls `count_now` before it
    answers) counts the request first, so a revoked key or a partner over its limit
    gets its 401 or 429 as through `partner_required`.
    """

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        with on_behalf_of(hash_api_key(token)):
            check = services().rate_limiter.pending(token)
            if check is None:
                _authenticate(token)
                return view(*args, **kwargs)
            _act_as(check.partner_id)
            g.pending_rate, g.api_key = check, token
            try:
                return view(*args, **kwargs)
            except Exception:
                count_now()
                raise

    return wrapped


def count_now() -> None:
    """Count the request now if its write has not (see `partner_submitting`): 401 if
    its key no longer leads to the partner, 429 if the partner is over its limit."""
    if getattr(g, "pending_rate", None) is None:
        return
    g.pending_rate = None
    limiter = services().rate_limiter
    if limiter.authenticate_and_count(g.api_key) != g.partner_id:
        limiter.forget(g.api_key)
        raise Unauthorized("the API key is not valid")


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only the admin token passes."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        if is_admin(token):
            with on_behalf_of("admin"):
                return view(*args, **kwargs)
        if services().partners.authenticate(token) is not None:
            raise Forbidden("a partner API key cannot use the admin API")
        raise Unauthorized("the admin token is not valid")

    return wrapped
