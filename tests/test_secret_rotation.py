"""Signing secrets as a list, oldest to newest: rotation keeps every grace, expiry ends them."""

from __future__ import annotations

import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from callbacks.keys import DEFAULT_KEYS
from callbacks.secrets import MAX_SECRETS, SecretStore
from callbacks.signing import generate_secret
from postback import clock
from tests.helpers import PROBLEM

GRACE_SECONDS = 86_400.0


def rotate(client, partner, admin_headers):
    reply = client.post(f"/v1/admin/partners/{partner['id']}/rotate-secret", headers=admin_headers)
    assert reply.status_code == 200, reply.json
    return reply.json


def delivered(client, partner, receiver, work):
    """The webhook of one new job, as the receiver got it."""
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "callback_url": receiver.url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202
    before = len(receiver.received)
    work()
    return receiver.wait_for(before + 1)[-1]


def signatures(hit) -> list[str]:
    return hit.headers["webhook-signature"].split(" ")


def test_two_rotations_within_the_grace_sign_with_all_three_secrets(
    client, partner, admin_headers, receiver, work
):
    """A second rotation during the grace keeps the first secret: three signatures, each valid."""
    first = rotate(client, partner, admin_headers)
    second = rotate(client, partner, admin_headers)
    assert second["secrets"] == 3 and len(second["secrets_expire_at"]) == 2
    assert first["previous_secret_expires_at"] == second["secrets_expire_at"][0]
    hit = delivered(client, partner, receiver, work)
    assert len(signatures(hit)) == 3
    for secret in (partner["signing_secret"], first["signing_secret"], second["signing_secret"]):
        Webhook(secret).verify(hit.body, hit.headers)


