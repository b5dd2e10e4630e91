"""The partner portal: its signed links, entering it, its jobs, signing out; and the API
that makes the links."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import redis
from flask.testing import FlaskClient

from app.portal_links import PortalLinks
from postback import clock
from tests.console import csrf_of
from tests.receiver import Receiver, Reply

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")
MISSING_JOB = "job_" + "0" * 26
SESSION_PREFIX = "pb:console:session:"


def link_of(client: FlaskClient, partner_id: str, admin_headers: dict[str, str]) -> str:
    """A portal link made through the admin API, as a path and query."""
    made = client.post(f"/v1/admin/partners/{partner_id}/portal-link", headers=admin_headers)
    assert made.status_code == 200, made.get_data(as_text=True)
    parts = urlsplit(made.json["url"])
    return f"{parts.path}?{parts.query}"


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def enter(client: FlaskClient, link: str) -> str:
    """Open the portal by `link` as a browser would (the page, then its button); the
    session's CSRF token."""
    page = client.get(link)
    assert page.status_code == 200, page.get_data(as_text=True)
    opened = client.post(
        "/portal/enter",
        data={"token": token_of(link), "csrf_token": csrf_of(page.get_data(as_text=True))},
    )
    assert opened.status_code == 303, opened.get_data(as_text=True)
    assert opened.headers["Location"] == "/portal/jobs"
    return csrf_of(client.get("/portal/jobs").get_data(as_text=True))


def sessions(redis_client: redis.Redis) -> list[bytes]:
    return list(redis_client.scan_iter(SESSION_PREFIX + "*"))


def make_partner(client: FlaskClient, admin_headers: dict[str, str], name: str) -> dict[str, Any]:
    reply = client.post("/v1/admin/partners", json={"name": name}, headers=admin_headers)
    assert reply.status_code == 201
    return {**reply.json, "headers": {"Authorization": f"Bearer {reply.json['api_key']}"}}


def submit(client: FlaskClient, partner: dict[str, Any], **job: Any) -> str:
    reply = client.post("/v1/jobs", json={"type": "echo", **job}, headers=partner["headers"])
    assert reply.status_code == 202, reply.get_data(as_text=True)
    return str(reply.json["id"])


# -- the API -----------------------------------------------------------------------------


