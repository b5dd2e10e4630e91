"""Authentication, tenant isolation, limits, idempotency keys and outages, through the API."""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, replace

import pytest

from app import create_app
from postback.embedded import EmbeddedRedis, free_port
from tests.helpers import PROBLEM, bearer, stored_state
from worker.jobs import QUEUE_NAME


def app_with(settings, redis_client, **changes):
    return create_app(asdict(replace(settings, **changes)), client=redis_client)


def app_on_own_redis(settings, path):
    """A Redis server of the test's own, started under `path`, and the API on it."""
    from postback.connection import connect

    server = EmbeddedRedis(path, port=free_port())
    url = server.start().url
    app = create_app(
        asdict(replace(settings, redis_url=url)),
        client=connect(url, timeout_seconds=settings.redis_timeout_seconds),
    )
    return server, app


# -- partners and keys -----------------------------------------------------------


def test_a_rotated_key_replaces_the_old_one_at_once(client, partner, admin_headers):
    """After rotate-key the new key works and the old one is 401."""
    reply = client.post(f"/v1/admin/partners/{partner['id']}/rotate-key", headers=admin_headers)
    assert reply.status_code == 200
    new_key = reply.json["api_key"]
    assert new_key != partner["api_key"]
    assert client.get("/v1/jobs", headers=bearer(new_key)).status_code == 200
    old = client.get("/v1/jobs", headers=partner["headers"])
    assert old.status_code == 401 and old.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_deleted_partner_is_locked_out_at_once(client, partner, admin_headers):
    """DELETE disables the partner: 204, then its key is 401 and changes are 409."""
    url = f"/v1/admin/partners/{partner['id']}"
    assert client.delete(url, headers=admin_headers).status_code == 204
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 401
    assert client.post(url + "/rotate-key", headers=admin_headers).status_code == 409
    assert client.delete("/v1/admin/partners/ptn_nobody", headers=admin_headers).status_code == 404


def test_partners_are_listed_without_secrets(client, partner, admin_headers):
    """GET /v1/admin/partners shows id, name, created_at, disabled, and no key or secret."""
    reply = client.get("/v1/admin/partners", headers=admin_headers)
    assert reply.status_code == 200
    (item,) = reply.json["items"]
    assert set(item) == {"id", "name", "created_at", "disabled"}
    assert partner["api_key"] not in reply.text and partner["signing_secret"] not in reply.text


def test_listing_partners_pages(client, admin_headers):
    """Partners page with limit and next_cursor, oldest first, each once."""
    made = [
        client.post("/v1/admin/partners", json={"name": f"p{n}"}, headers=admin_headers).json["id"]
        for n in range(5)
    ]
    seen, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/admin/partners", query_string=query, headers=admin_headers).json
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == made


def test_secrets_appear_in_no_log_line(client, admin_headers, caplog, work, receiver):
    """Keys, secrets and the admin token never reach the logs, even on errors."""
    caplog.set_level(logging.DEBUG)
    created = client.post("/v1/admin/partners", json={"name": "Logged"}, headers=admin_headers)
    partner = created.json
    headers = bearer(partner["api_key"])
    client.post(
        "/v1/jobs", json={"type": "test.fail", "callback_url": receiver.url}, headers=headers
    )
    client.post("/v1/jobs", data="{oops", content_type="application/json", headers=headers)
    client.get("/v1/jobs", headers=bearer(partner["api_key"] + "x"))
    work()
    text = caplog.text
    for secret in (partner["api_key"], partner["signing_secret"], admin_headers["Authorization"]):
        assert secret not in text


# -- limits ----------------------------------------------------------------------------


def test_a_body_over_the_limit_is_413_and_changes_nothing(settings, redis_client, partner):
    """A body larger than POSTBACK_MAX_BODY_BYTES is refused with 413 problem+json."""
    app = app_with(settings, redis_client, max_body_bytes=1024)
    before = stored_state(redis_client)
    reply = app.test_client().post(
        "/v1/jobs",
        json={"type": "echo", "input": {"blob": "x" * 5000}},
        headers=partner["headers"],
    )
    assert reply.status_code == 413 and reply.mimetype == PROBLEM
    assert stored_state(redis_client) == before


