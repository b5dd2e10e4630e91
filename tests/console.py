"""Driving the console and the portal through Flask's test client, as a browser would."""

from __future__ import annotations

import re

from flask.testing import FlaskClient

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(client: FlaskClient, token: str) -> str:
    """Sign in to the console with `token`; returns the session's CSRF token."""
    form = client.get("/console/sign-in").get_data(as_text=True)
    reply = client.post(
        "/console/sign-in", data={"token": token, "csrf_token": csrf_of(form), "next": "/console"}
    )
    assert reply.status_code == 303, reply.get_data(as_text=True)
    return csrf_of(client.get("/console").get_data(as_text=True))
