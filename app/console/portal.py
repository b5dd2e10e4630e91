"""The partner portal (being built)."""

from __future__ import annotations

from flask import Blueprint

from app.console import web
from app.console.sessions import Kind

bp = Blueprint("portal", __name__, url_prefix="/portal")
web.protect(bp, template="portal/error.html")


@bp.get("/jobs")
@web.signed_in(Kind.PORTAL)
def jobs() -> tuple[str, int]:
    return web.page("portal/base.html")


@bp.post("/sign-out")
@web.signed_in(Kind.PORTAL)
def sign_out() -> tuple[str, int]:
    return web.page("portal/base.html")
