"""The partner portal's tools (being built)."""

from __future__ import annotations

from flask import Blueprint

from app.console import web
from app.console.sessions import Kind

bp = Blueprint("portal_tools", __name__, url_prefix="/portal")
web.protect(bp, template="portal/error.html")


@bp.get("/dead-letters")
@web.signed_in(Kind.PORTAL)
def dead_letters() -> tuple[str, int]:
    return web.page("portal/base.html")


@bp.get("/test-webhook")
@web.signed_in(Kind.PORTAL)
def test_webhook() -> tuple[str, int]:
    return web.page("portal/base.html")


@bp.get("/signing-secret")
@web.signed_in(Kind.PORTAL)
def signing_secret() -> tuple[str, int]:
    return web.page("portal/base.html")