def test_the_api_makes_a_link_with_its_expiry(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """POST portal-link answers the URL of the portal's entry and when it expires
    (POSTBACK_PORTAL_LINK_TTL_SECONDS from now)."""
    before = clock.now()
    made = client.post(f"/v1/admin/partners/{partner['id']}/portal-link", headers=admin_headers)
    assert made.status_code == 200
    assert set(made.json) == {"url", "expires_at"}
    assert made.json["url"].startswith("http://localhost/portal/enter?token=")
    expires = datetime.fromisoformat(made.json["expires_at"]).timestamp()
    assert before + 3600 - 1 <= expires <= clock.now() + 3600


def test_the_api_refuses_unknown_and_disabled_partners(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """An unknown partner is a 404 problem, a disabled one a 409 problem."""
    missing = client.post(
        "/v1/admin/partners/ptn_" + "0" * 26 + "/portal-link", headers=admin_headers
    )
    assert missing.status_code == 404
    assert missing.mimetype == "application/problem+json"
    client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers)
    disabled = client.post(f"/v1/admin/partners/{partner['id']}/portal-link", headers=admin_headers)
    assert disabled.status_code == 409
    assert disabled.mimetype == "application/problem+json"


def test_the_api_is_the_admins_only(client: FlaskClient, partner: dict[str, Any]) -> None:
    """A partner's key is a 403, no token a 401."""
    url = f"/v1/admin/partners/{partner['id']}/portal-link"
    assert client.post(url, headers=partner["headers"]).status_code == 403
    assert client.post(url).status_code == 401


# -- entering ------------------------------------------------------------------------------


def test_following_a_link_opens_no_session(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    redis_client: redis.Redis,
) -> None:
    """The link's page names the partner and offers a button, but opens no session."""
    link = link_of(client, partner["id"], admin_headers)
    page = client.get(link)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Portal of Acme" in html and ">Open the portal</button>" in html
    assert f'name="token" value="{token_of(link)}"' in html
    assert "pb_portal" not in page.headers.get("Set-Cookie", "")
    assert sessions(redis_client) == []
    assert client.get("/portal/jobs").status_code == 401


def test_its_button_opens_the_session(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    redis_client: redis.Redis,
) -> None:
    """Posting the link's form opens a portal session (a strict, HttpOnly cookie scoped to
    /portal) and leads to the jobs."""
    link = link_of(client, partner["id"], admin_headers)
    form = client.get(link).get_data(as_text=True)
    opened = client.post(
        "/portal/enter", data={"token": token_of(link), "csrf_token": csrf_of(form)}
    )
    assert opened.status_code == 303
    cookie = opened.headers["Set-Cookie"]
    assert cookie.startswith("pb_portal=") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie and "Path=/portal" in cookie
    assert len(sessions(redis_client)) == 1
    jobs = client.get("/portal/jobs")
    assert jobs.status_code == 200 and "<h1>Jobs</h1>" in jobs.get_data(as_text=True)
    assert client.get("/portal").headers["Location"] == "/portal/jobs"


def test_entering_without_the_forms_token_is_refused(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    redis_client: redis.Redis,
) -> None:
    """Posting a link's token without the page's CSRF token is a 403 and opens nothing."""
    link = link_of(client, partner["id"], admin_headers)
    client.get(link)
    refused = client.post("/portal/enter", data={"token": token_of(link)})
    assert refused.status_code == 403
    assert sessions(redis_client) == []


def test_an_expired_link_is_refused(
    client: FlaskClient, partner: dict[str, Any], redis_client: redis.Redis
) -> None:
    """A link past its expiry is a 410 page, on the link and on its button; nothing opens."""
    token = PortalLinks(redis_client, ttl_seconds=3600).token(
        partner["id"], expires_at=clock.now() - 1
    )
    page = client.get(f"/portal/enter?token={token}")
    assert page.status_code == 410
    assert "This portal link has expired: ask for a new one" in page.get_data(as_text=True)
    form = client.get("/console/sign-in").get_data(as_text=True)  # any pre-session form token
    posted = client.post("/portal/enter", data={"token": token, "csrf_token": csrf_of(form)})
    assert posted.status_code == 410
    assert sessions(redis_client) == []


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        lambda token: "x" + token,
        lambda token: "garbage",
        lambda token: "",
        lambda token: "a" * 5000,
        lambda token: "W10.bad",
    ],
)
def test_a_tampered_link_is_a_404(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    redis_client: redis.Redis,
    tamper: Any,
) -> None:
    """A token not signed here is a 404 page, never a 500, and opens nothing."""
    token = tamper(token_of(link_of(client, partner["id"], admin_headers)))
    page = client.get("/portal/enter", query_string={"token": token})
    assert page.status_code == 404
    form = client.get("/console/sign-in").get_data(as_text=True)
    posted = client.post("/portal/enter", data={"token": token, "csrf_token": csrf_of(form)})
    assert posted.status_code == 404
    assert sessions(redis_client) == []


def test_a_token_signed_with_another_key_is_a_404(
    client: FlaskClient, partner: dict[str, Any], redis_client: redis.Redis
) -> None:
    """A well-formed token signed by another key (another salt) opens nothing."""
    from itsdangerous import URLSafeSerializer

    key = redis_client.get("pb:secret:portal-links") or b"k"
    forged = URLSafeSerializer(key, salt="postback.result-link").dumps(
        [partner["id"], int(clock.now()) + 60]
    )
    assert client.get(f"/portal/enter?token={forged}").status_code == 404


def test_a_disabled_partners_link_opens_nothing(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """A link of a partner disabled since is refused (409)."""
    link = link_of(client, partner["id"], admin_headers)
    client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers)
    assert client.get(link).status_code == 409


def test_a_disabled_partners_session_stops_working(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """Disabling the partner ends what its open portal session can see."""
    enter(client, link_of(client, partner["id"], admin_headers))
    client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers)
    assert client.get("/portal/jobs").status_code == 401


def test_a_partner_name_is_shown_as_text(
    client: FlaskClient, admin_headers: dict[str, str]
) -> None:
    """A name full of markup is escaped on the link's page."""
    for payload in XSS:
        hostile = make_partner(client, admin_headers, payload)
        html = client.get(link_of(client, hostile["id"], admin_headers)).get_data(as_text=True)
        assert "<script>alert" not in html and "<img src=x" not in html
        assert 'href="javascript:' not in html


# -- jobs ------------------------------------------------------------------------------------


