"""The admin console (`/console`) and the partner portal (`/portal`).

Server-rendered pages over the same services and validation as the API: a view
loads its form through the API's marshmallow schemas and calls what the API's
view calls, so there is no second way to change anything. `web` holds what all
pages share (sessions, CSRF, security headers, error pages).
"""

from __future__ import annotations

from flask import Flask


def register(app: Flask) -> None:
    """Add the console's and the portal's pages to `app`."""
    from app.console import (
        circuits,
        dead_letters,
        jobs,
        overview,
        partners,
        portal,
        portal_tools,
        signin,
        web,
    )

    for module in (
        signin,
        overview,
        jobs,
        dead_letters,
        circuits,
        partners,
        portal,
        portal_tools,
    ):
        app.register_blueprint(module.bp)
    web.claim_unmatched(app, {"/console": "console/error.html", "/portal": "portal/error.html"})