def test_the_rate_limit_answers_429_with_headers(settings, redis_client, partner):
    """Past POSTBACK_RATE_LIMIT a partner gets 429 with Retry-After and RateLimit-* headers."""
    client = app_with(settings, redis_client, rate_limit="3/minute").test_client()
    replies = [client.get("/v1/jobs", headers=partner["headers"]) for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert [r.headers["RateLimit-Remaining"] for r in replies[:3]] == ["2", "1", "0"]
    limited = replies[3]
    assert limited.mimetype == PROBLEM
    assert limited.headers["RateLimit-Limit"] == "3"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert int(limited.headers["RateLimit-Reset"]) >= 1


def _submit(client, headers, **extra):
    return client.post("/v1/jobs", json={"type": "echo"}, headers={**headers, **extra})


def test_submissions_from_a_known_key_are_counted_by_the_write_itself(
    settings, redis_client, partner
):
    """A key the API has seen is counted in the create script: one round trip, same limit."""
    client = app_with(settings, redis_client, rate_limit="4/minute").test_client()
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 200
    scripts_before = _calls(redis_client, "evalsha")
    replies = [_submit(client, partner["headers"]) for _ in range(4)]
    assert [r.status_code for r in replies] == [202, 202, 202, 429]
    assert [r.headers["RateLimit-Remaining"] for r in replies] == ["2", "1", "0", "0"]
    assert 1 <= int(replies[3].headers["Retry-After"]) <= 60
    # One script call for each accepted job (its creation, with the count), one for the refusal.
    assert _calls(redis_client, "evalsha") - scripts_before == 4
    listed = client.get("/v1/jobs", headers=partner["headers"])
    assert listed.status_code == 429  # the listing is counted too, and over the limit


def test_a_known_keys_invalid_submissions_are_counted_and_limited(settings, redis_client, partner):
    """Requests that never reach the write are counted before they are answered."""
    client = app_with(settings, redis_client, rate_limit="2/minute").test_client()
    assert client.get("/v1/jobs", headers=partner["headers"]).status_code == 200
    bad = client.post("/v1/jobs", json={"type": "nope"}, headers=partner["headers"])
    assert bad.status_code == 422 and bad.headers["RateLimit-Remaining"] == "0"
    again = client.post("/v1/jobs", json={"type": "nope"}, headers=partner["headers"])
    assert again.status_code == 429


def test_a_key_revoked_after_the_api_saw_it_cannot_submit_or_replay(
    client, redis_client, partner, admin_headers
):
    """The create script looks the key up again: a rotated-out key is 401 and writes nothing."""
    idem = {"Idempotency-Key": "order-1"}
    assert _submit(client, partner["headers"], **idem).status_code == 202
    assert _submit(client, partner["headers"]).status_code == 202
    rotated = client.post(f"/v1/admin/partners/{partner['id']}/rotate-key", headers=admin_headers)
    assert rotated.status_code == 200
    before = stored_state(redis_client)
    refused = _submit(client, partner["headers"])
    assert refused.status_code == 401 and refused.mimetype == PROBLEM
    replay = _submit(client, partner["headers"], **idem)
    assert replay.status_code == 401
    invalid = client.post("/v1/jobs", json={"type": "nope"}, headers=partner["headers"])
    assert invalid.status_code == 401
    assert stored_state(redis_client) == before
    assert _submit(client, bearer(rotated.json["api_key"])).status_code == 202


def _calls(redis_client, command: str) -> int:
    stats = redis_client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_the_rate_limit_is_per_partner(settings, redis_client, partner, admin_headers):
    """One partner at its limit does not limit another."""
    client = app_with(settings, redis_client, rate_limit="2/minute").test_client()
    other = client.post("/v1/admin/partners", json={"name": "B"}, headers=admin_headers).json
    for _ in range(3):
        client.get("/v1/jobs", headers=partner["headers"])
    assert client.get("/v1/jobs", headers=bearer(other["api_key"])).status_code == 200


def test_a_full_backlog_answers_503_with_retry_after(settings, redis_client, partner):
    """With POSTBACK_MAX_BACKLOG jobs waiting, a submission is 503 and creates nothing."""
    client = app_with(settings, redis_client, max_backlog=2).test_client()
    for _ in range(2):
        assert (
            client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"]).status_code
            == 202
        )
    before = stored_state(redis_client)
    reply = client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"])
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert int(reply.headers["Retry-After"]) > 0
    assert stored_state(redis_client) == before


def test_redis_down_is_503_everywhere_and_recovers(settings, tmp_path, admin_headers):
    """With Redis gone every endpoint answers 503 problem+json; when it returns, all works."""
    server, app = app_on_own_redis(settings, tmp_path / "outage")
    client = app.test_client()
    try:
        partner = client.post("/v1/admin/partners", json={"name": "A"}, headers=admin_headers).json
        headers = bearer(partner["api_key"])
        server.stop()
        calls = [
            client.get("/v1/jobs", headers=headers),
            client.post("/v1/jobs", json={"type": "echo"}, headers=headers),
            client.post("/v1/admin/partners", json={"name": "B"}, headers=admin_headers),
            client.get("/readyz"),
        ]
        assert [c.status_code for c in calls] == [503] * 4
        assert all(c.mimetype == PROBLEM for c in calls)
        server.start()
        assert client.post("/v1/jobs", json={"type": "echo"}, headers=headers).status_code == 202
    finally:
        server.stop()


# -- idempotency --------------------------------------------------------------------


def post_with_key(client, partner, key, body):
    return client.post(
        "/v1/jobs", json=body, headers={**partner["headers"], "Idempotency-Key": key}
    )


@pytest.mark.parametrize("key", ['"order-42"', "order-42"])
def test_the_same_key_and_body_return_the_original_response(client, partner, redis_client, key):
    """A repeat gives the first response again, the same job, and queues nothing more."""
    body = {"type": "echo", "input": {"a": 1}}
    first = post_with_key(client, partner, key, body)
    second = post_with_key(client, partner, key, {"input": {"a": 1}, "type": "echo"})
    assert first.status_code == second.status_code == 202
    assert first.json == second.json
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert redis_client.llen(f"rq:queue:{QUEUE_NAME}") == 1


def test_the_quoted_and_bare_forms_are_the_same_key(client, partner):
    """`"abc"` and `abc` name one key."""
    body = {"type": "echo"}
    assert (
        post_with_key(client, partner, '"abc"', body).json
        == post_with_key(client, partner, "abc", body).json
    )


def test_the_same_key_with_another_body_is_422(client, partner):
    """Reusing a key with a different body is refused and creates nothing."""
    post_with_key(client, partner, "k1", {"type": "echo", "input": {"a": 1}})
    reply = post_with_key(client, partner, "k1", {"type": "echo", "input": {"a": 2}})
    assert reply.status_code == 422 and "Idempotency-Key" in reply.json["errors"]


@pytest.mark.parametrize("key", ['"unterminated', "has space", '"' + "x" * 256 + '"', '""'])
def test_malformed_keys_are_400(client, partner, key):
    """A key that is neither a quoted string nor a token, or too long, is a 400."""
    reply = post_with_key(client, partner, key, {"type": "echo"})
    assert reply.status_code == 400 and reply.mimetype == PROBLEM


def test_keys_are_scoped_per_partner(client, partner, admin_headers):
    """Two partners using the same key get two different jobs."""
    other = client.post("/v1/admin/partners", json={"name": "B"}, headers=admin_headers).json
    other = {"headers": bearer(other["api_key"])}
    one = post_with_key(client, partner, "shared", {"type": "echo"})
    two = post_with_key(client, other, "shared", {"type": "echo"})
    assert one.json["id"] != two.json["id"]


def test_concurrent_identical_requests_make_one_job(app, partner, redis_client):
    """Twelve simultaneous identical submissions: one job, and a 202 for it to each (the
    ones its script did not make replay it)."""
    barrier = threading.Barrier(12)
    replies = []

    def send():
        with app.test_client() as own:
            barrier.wait()
            replies.append(post_with_key(own, partner, "race", {"type": "echo"}))

    threads = [threading.Thread(target=send) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert [r.status_code for r in replies] == [202] * 12
    assert len({r.json["id"] for r in replies}) == 1
    assert redis_client.llen(f"rq:queue:{QUEUE_NAME}") == 1


def test_a_failed_submission_does_not_burn_its_key(settings, redis_client, partner):
    """A key whose request hit the backlog limit can be used again once it drains."""
    client = app_with(settings, redis_client, max_backlog=0).test_client()
    assert post_with_key(client, partner, "later", {"type": "echo"}).status_code == 503
    client = app_with(settings, redis_client).test_client()
    assert post_with_key(client, partner, "later", {"type": "echo"}).status_code == 202


def test_a_submission_cut_off_by_redis_leaves_its_key_free(settings, tmp_path, admin_headers):
    """A submission whose Redis stops before its job is made (a 503) leaves nothing under
    its key, on disk either: once Redis is back (or another primary took over), a retry
    with the key makes the job, not a 409."""
    server, app = app_on_own_redis(settings, tmp_path / "cut-off")
    client = app.test_client()
    store = app.extensions["postback"].jobs
    real_create = store.create

    def stop_first(**job: object) -> object:
        store.create = real_create
        server.stop()
        return real_create(**job)

    try:
        partner = client.post("/v1/admin/partners", json={"name": "A"}, headers=admin_headers).json
        partner = {"headers": bearer(partner["api_key"])}
        store.create = stop_first
        assert post_with_key(client, partner, "order-9", {"type": "echo"}).status_code == 503
        server.start()
        again = post_with_key(client, partner, "order-9", {"type": "echo"})
        assert again.status_code == 202, again.json
        assert "Idempotent-Replayed" not in again.headers
    finally:
        server.stop()


# -- callback URLs through the API -----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("http://127.0.0.1/hook", "loopback"),
        ("http://2130706433/hook", "loopback"),
        ("http://0x7f.1/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://10.0.0.5/hook", "private"),
        ("http://100.64.0.1/hook", "carrier-grade"),
        ("https://user:pw@hooks.example.com/", "userinfo"),
        ("http://name.invalid/hook", "does not resolve"),
    ],
)
def test_unsafe_callback_urls_are_refused_at_submission(
    settings, redis_client, partner, url, category
):
    """Without an allow-list, internal callback URLs are a 422 naming why, and nothing is stored."""
    client = app_with(settings, redis_client, callback_allow_cidrs=()).test_client()
    before = stored_state(redis_client)
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "callback_url": url}, headers=partner["headers"]
    )
    assert reply.status_code == 422 and reply.mimetype == PROBLEM
    assert category.lower() in " ".join(reply.json["errors"]["callback_url"]).lower()
    assert stored_state(redis_client) == before


