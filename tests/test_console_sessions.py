"""Signing in to the console: the session cookie, CSRF, sign-out and the security headers."""

from __future__ import annotations

import dataclasses

import redis
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.console.sessions import MAX_SESSIONS_PER_OWNER, Kind, Sessions
from postback.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.console import csrf_of, sign_in


def _cookie_header(reply) -> str:
    return next(v for k, v in reply.headers.items() if k == "Set-Cookie" and "pb_console=" in v)


def test_a_page_without_a_session_leads_to_the_sign_in(client: FlaskClient) -> None:
    """A console page asked for without a session redirects to the sign-in form."""
    reply = client.get("/console/dead-letters")
    assert reply.status_code == 303
    assert reply.headers["Location"].startswith("/console/sign-in?next=")


def test_sign_in_exchanges_the_token_for_a_strict_http_only_cookie(client: FlaskClient) -> None:
    """The admin token posted once becomes a session cookie: HttpOnly, SameSite=Strict."""
    form = client.get("/console/sign-in").get_data(as_text=True)
    assert 'type="password"' in form
    reply = client.post(
        "/console/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form)}
    )
    assert reply.status_code == 303
    cookie = _cookie_header(reply)
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here
    assert ADMIN_TOKEN not in cookie
    assert client.get("/console").status_code == 200


def test_the_cookie_is_secure_behind_https(settings: Settings, redis_client: redis.Redis) -> None:
    """With an https public URL, the session cookie is marked Secure."""
    secure = create_app(
        dataclasses.asdict(
            dataclasses.replace(settings, public_url="https://postback.example.com")
        ),
        client=redis_client,
    ).test_client()
    form = secure.get("/console/sign-in").get_data(as_text=True)
    reply = secure.post(
        "/console/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": csrf_of(form)}
    )
    assert "Secure" in _cookie_header(reply)


def test_a_wrong_token_is_refused_and_opens_nothing(client: FlaskClient) -> None:
    """A wrong admin token answers 401 with the form again, and no session."""
    form = client.get("/console/sign-in").get_data(as_text=True)
    reply = client.post("/console/sign-in", data={"token": "nope", "csrf_token": csrf_of(form)})
    assert reply.status_code == 401
    assert "not the admin token" in reply.get_data(as_text=True)
    assert client.get("/console").status_code == 303


def test_sign_in_without_its_form_token_is_refused(client: FlaskClient) -> None:
    """A sign-in posted without the form's CSRF token is a 403, even with the right token."""
    client.get("/console/sign-in")
    reply = client.post("/console/sign-in", data={"token": ADMIN_TOKEN})
    assert reply.status_code == 403
    assert client.get("/console").status_code == 303


def test_a_state_change_without_the_csrf_token_is_refused(client: FlaskClient) -> None:
    """Signing out without the session's CSRF token is a 403 and the session goes on."""
    sign_in(client, ADMIN_TOKEN)
    assert client.post("/console/sign-out").status_code == 403
    assert client.post("/console/sign-out", data={"csrf_token": "forged"}).status_code == 403
    assert client.get("/console").status_code == 200


