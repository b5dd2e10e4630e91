"""Console: overview (being built)."""

from __future__ import annotations

from flask import Blueprint

from app.console import web
from app.console.sessions import Kind

bp = Blueprint("console_overview", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")


@bp.get("")
@web.signed_in(Kind.ADMIN)
def show() -> tuple[str, int]:
    return web.page("console/base.html")