def test_a_name_resolving_to_a_private_address_is_refused(settings, redis_client, partner):
    """A host name is judged by every address it resolves to."""
    app = create_app(
        asdict(replace(settings, callback_allow_cidrs=())),
        client=redis_client,
        resolver=lambda host, port: ["93.184.216.34", "192.168.1.10"],
    )
    reply = app.test_client().post(
        "/v1/jobs",
        json={"type": "echo", "callback_url": "https://hooks.example.com/in"},
        headers=partner["headers"],
    )
    assert reply.status_code == 422
    (message,) = reply.json["errors"]["callback_url"]
    assert message == "the host resolves to a private address, which is not allowed"
    assert "192.168.1.10" not in reply.text


def test_https_can_be_required(settings, redis_client, partner):
    """With POSTBACK_CALLBACK_REQUIRE_HTTPS an http callback is refused."""
    client = app_with(settings, redis_client, callback_require_https=True).test_client()
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "callback_url": "http://127.0.0.1/x"},
        headers=partner["headers"],
    )
    assert reply.status_code == 422 and "https" in reply.json["errors"]["callback_url"][0]


def test_a_replay_to_an_unsafe_url_is_refused(settings, redis_client, admin_headers):
    """The admin's corrected callback URL obeys the same SSRF rules (422)."""
    client = app_with(settings, redis_client, callback_allow_cidrs=()).test_client()
    reply = client.post(
        "/v1/admin/dead-letters/dlq_01ARZ3NDEKTSV4RRFFQ69G5FAV/replay",
        json={"callback_url": "http://169.254.169.254/"},
        headers=admin_headers,
    )
    assert reply.status_code == 422 and "callback_url" in reply.json["errors"]


