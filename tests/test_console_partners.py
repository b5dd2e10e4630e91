"""The console's partners page: listing, creating, rotating, disabling, portal links."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest
import redis
from flask.testing import FlaskClient

from callbacks.keys import DEFAULT_KEYS
from callbacks.secrets import SecretStore
from tests.conftest import ADMIN_TOKEN
from tests.console import sign_in

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)")


@pytest.fixture
def csrf(client: FlaskClient) -> str:
    """The client signed in to the console; its CSRF token."""
    return sign_in(client, ADMIN_TOKEN)


def shown(html: str, element_id: str) -> str:
    """The text of the element with id `element_id` (a value shown once)."""
    found = re.search(rf'id="{element_id}">([^<]*)<', html)
    assert found is not None, f"no #{element_id} on the page"
    return found.group(1)


def partners_of(client: FlaskClient, admin_headers: dict[str, str]) -> list[dict[str, Any]]:
    return cast(
        list[dict[str, Any]], client.get("/v1/admin/partners", headers=admin_headers).json["items"]
    )


def redis_holds(client: redis.Redis, text: str) -> list[str]:
    """The keys whose name or any value holds `text`."""
    found = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        values: list[Any] = [key]
        if kind == "string":
            values.append(client.get(key))
        elif kind == "hash":
            values += list(cast(dict[bytes, bytes], client.hgetall(key)).values())
        elif kind == "list":
            values += cast(list[bytes], client.lrange(key, 0, -1))
        elif kind == "set":
            values += list(cast(set[bytes], client.smembers(key)))
        elif kind == "zset":
            values += cast(list[bytes], client.zrange(key, 0, -1))
        if any(text.encode() in value for value in values if isinstance(value, bytes)):
            found.append(key.decode())
    return found


def test_the_page_lists_partners_with_their_state(
    client: FlaskClient, csrf: str, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """Each partner is listed with its id, name, creation time and state, and its actions."""
    client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers)
    other = client.post("/v1/admin/partners", json={"name": "Beta"}, headers=admin_headers).json
    page = client.get("/console/partners")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert html.count("<h1>") == 1
    assert partner["id"] in html and other["id"] in html
    assert "Acme" in html and "Beta" in html
    assert "status-disabled" in html and "status-enabled" in html
    for label in ("Rotate key", "Rotate secret", "Portal link", "Disable"):
        assert f">{label}</button>" in html


def test_the_list_pages_through_partners(
    client: FlaskClient, csrf: str, admin_headers: dict[str, str]
) -> None:
    """The list is paged as the API's (limit, cursor), and a bad query is a 422 page."""
    ids = [
        client.post("/v1/admin/partners", json={"name": f"P{n}"}, headers=admin_headers).json["id"]
        for n in range(3)
    ]
    first = client.get("/console/partners?limit=2").get_data(as_text=True)
    assert ids[0] in first and ids[1] in first and ids[2] not in first
    following = re.search(r'href="([^"]+)" rel="next"', first)
    assert following is not None
    second = client.get(following.group(1).replace("&amp;", "&")).get_data(as_text=True)
    assert ids[2] in second and ids[0] not in second
    refused = client.get("/console/partners?limit=0")
    assert refused.status_code == 422
    assert "limit" in refused.get_data(as_text=True)
    assert client.get("/console/partners?bogus=1").status_code == 422


def test_create_shows_the_key_and_secret_once_and_the_key_works(
    client: FlaskClient, csrf: str, redis_client: redis.Redis
) -> None:
    """Creating a partner shows its API key and signing secret once, each with a Copy
    button; the key works against the API, and neither is kept in a notice or shown again."""
    made = client.post("/console/partners", data={"name": "Gamma", "csrf_token": csrf})
    html = made.get_data(as_text=True)
    assert made.status_code == 201
    api_key, secret = shown(html, "api-key"), shown(html, "signing-secret")
    assert api_key.startswith("pbk_") and secret.startswith("whsec_")
    assert 'data-copy="api-key"' in html and 'data-copy="signing-secret"' in html
    assert 'class="secret"' in html and "not shown again" in html
    jobs = client.get("/v1/jobs", headers={"Authorization": f"Bearer {api_key}"})
    assert jobs.status_code == 200
    listed = client.get("/console/partners").get_data(as_text=True)
    assert "Gamma" in listed and api_key not in listed and secret not in listed
    assert redis_holds(redis_client, api_key) == []
    # The secret is kept where it signs webhooks, and nowhere else.
    partner_id = re.search(r"ptn_[0-9A-Z]{26}", html).group(0)  # type: ignore[union-attr]
    assert redis_holds(redis_client, secret) == [DEFAULT_KEYS.secrets(partner_id)]


@pytest.mark.parametrize(
    ("form", "field"), [({"name": ""}, "name"), ({"name": "x" * 201}, "name"), ({}, "name")]
)
def test_an_invalid_name_is_refused_and_creates_nothing(
    client: FlaskClient, csrf: str, admin_headers: dict[str, str], form: dict[str, str], field: str
) -> None:
    """A name the API's PartnerCreate refuses is a 422 page naming the field; nothing is made."""
    refused = client.post("/console/partners", data={**form, "csrf_token": csrf})
    assert refused.status_code == 422
    assert f"<code>{field}</code>" in refused.get_data(as_text=True)
    assert partners_of(client, admin_headers) == []


def test_create_without_the_csrf_token_is_refused(
    client: FlaskClient, csrf: str, admin_headers: dict[str, str]
) -> None:
    """A create posted without the session's CSRF token is a 403 and makes nothing."""
    assert client.post("/console/partners", data={"name": "Evil"}).status_code == 403
    wrong = client.post("/console/partners", data={"name": "Evil", "csrf_token": "x" * 40})
    assert wrong.status_code == 403
    assert partners_of(client, admin_headers) == []


