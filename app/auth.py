"""Bearer authentication: partner API keys and the admin token."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable
from typing import Any

from flask import g, request

from app.errors import Forbidden, Unauthorized
from app.partners_store import hash_api_key
from app.services import services
from postback import logs
from postback.connection import on_behalf_of


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    return token.strip()


def _is_admin(token: str) -> bool:
    admin_token = services().settings.admin_token
    return bool(admin_token) and hmac.compare_digest(token.encode(), admin_token.encode())


def partner_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only a partner's API key passes; `g.partner_id` names the partner."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        # The key's requests take their turn for Redis connections together, from the
        # lookup of the key on: a flood from one key waits behind itself.
        with on_behalf_of(hash_api_key(token)):
            partner_id = services().rate_limiter.authenticate_and_count(token)
            if partner_id is None:
                if _is_admin(token):
                    raise Forbidden(
                        "the admin token does not act as a partner; use a partner API key"
                    )
                raise Unauthorized("the API key is not valid")
            g.partner_id = partner_id
            logs.add(partner_id=partner_id)
            return view(*args, **kwargs)

    return wrapped


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """Only the admin token passes."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        token = _bearer()
        if _is_admin(token):
            with on_behalf_of("admin"):
                return view(*args, **kwargs)
        if services().partners.authenticate(token) is not None:
            raise Forbidden("a partner API key cannot use the admin API")
        raise Unauthorized("the admin token is not valid")

    return wrapped