def test_the_backlog_counts_every_priority(settings, redis_client, partner):
    """High and low priority jobs count toward POSTBACK_MAX_BACKLOG too."""
    client = app_with(settings, redis_client, max_backlog=2).test_client()
    for priority in ("high", "low"):
        reply = client.post(
            "/v1/jobs", json={"type": "echo", "priority": priority}, headers=partner["headers"]
        )
        assert reply.status_code == 202
    reply = client.post("/v1/jobs", json={"type": "echo"}, headers=partner["headers"])
    assert reply.status_code == 503


def test_a_retry_after_an_unconfirmed_write_replays_instead_of_duplicating(
    settings, partner, redis_client, monkeypatch
):
    """If the disk cannot confirm a job (503), a retry with its key returns that same job."""
    client = app_with(settings, redis_client, durability="fsync").test_client()
    from worker.jobs import JobStore, NotDurable

    calls = []

    def flaky_check(reply):
        calls.append(reply)
        if len(calls) == 1:
            raise NotDurable("simulated: no fsync confirmation")

    monkeypatch.setattr(JobStore, "_check_durable", staticmethod(flaky_check))
    first = post_with_key(client, partner, "durable-1", {"type": "echo"})
    assert first.status_code == 503 and first.mimetype == PROBLEM
    second = post_with_key(client, partner, "durable-1", {"type": "echo"})
    assert second.status_code == 202 and second.headers["Idempotent-Replayed"] == "true"
    assert redis_client.llen(f"rq:queue:{QUEUE_NAME}") == 1
    # Both answers came from real WAITAOF replies: one with the write, one for the replay.
    assert [local for local, _ in calls] == [1, 1]