def test_a_cross_site_origin_is_refused(client: FlaskClient) -> None:
    """A state change whose Origin is another site is a 403, even with the CSRF token."""
    csrf = sign_in(client, ADMIN_TOKEN)
    reply = client.post(
        "/console/sign-out", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert reply.status_code == 403
    assert client.get("/console").status_code == 200


def test_sign_out_ends_the_session_for_good(client: FlaskClient, app: Flask) -> None:
    """After sign-out the same cookie, sent again, opens nothing."""
    csrf = sign_in(client, ADMIN_TOKEN)
    cookie = client.get_cookie("pb_console", path="/console")
    assert cookie is not None
    reply = client.post("/console/sign-out", data={"csrf_token": csrf})
    assert reply.status_code == 303
    replayed = app.test_client()
    replayed.set_cookie("pb_console", cookie.value, path="/console")
    assert replayed.get("/console").status_code == 303


def test_a_session_expires_after_its_length(settings: Settings, redis_client: redis.Redis) -> None:
    """A session lives `POSTBACK_CONSOLE_SESSION_SECONDS` in Redis, then is gone."""
    store = Sessions(redis_client, ttl_seconds=settings.console_session_seconds)
    token = store.open(Kind.ADMIN, grant="g")
    found = store.find(token)
    assert found is not None
    ttl = redis_client.ttl(f"pb:console:session:{found.token_hash}")
    assert 8 * 3600 - 60 < ttl <= 8 * 3600
    redis_client.delete(f"pb:console:session:{found.token_hash}")
    assert store.find(token) is None


def test_changing_the_admin_token_ends_admin_sessions(
    settings: Settings, redis_client: redis.Redis, client: FlaskClient
) -> None:
    """A session opened with the old admin token opens nothing once the token is changed."""
    sign_in(client, ADMIN_TOKEN)
    cookie = client.get_cookie("pb_console", path="/console")
    assert cookie is not None
    changed = create_app(
        dataclasses.asdict(dataclasses.replace(settings, admin_token="another-token-entirely")),
        client=redis_client,
    ).test_client()
    changed.set_cookie("pb_console", cookie.value, path="/console")
    assert changed.get("/console").status_code == 303


def test_one_owner_holds_a_bounded_number_of_sessions(redis_client: redis.Redis) -> None:
    """Opening more than the bound of sessions for one owner ends the oldest."""
    store = Sessions(redis_client, ttl_seconds=60)
    tokens = [
        store.open(Kind.PORTAL, partner_id="ptn_x") for _ in range(MAX_SESSIONS_PER_OWNER + 3)
    ]
    alive = [t for t in tokens if store.find(t) is not None]
    assert alive == tokens[3:]


def test_pages_carry_a_strict_content_security_policy(client: FlaskClient) -> None:
    """Console pages forbid inline scripts and styles and framing, and are not cached."""
    reply = client.get("/console/sign-in")
    policy = reply.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Referrer-Policy"] == "same-origin"
    html = reply.get_data(as_text=True)
    assert "<script>" not in html and "style=" not in html and "<style" not in html


def test_the_assets_are_served_from_the_package(client: FlaskClient) -> None:
    """The stylesheet and the script come from /console/static, not a CDN."""
    html = client.get("/console/sign-in").get_data(as_text=True)
    assert 'href="/console/static/console.css"' in html
    assert 'src="/console/static/console.js"' in html
    assert "http" not in html.split("<body")[0].replace("http-equiv", "")
    assert client.get("/console/static/console.js").status_code == 200


def test_too_many_failed_sign_ins_are_refused(client: FlaskClient) -> None:
    """Past the bound of failed sign-ins from one address, the form answers 429."""
    form = client.get("/console/sign-in").get_data(as_text=True)
    token = csrf_of(form)
    codes = [
        client.post("/console/sign-in", data={"token": "x", "csrf_token": token}).status_code
        for _ in range(21)
    ]
    assert codes[:20] == [401] * 20 and codes[20] == 429
    reply = client.post("/console/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token})
    assert reply.status_code == 429


def test_an_unknown_page_is_an_error_page_and_the_api_keeps_problem_json(
    client: FlaskClient,
) -> None:
    """A path no console or portal page has answers 404 as a page with the pages' headers; a
    wrong method 405 with Allow; an unknown API path is still problem+json."""
    for path in ("/console/no-such-page", "/portal/no/such/page"):
        reply = client.get(path)
        assert reply.status_code == 404 and reply.mimetype == "text/html", path
        assert "Not Found" in reply.get_data(as_text=True)
        assert "unsafe-inline" not in reply.headers["Content-Security-Policy"]
        assert reply.headers["X-Frame-Options"] == "DENY"
    wrong = client.delete("/console/sign-in")
    assert wrong.status_code == 405 and wrong.mimetype == "text/html"
    assert "POST" in wrong.headers["Allow"]
    api = client.get("/v1/no-such-thing")
    assert api.status_code == 404 and api.mimetype == "application/problem+json"
    assert client.get("/consoles").mimetype == "application/problem+json"
    assert client.delete("/healthz").headers["Allow"]