def test_every_action_without_the_csrf_token_changes_nothing(
    client: FlaskClient, csrf: str, partner: dict[str, Any]
) -> None:
    """Rotating, disabling and making a link without the CSRF token are 403s."""
    for action in ("rotate-key", "rotate-secret", "disable", "portal-link"):
        reply = client.post(f"/console/partners/{partner['id']}/{action}", data={"confirm": "yes"})
        assert reply.status_code == 403, action
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 200


def test_a_partner_name_is_shown_as_text(
    client: FlaskClient, csrf: str, admin_headers: dict[str, str]
) -> None:
    """Names full of markup are escaped on the list, the created page and the action pages."""
    for payload in XSS:
        made = client.post("/console/partners", data={"name": payload, "csrf_token": csrf})
        html = made.get_data(as_text=True)
        assert made.status_code == 201
        assert "<script>alert" not in html and "<img src=x" not in html
        partner_id = re.search(r"ptn_[0-9A-Z]{26}", html).group(0)  # type: ignore[union-attr]
        for action in ("rotate-key", "rotate-secret", "portal-link", "disable"):
            page = client.post(
                f"/console/partners/{partner_id}/{action}", data={"csrf_token": csrf}
            )
            text = page.get_data(as_text=True)
            assert page.status_code == 200, action
            assert "<script>alert" not in text and "<img src=x" not in text, action
    listed = client.get("/console/partners").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in listed
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in listed
    assert "<script>alert" not in listed and "<img src=x" not in listed
    assert 'href="javascript:' not in listed


def test_rotate_key_shows_a_new_key_and_the_old_one_stops(
    client: FlaskClient, csrf: str, partner: dict[str, Any]
) -> None:
    """Rotate key shows the new key once; the old key is a 401 at once, the new one works."""
    page = client.post(f"/console/partners/{partner['id']}/rotate-key", data={"csrf_token": csrf})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    new_key = shown(html, "api-key")
    assert new_key.startswith("pbk_") and new_key != partner["api_key"]
    assert 'data-copy="api-key"' in html
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 401
    fresh = {"Authorization": f"Bearer {new_key}"}
    assert client.get("/v1/jobs", headers=fresh).status_code == 200
    assert new_key not in client.get("/console/partners").get_data(as_text=True)


def test_rotate_secret_shows_the_new_secret_and_the_grace(
    client: FlaskClient, csrf: str, partner: dict[str, Any], redis_client: redis.Redis
) -> None:
    """Rotate secret shows the new secret once and when the previous one stops signing;
    both sign until then."""
    page = client.post(
        f"/console/partners/{partner['id']}/rotate-secret", data={"csrf_token": csrf}
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    secret = shown(html, "signing-secret")
    assert secret.startswith("whsec_") and secret != partner["signing_secret"]
    assert "86400 seconds" in html and "Previous secret stops signing" in html
    assert SecretStore(redis_client).state(partner["id"]).count == 2


def test_disable_asks_first_then_disables(
    client: FlaskClient, csrf: str, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """Disable first answers a confirmation page (nothing changes); confirmed, the partner
    is disabled, its key stops working, and the list says so."""
    asked = client.post(f"/console/partners/{partner['id']}/disable", data={"csrf_token": csrf})
    html = asked.get_data(as_text=True)
    assert asked.status_code == 200
    assert "data-confirm=" in html and 'name="confirm" value="yes"' in html
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 200
    done = client.post(
        f"/console/partners/{partner['id']}/disable", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert done.status_code == 303
    after = client.get(done.headers["Location"]).get_data(as_text=True)
    assert "is disabled" in after and "status-disabled" in after
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 401
    assert partners_of(client, admin_headers)[0]["disabled"] is True


def test_actions_on_a_disabled_or_unknown_partner_answer_as_the_api(
    client: FlaskClient, csrf: str, partner: dict[str, Any], admin_headers: dict[str, str]
) -> None:
    """A disabled partner's key, secret and link are 409 pages; an unknown partner's, 404s."""
    client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers)
    for action in ("rotate-key", "rotate-secret", "portal-link"):
        page = client.post(f"/console/partners/{partner['id']}/{action}", data={"csrf_token": csrf})
        assert page.status_code == 409, action
        assert "disabled" in page.get_data(as_text=True)
    missing = "ptn_" + "0" * 26
    for action in ("rotate-key", "rotate-secret", "portal-link", "disable"):
        page = client.post(
            f"/console/partners/{missing}/{action}", data={"csrf_token": csrf, "confirm": "yes"}
        )
        assert page.status_code == 404, action


def test_portal_link_shows_a_link_that_opens_the_portal(
    client: FlaskClient, csrf: str, partner: dict[str, Any]
) -> None:
    """Portal link shows the URL with a Copy button and its expiry; the URL leads to the
    partner's portal entry."""
    page = client.post(f"/console/partners/{partner['id']}/portal-link", data={"csrf_token": csrf})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    url = shown(html, "portal-link").replace("&amp;", "&")
    assert url.startswith("http://localhost/portal/enter?token=")
    assert 'data-copy="portal-link"' in html and "Expires" in html and " UTC" in html
    entry = client.get(url.removeprefix("http://localhost"))
    assert entry.status_code == 200
    assert "Portal of Acme" in entry.get_data(as_text=True)


def test_the_page_needs_an_admin_session(client: FlaskClient, partner: dict[str, Any]) -> None:
    """Without a session the list leads to the sign-in and an action is a 401."""
    assert client.get("/console/partners").status_code == 303
    assert client.post(f"/console/partners/{partner['id']}/rotate-key").status_code == 401