def test_rotate_key_racing_disable_never_leaves_a_working_key(app, admin_headers):
    """Forty races of rotate-key against DELETE: each ends disabled, with no key that works."""
    client = app.test_client()
    for trial in range(40):
        made = client.post(
            "/v1/admin/partners", json={"name": f"race{trial}"}, headers=admin_headers
        )
        partner_id, keys = made.json["id"], [made.json["api_key"]]
        barrier = threading.Barrier(2)
        answers: dict[str, object] = {}

        def rotate(partner_id=partner_id, answers=answers, barrier=barrier):
            with app.test_client() as own:
                barrier.wait()
                answers["rotate"] = own.post(
                    f"/v1/admin/partners/{partner_id}/rotate-key", headers=admin_headers
                )

        def disable(partner_id=partner_id, answers=answers, barrier=barrier):
            with app.test_client() as own:
                barrier.wait()
                answers["disable"] = own.delete(
                    f"/v1/admin/partners/{partner_id}", headers=admin_headers
                )

        threads = [threading.Thread(target=rotate), threading.Thread(target=disable)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        rotated, disabled = answers["rotate"], answers["disable"]
        assert disabled.status_code == 204
        assert rotated.status_code in (200, 409)
        if rotated.status_code == 200:
            keys.append(rotated.json["api_key"])
        listed = client.get("/v1/admin/partners?limit=100", headers=admin_headers).json["items"]
        assert [p["disabled"] for p in listed if p["id"] == partner_id] == [True]
        for key in keys:
            assert client.get("/v1/jobs", headers=bearer(key)).status_code in (401, 403), trial


# -- links and the Host header ---------------------------------------------------------


def test_a_host_not_allowed_is_400_and_changes_nothing(client, partner, redis_client):
    """Without POSTBACK_PUBLIC_URL, a submission whose Host is not in POSTBACK_ALLOWED_HOSTS
    is a 400 host-not-allowed problem naming the setting, and stores nothing."""
    before = stored_state(redis_client)
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo"},
        headers={**partner["headers"], "Idempotency-Key": "planted"},
        base_url="http://attacker.example",
    )
    assert reply.status_code == 400 and reply.mimetype == PROBLEM
    assert reply.json["type"].endswith("host-not-allowed")
    assert "POSTBACK_ALLOWED_HOSTS" in reply.json["detail"]
    assert stored_state(redis_client) == before
    allowed = client.post(
        "/v1/jobs", json={"type": "echo"}, headers=partner["headers"], base_url="http://[::1]:8080"
    )
    assert allowed.status_code == 202
    assert allowed.json["status_url"] == f"http://[::1]:8080/v1/jobs/{allowed.json['id']}"


def test_with_a_public_url_the_host_is_not_used(settings, redis_client, partner):
    """With POSTBACK_PUBLIC_URL set, status URL and Location come from it, whatever the Host."""
    client = app_with(settings, redis_client, public_url="https://api.example.com/").test_client()
    reply = client.post(
        "/v1/jobs", json={"type": "echo"}, headers=partner["headers"], base_url="http://evil.test"
    )
    assert reply.status_code == 202
    url = f"https://api.example.com/v1/jobs/{reply.json['id']}"
    assert reply.json["status_url"] == url and reply.headers["Location"] == url


def test_allowed_host_patterns(settings, redis_client, partner):
    """A name matches on any port, `name:port` on that port only, `.domain` the domain and its
    subdomains, `*` anything; the setting is read from POSTBACK_ALLOWED_HOSTS."""
    from app.links import host_allowed
    from postback.settings import Settings

    patterns = Settings.from_env(
        {"POSTBACK_ALLOWED_HOSTS": "api.test:8443, .example.com,[::1]"}
    ).allowed_hosts
    assert patterns == ("api.test:8443", ".example.com", "[::1]")
    for host in ("api.test:8443", "example.com", "hooks.EXAMPLE.com:80", "[::1]", "[::1]:5000"):
        assert host_allowed(host, patterns), host
    for host in ("api.test", "api.test:80", "badexample.com", "evil.test", "x@example.com", ""):
        assert not host_allowed(host, patterns), host
    assert host_allowed("anything.test:1", ("*",))
    client = app_with(settings, redis_client, allowed_hosts=(".example.com",)).test_client()
    submit = {"json": {"type": "echo"}, "headers": partner["headers"]}
    assert client.post("/v1/jobs", base_url="https://a.example.com", **submit).status_code == 202
    assert client.post("/v1/jobs", base_url="http://localhost", **submit).status_code == 400