def test_the_portal_shows_only_its_partners_jobs(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """Partner A's portal lists A's jobs, newest first; B's job and unknown ids are 404s."""
    other = make_partner(client, admin_headers, "Beta")
    mine = [submit(client, partner, input={"n": n}) for n in range(3)]
    theirs = submit(client, other, input={"n": 9})
    enter(client, link_of(client, partner["id"], admin_headers))
    html = client.get("/portal/jobs").get_data(as_text=True)
    assert theirs not in html
    assert [m for m in re.findall(r"job_[0-9A-Z]{26}", html)][::2] == mine[::-1]
    assert client.get(f"/portal/jobs/{mine[0]}").status_code == 200
    for job_id in (theirs, MISSING_JOB, "garbage"):
        assert client.get(f"/portal/jobs/{job_id}").status_code == 404, job_id


def test_the_list_pages_and_filters_as_the_api(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str], work: Any
) -> None:
    """The list pages by limit and cursor and filters by status; a bad query is a 422 page."""
    done = [submit(client, partner) for _ in range(3)]
    work()
    waiting = submit(client, partner)
    enter(client, link_of(client, partner["id"], admin_headers))
    first = client.get("/portal/jobs?limit=2").get_data(as_text=True)
    assert waiting in first and done[2] in first and done[0] not in first
    following = re.search(r'href="([^"]+)" rel="next"', first)
    assert following is not None
    second = client.get(following.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert done[1] in second and done[0] in second and waiting not in second
    completed = client.get("/portal/jobs?status=completed").get_data(as_text=True)
    assert waiting not in completed and all(job in completed for job in done)
    everything = client.get("/portal/jobs?status=").get_data(as_text=True)
    assert waiting in everything
    for query in ("status=bogus", "limit=0", "cursor=nope", "other=1"):
        assert client.get(f"/portal/jobs?{query}").status_code == 422, query


def test_a_job_shows_its_fields_input_result_and_deliveries(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    work: Any,
) -> None:
    """A job's page shows it as the API does, its input and result, its timeline and each
    attempt at its webhook with status code, duration and error."""
    with Receiver(Reply(410)) as failing:
        job_id = submit(client, partner, input={"hello": "world"}, callback_url=failing.url)
        work()
        failing.wait_for(1, 10)
    enter(client, link_of(client, partner["id"], admin_headers))
    page = client.get(f"/portal/jobs/{job_id}")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count("<h1>") == 1
    assert "status-completed" in html
    assert "&#34;hello&#34;: &#34;world&#34;" in html
    assert f"<code>{failing.url}</code>" in html and f'href="{failing.url}' not in html
    assert "HTTP 410" in html and ">410<" in html and " ms<" in html
    assert "status-dead" in html
    for event in ("accepted", "started", "finished", "delivery_attempt", "dead_lettered"):
        assert f"<td>{event}</td>" in html, event


def test_job_data_is_shown_as_text(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str], work: Any
) -> None:
    """Markup in a job's input and result is escaped on the list and the job's page."""
    job_id = submit(client, partner, input={payload: payload for payload in XSS})
    work()
    enter(client, link_of(client, partner["id"], admin_headers))
    for path in ("/portal/jobs", f"/portal/jobs/{job_id}"):
        html = client.get(path).get_data(as_text=True)
        assert "<script>alert" not in html and "<img src=x" not in html, path
        assert 'href="javascript:' not in html, path
    html = client.get(f"/portal/jobs/{job_id}").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_the_jobs_need_a_portal_session(client: FlaskClient, partner: dict[str, Any]) -> None:
    """Without a portal session the jobs are a 401 page; an admin session is not one."""
    from tests.conftest import ADMIN_TOKEN
    from tests.console import sign_in

    assert client.get("/portal/jobs").status_code == 401
    sign_in(client, ADMIN_TOKEN)
    assert client.get("/portal/jobs").status_code == 401


# -- signing out -----------------------------------------------------------------------------


def test_sign_out_ends_the_session(
    client: FlaskClient,
    partner: dict[str, Any],
    admin_headers: dict[str, str],
    redis_client: redis.Redis,
) -> None:
    """Signing out shows a signed-out page, clears the cookie and ends the session for good."""
    csrf = enter(client, link_of(client, partner["id"], admin_headers))
    cookie = client.get_cookie("pb_portal", path="/portal")
    assert cookie is not None
    out = client.post("/portal/sign-out", data={"csrf_token": csrf})
    assert out.status_code == 200
    assert "<h1>Signed out</h1>" in out.get_data(as_text=True)
    assert "pb_portal=;" in out.headers["Set-Cookie"]
    assert sessions(redis_client) == []
    assert client.get("/portal/jobs").status_code == 401
    client.set_cookie("pb_portal", cookie.value, path="/portal")
    assert client.get("/portal/jobs").status_code == 401


def test_sign_out_without_the_csrf_token_is_refused(
    client: FlaskClient, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """A sign-out posted without the session's CSRF token is a 403; the session goes on."""
    enter(client, link_of(client, partner["id"], admin_headers))
    assert client.post("/portal/sign-out").status_code == 403
    assert client.get("/portal/jobs").status_code == 200