def test_expire_secrets_leaves_only_the_newest(
    client, partner, admin_headers, receiver, work, redis_client
):
    """expire-secrets ends every grace now: one signature, by the newest secret, answered so."""
    rotate(client, partner, admin_headers)
    newest = rotate(client, partner, admin_headers)["signing_secret"]
    reply = client.post(f"/v1/admin/partners/{partner['id']}/expire-secrets", headers=admin_headers)
    assert reply.status_code == 200
    assert reply.json == {
        "id": partner["id"],
        "expired": 2,
        "secrets": 1,
        "secrets_expire_at": [],
    }
    hit = delivered(client, partner, receiver, work)
    assert len(signatures(hit)) == 1
    Webhook(newest).verify(hit.body, hit.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(partner["signing_secret"]).verify(hit.body, hit.headers)
    again = client.post(f"/v1/admin/partners/{partner['id']}/expire-secrets", headers=admin_headers)
    assert again.json["expired"] == 0 and again.json["secrets"] == 1


def test_a_rotated_out_secret_stops_signing_at_its_own_expiry(
    client, partner, admin_headers, receiver, work, monkeypatch
):
    """Each secret expires at its own rotation plus the grace: past it, it no longer signs,
    while the one rotated out later still does."""
    grace = client.application.extensions["postback"].settings.secret_grace_seconds
    real_now = clock.now()
    # The first rotation just over a grace ago, the second just under.
    monkeypatch.setattr(clock, "now", lambda: real_now - grace - 60)
    first = rotate(client, partner, admin_headers)
    monkeypatch.setattr(clock, "now", lambda: real_now - grace + 60)
    second = rotate(client, partner, admin_headers)
    assert second["secrets"] == 3  # the original had not yet expired at the second rotation
    monkeypatch.undo()
    hit = delivered(client, partner, receiver, work)
    assert len(signatures(hit)) == 2
    for secret in (first["signing_secret"], second["signing_secret"]):
        Webhook(secret).verify(hit.body, hit.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(partner["signing_secret"]).verify(hit.body, hit.headers)


def test_an_expiry_reads_back_as_the_rotation_answered_it(redis_client, monkeypatch):
    """The expiry a rotation answers is the one stored, to the millisecond, whatever the
    fraction of the clock."""
    store = SecretStore(redis_client)
    store.set("ptn_fraction", generate_secret())
    monkeypatch.setattr(clock, "now", lambda: 1_796_000_000.22996)
    _, answered = store.rotate("ptn_fraction", grace_seconds=GRACE_SECONDS)
    stored = store.state("ptn_fraction")
    assert stored.expires_at == answered.expires_at
    assert clock.rfc3339(answered.expires_at[0]) == "2026-12-01T00:53:20.229Z"


@pytest.mark.parametrize("fraction", [0.0004, 0.4996, 0.9996])
def test_without_grace_a_rotation_leaves_one_secret_whatever_the_clock(
    redis_client, monkeypatch, fraction
):
    """With no grace, the secret rotated out stops at once, whatever the clock's fraction
    of a millisecond."""
    store = SecretStore(redis_client)
    store.set("ptn_no_grace", generate_secret())
    monkeypatch.setattr(clock, "now", lambda: 1_796_000_000 + fraction)
    new, state = store.rotate("ptn_no_grace", grace_seconds=0)
    assert state.count == 1 and state.expires_at == ()
    assert store.signing_secrets("ptn_no_grace") == [new]


def test_a_two_slot_record_is_read_and_rotated_as_a_list(redis_client):
    """Secrets written in the earlier current/previous layout still sign, and rotate into a
    list that keeps both."""
    current, previous = generate_secret(), generate_secret()
    key = DEFAULT_KEYS.secrets("ptn_legacy")
    until = clock.now() + 600
    redis_client.hset(
        key, mapping={"current": current, "previous": previous, "previous_until": until}
    )
    store = SecretStore(redis_client)
    assert store.signing_secrets("ptn_legacy") == [previous, current]
    new, state = store.rotate("ptn_legacy", grace_seconds=GRACE_SECONDS)
    assert store.signing_secrets("ptn_legacy") == [previous, current, new]
    assert state.count == 3 and state.expires_at[0] == pytest.approx(until, abs=0.01)
    assert redis_client.hkeys(key) == [b"secrets"]
    expired_slot = DEFAULT_KEYS.secrets("ptn_old")
    redis_client.hset(
        expired_slot, mapping={"current": current, "previous": previous, "previous_until": 1}
    )
    assert store.signing_secrets("ptn_old") == [current]


def test_rotations_past_the_most_secrets_are_409_and_change_nothing(
    client, partner, admin_headers, redis_client
):
    """A rotation that would make more than MAX_SECRETS sign at once is a 409 naming
    expire-secrets; the secrets are as they were."""
    for _ in range(MAX_SECRETS - 1):
        rotate(client, partner, admin_headers)
    key = DEFAULT_KEYS.secrets(partner["id"])
    before = json.loads(redis_client.hget(key, "secrets"))
    assert len(before) == MAX_SECRETS
    reply = client.post(f"/v1/admin/partners/{partner['id']}/rotate-secret", headers=admin_headers)
    assert reply.status_code == 409 and reply.mimetype == PROBLEM
    assert "expire-secrets" in reply.json["detail"]
    assert json.loads(redis_client.hget(key, "secrets")) == before


def test_expire_secrets_of_an_unknown_or_disabled_partner(client, partner, admin_headers):
    """expire-secrets is 404 problem+json for an unknown partner, 409 for a disabled one, and
    admin-only."""
    unknown = client.post("/v1/admin/partners/ptn_nobody/expire-secrets", headers=admin_headers)
    assert unknown.status_code == 404 and unknown.mimetype == PROBLEM
    url = f"/v1/admin/partners/{partner['id']}/expire-secrets"
    assert client.post(url, headers=partner["headers"]).status_code == 403
    assert (
        client.delete(f"/v1/admin/partners/{partner['id']}", headers=admin_headers).status_code
        == 204
    )
    disabled = client.post(url, headers=admin_headers)
    assert disabled.status_code == 409 and disabled.mimetype == PROBLEM
