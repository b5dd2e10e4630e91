"""Console: dead_letters (being built)."""

from __future__ import annotations

from flask import Blueprint

from app.console import web
from app.console.sessions import Kind

bp = Blueprint("console_dead_letters", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")


@bp.get("/dead-letters")
@web.signed_in(Kind.ADMIN)
def index() -> tuple[str, int]:
    return web.page("console/base.html")
