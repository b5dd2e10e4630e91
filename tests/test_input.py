"""Input bounds: every accepted body is strict JSON of bounded shape, and every stored record
reads back; what the HTTP server refuses on its own is problem+json too."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook

from app import create_app
from app.cli import main
from postback.embedded import free_port
from postback.settings import MAX_JSON_DEPTH_CEILING, Settings, SettingsError
from tests.helpers import PROBLEM, bearer, stored_state
from tests.processes import POSTBACK, cli_env, eventually, stop_process
from tests.receiver import Reply

MAX_DEPTH = 64
MAX_BODY_BYTES = 1_048_576


def nested(levels: int, leaf: Any = None) -> Any:
    """`leaf` inside `levels` nested arrays."""
    value = leaf
    for _ in range(levels):
        value = [value]
    return value


def post_raw(client, path: str, raw: str | bytes, headers: dict[str, str]):
    return client.post(path, data=raw, content_type="application/json", headers=headers)


def submission(input_json: str, **extra: str) -> str:
    """A job submission's raw JSON, with `input_json` spliced in as written."""
    fields = "".join(f", {json.dumps(k)}: {json.dumps(v)}" for k, v in extra.items())
    return f'{{"type": "echo", "input": {input_json}{fields}}}'


def assert_refused(reply, status: int, detail: str | None = None) -> None:
    assert reply.status_code == status, reply.get_data(as_text=True)
    assert reply.mimetype == PROBLEM
    assert reply.json["status"] == status
    if detail is not None:
        assert detail in reply.json["detail"], reply.json["detail"]


# -- the strict decoder ------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 975, 979, 990, 100_000])
def test_a_body_nested_beyond_the_limit_is_400_and_stores_nothing(
    client, partner, redis_client, depth
):
    """A body nested deeper than 64 levels, however deep, is a 400 naming the limit."""
    before = stored_state(redis_client)
    # The body is one level, `input` a second: the rest is arrays.
    raw = submission('{"a": ' + "[" * (depth - 2) + "]" * (depth - 2) + "}")
    reply = post_raw(client, "/v1/jobs", raw, partner["headers"])
    assert_refused(reply, 400, f"JSON nested deeper than {MAX_DEPTH} levels")
    assert stored_state(redis_client) == before


def test_a_deep_malformed_body_is_400_too(client, partner):
    """100,000 unclosed brackets are a 400, not an exhausted interpreter stack."""
    reply = post_raw(client, "/v1/jobs", "[" * 100_000, partner["headers"])
    assert_refused(reply, 400)


@pytest.mark.parametrize(
    ("number", "detail"),
    [
        ("NaN", "NaN is not JSON"),
        ("Infinity", "Infinity is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        ("1e400", "number out of range"),
        ("-1E+400", "number out of range"),
        ("1" + "0" * 400 + ".5", "number out of range"),
        ("9" * 400, "number out of range"),
        ("-" + "9" * 400, "number out of range"),
        # Just past the largest double (1.797…e308), written as an integer.
        (str(2**1024), "number out of range"),
    ],
)
def test_numbers_that_are_not_finite_doubles_are_400(client, partner, number, detail):
    """NaN, the infinities and numbers beyond a double's range are refused, each by name."""
    reply = post_raw(client, "/v1/jobs", submission(f'{{"n": {number}}}'), partner["headers"])
    assert_refused(reply, 400, detail)


@pytest.mark.parametrize(
    "number", ["-0.0", "5e-324", "1e-400", "1.7976931348623157e308", str(10**308), "0"]
)
def test_finite_numbers_at_the_edges_of_a_double_are_accepted(client, partner, number):
    """Negative zero, the smallest subnormal, underflow to zero and the largest double pass."""
    reply = post_raw(client, "/v1/jobs", submission(f'{{"n": {number}}}'), partner["headers"])
    assert reply.status_code == 202, reply.json


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ('{"type": "echo", "type": "echo"}', "type"),
        (submission('{"a": 1, "a": 2}'), "a"),
        (submission('{"a": [{"b": 1, "c": 2, "b": 3}]}'), "b"),
    ],
)
def test_duplicate_keys_are_400(client, partner, raw, key):
    """An object with the same key twice, at any depth, is a 400 naming the key."""
    reply = post_raw(client, "/v1/jobs", raw, partner["headers"])
    assert_refused(reply, 400, f"duplicate key {json.dumps(key)}")


@pytest.mark.parametrize(
    "input_json",
    [
        r'{"a": "\ud800"}',
        r'{"\udfff": 1}',
        r'{"a": ["x", "\udc00y"]}',
        r'{"a": "\udc00\ud800"}',
        r'{"a": "\ud83d"}',
    ],
)
def test_lone_surrogates_are_400(client, partner, input_json):
    """A \\u escape that leaves a lone surrogate, in a key, a value or an array, is a 400."""
    reply = post_raw(client, "/v1/jobs", submission(input_json), partner["headers"])
    assert_refused(reply, 400, "invalid Unicode: lone surrogate")


def test_an_escaped_surrogate_pair_is_one_character(client, partner, work):
    """A correctly paired \\ud83d\\ude00 is accepted and reads back as one emoji."""
    raw = submission(r'{"a": "\ud83d\ude00"}')
    job_id = post_raw(client, "/v1/jobs", raw, partner["headers"]).json["id"]
    work()
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    assert job["result"] == {"a": "\U0001f600"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type": "echo", "input": {"a": "\xed\xa0\x80"}}',  # a surrogate encoded in UTF-8
        b'{"type": "echo", "input": {"a": "\xff"}}',
        '{"type": "echo"}'.encode("utf-16"),
    ],
)
def test_a_body_that_is_not_utf8_is_400(client, partner, raw):
    """Bytes that are not UTF-8 (surrogates encoded raw included) are a 400."""
    reply = post_raw(client, "/v1/jobs", raw, partner["headers"])
    assert_refused(reply, 400, "UTF-8")


def test_a_lone_surrogate_with_an_idempotency_key_is_400(client, partner):
    """The fingerprint of an Idempotency-Key never meets a lone surrogate: it is a 400 first."""
    headers = {**partner["headers"], "Idempotency-Key": '"k-1"'}
    reply = post_raw(client, "/v1/jobs", submission(r'{"a": "\ud800"}'), headers)
    assert_refused(reply, 400, "lone surrogate")


def test_a_lone_surrogate_in_a_callback_url_is_400(client, partner, receiver):
    """A callback URL whose query holds a lone surrogate is refused before it is stored."""
    raw = submission("{}", callback_url=receiver.url + "?q=\ud800")
    reply = post_raw(client, "/v1/jobs", raw, partner["headers"])
    assert_refused(reply, 400, "lone surrogate")


@pytest.mark.parametrize(
    ("path", "raw"),
    [
        ("/v1/admin/partners", r'{"name": "Acme \ud800"}'),
        (
            "/v1/admin/circuits/reset",
            r'{"destination": "https://a.example", "partner_id": "\ud800"}',
        ),
        ("/v1/admin/dead-letters/replay", r'{"partner_id": "\udc00"}'),
    ],
)
def test_a_lone_surrogate_in_an_admin_body_is_400(client, admin_headers, redis_client, path, raw):
    """Partner names and admin filters are checked by the same decoder: 400, nothing stored."""
    before = stored_state(redis_client)
    assert_refused(post_raw(client, path, raw, admin_headers), 400, "lone surrogate")
    assert stored_state(redis_client) == before


def test_undecodable_text_in_headers_and_queries_is_a_4xx(client, partner, admin_headers):
    """A non-ASCII Idempotency-Key is a 400; a query with an encoded surrogate is no 500."""
    headers = {**partner["headers"], "Idempotency-Key": "k\u00e9y"}
    reply = client.post("/v1/jobs", json={"type": "echo"}, headers=headers)
    assert_refused(reply, 400, "Idempotency-Key")
    listing = client.get("/v1/jobs?cursor=%ED%A0%80", headers=partner["headers"])
    assert_refused(listing, 422)
    letters = client.get("/v1/admin/dead-letters?partner_id=%ED%A0%80", headers=admin_headers)
    assert letters.status_code == 200


def test_a_400_digit_integer_in_a_report_is_400(client, partner):
    """A `report` row value too large for a double is refused by the decoder, not a 500."""
    raw = '{"type": "report", "input": {"rows": [{"v": ' + "9" * 400 + '}], "value": "v"}}'
    assert_refused(post_raw(client, "/v1/jobs", raw, partner["headers"]), 400, "out of range")


def test_a_report_over_the_largest_integers_a_double_holds_completes(client, partner, work):
    """A `report` over integers near a double's limit completes with exact sums."""
    body = {"type": "report", "input": {"rows": [{"v": 10**308}, {"v": -1}], "value": "v"}}
    job_id = client.post("/v1/jobs", json=body, headers=partner["headers"]).json["id"]
    work()
    job = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    assert job["status"] == "completed", job
    (group,) = job["result"]["groups"]
    assert group["sum"] == 10**308 - 1 and group["max"] == 10**308


def test_the_depth_limit_is_a_setting(settings, redis_client, partner):
    """POSTBACK_MAX_JSON_DEPTH sets the limit; the refusal names it."""
    env = Settings.from_env({"POSTBACK_MAX_JSON_DEPTH": "3"})
    assert env.max_json_depth == 3 and Settings().max_json_depth == MAX_DEPTH
    client = create_app(asdict(replace(settings, max_json_depth=3)), client=redis_client)
    client = client.test_client()
    ok = post_raw(client, "/v1/jobs", submission('{"a": []}'), partner["headers"])
    assert ok.status_code == 202
    deep = post_raw(client, "/v1/jobs", submission('{"a": [[]]}'), partner["headers"])
    assert_refused(deep, 400, "JSON nested deeper than 3 levels")


@pytest.mark.parametrize("value", ["0", "-1", "100000", "deep"])
def test_a_depth_limit_storage_could_not_hold_is_refused_at_start(value):
    """POSTBACK_MAX_JSON_DEPTH outside 1-256 stops the process with a clear message."""
    with pytest.raises(SettingsError, match="POSTBACK_MAX_JSON_DEPTH"):
        Settings.from_env({"POSTBACK_MAX_JSON_DEPTH": value})


# -- every stored record reads back ----------------------------------------------------


@pytest.mark.parametrize("limit", [MAX_DEPTH, MAX_JSON_DEPTH_CEILING])
def test_a_job_at_the_depth_limit_reads_back_everywhere(
    settings, redis_client, partner, admin_headers, work, receiver, limit
):
    """A body exactly as deep as the limit (the default, or the highest the setting takes) is
    stored, listed, cancelled, run, delivered, redelivered and dead-lettered."""
    app = create_app(asdict(replace(settings, max_json_depth=limit)), client=redis_client)
    client, headers = app.test_client(), partner["headers"]
    # The body and `input` are two levels; `a` holds the others.
    deep_input = {"a": nested(limit - 2, "leaf")}
    body = {"type": "echo", "input": deep_input, "callback_url": receiver.url}
    too_deep = {**body, "input": {"a": [deep_input["a"]]}}
    assert_refused(client.post("/v1/jobs", json=too_deep, headers=headers), 400)
    queued = client.post("/v1/jobs", json=body, headers=headers).json["id"]
    cancelled = client.post(f"/v1/jobs/{queued}/cancel", headers=headers)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"

    job_id = client.post("/v1/jobs", json=body, headers=headers).json["id"]
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    work()
    job = client.get(f"/v1/jobs/{job_id}", headers=headers).json
    assert job["status"] == "completed" and job["result"] == deep_input
    assert job["delivery"]["status"] == "delivered"
    listed = client.get("/v1/jobs", headers=headers).json["items"]
    assert {item["id"] for item in listed} == {queued, job_id}
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=headers).json["items"]
    verify = Webhook(partner["signing_secret"]).verify
    hooks = [verify(hook.body, hook.headers) for hook in receiver.received]
    assert deep_input in [hook["data"].get("result") for hook in hooks]

    receiver.reply(Reply(410))
    assert client.post(f"/v1/jobs/{job_id}/redeliver", headers=headers).status_code == 202
    work()
    (letter,) = client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    detail = client.get(f"/v1/admin/dead-letters/{letter['id']}", headers=admin_headers).json
    assert detail["payload"]["data"]["result"] == deep_input
    replayed = client.post(f"/v1/admin/dead-letters/{letter['id']}/replay", headers=admin_headers)
    assert replayed.status_code == 202


# -- URLs at the API boundary ----------------------------------------------------------

BAD_DESTINATIONS = ["http://[::1", "http://exa mple", "ftp://files.example", "javascript:x", "//x"]


@pytest.mark.parametrize("url", BAD_DESTINATIONS)
def test_a_malformed_destination_filter_is_422(client, admin_headers, url):
    """Dead-letter and circuit filters with a malformed URL are a 422 naming `destination`."""
    for path in ("/v1/admin/dead-letters", "/v1/admin/circuits"):
        reply = client.get(path, query_string={"destination": url}, headers=admin_headers)
        assert_refused(reply, 422)
        assert "destination" in reply.json["errors"]
    for path in ("/v1/admin/dead-letters/replay", "/v1/admin/circuits/reset"):
        reply = client.post(path, json={"destination": url}, headers=admin_headers)
        assert_refused(reply, 422)
        assert "destination" in reply.json["errors"]


@pytest.mark.parametrize("url", BAD_DESTINATIONS)
def test_a_malformed_callback_url_is_422(client, partner, url):
    """A job or a replay with a malformed callback URL is a 422 naming `callback_url`."""
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "callback_url": url}, headers=partner["headers"]
    )
    assert_refused(reply, 422)
    assert "callback_url" in reply.json["errors"]


@pytest.mark.parametrize(
    "argv",
    [
        ["circuits", "list", "--destination", "http://[::1"],
        ["circuits", "reset", "http://[::1"],
        ["dead-letters", "list", "--destination", "http://exa mple"],
        ["dead-letters", "purge", "--destination", "http://[::1"],
        ["dead-letters", "replay", "--destination", "ftp://files.example"],
    ],
)
def test_the_cli_refuses_a_malformed_destination(argv, capsys):
    """The CLI's destination filters are checked like the API's: a usage error, no traceback."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "destination" in capsys.readouterr().err


# -- OPTIONS and Allow -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v1/admin/dead-letters/replay", "OPTIONS, POST"),
        ("/v1/admin/dead-letters/dlq_x", "DELETE, GET, HEAD, OPTIONS"),
        ("/v1/jobs", "GET, HEAD, OPTIONS, POST"),
        ("/v1/admin/circuits/reset", "OPTIONS, POST"),
    ],
)
def test_options_lists_the_methods_of_the_route(client, path, allow):
    """OPTIONS is a 204 without a body whose Allow names the methods of that route."""
    reply = client.options(path)
    assert reply.status_code == 204
    assert reply.headers["Allow"] == allow
    assert reply.data == b""
    assert "text/html" not in reply.headers.get("Content-Type", "")


def test_a_wrong_method_names_the_same_methods(client, admin_headers):
    """A 405 on the bulk replay route says Allow: OPTIONS, POST, like its OPTIONS."""
    reply = client.put("/v1/admin/dead-letters/replay", headers=admin_headers)
    assert_refused(reply, 405)
    assert reply.headers["Allow"] == "OPTIONS, POST"


# -- the HTTP server itself (postback serve, under gunicorn) ------------------------------

SERVER_ADMIN_TOKEN = "input-test-admin-token-0123456789"


@dataclass(frozen=True)
class Api:
    """A running `postback serve`."""

    port: int
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def partner(self) -> dict[str, Any]:
        reply = requests.post(
            f"{self.base}/v1/admin/partners",
            json={"name": "Wire"},
            headers=bearer(SERVER_ADMIN_TOKEN),
            timeout=10,
        )
        assert reply.status_code == 201, reply.text
        return reply.json()

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def exchange(self, raw: bytes) -> http.client.HTTPResponse:
        """Send `raw` bytes as they are; the answer, read in full."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.body = response.read()  # type: ignore[attr-defined]
        sock.close()
        return response


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """`postback serve` on a free port, one gunicorn worker, on the session's Redis."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = cli_env(
        REDIS_URL=redis_url,
        POSTBACK_ADMIN_TOKEN=SERVER_ADMIN_TOKEN,
        POSTBACK_API_WORKERS="1",
        POSTBACK_DURABILITY="everysec",
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*POSTBACK, "serve", "--port", str(port)], env=env, stdout=out, stderr=out
        )
    server = Api(port, log)

    def healthy() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return requests.get(f"{server.base}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    try:
        eventually(healthy, timeout_seconds=30, what="postback serve answers /healthz")
        yield server
    finally:
        stop_process(process, grace_seconds=10)


def chunked_post(api: Api, path: str, body: bytes, headers: dict[str, str]):
    """POST `body` with Transfer-Encoding: chunked (no Content-Length), 64 KiB a chunk."""
    conn = api.connection()
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    conn.request(
        "POST",
        path,
        body=chunks,
        headers={"Content-Type": "application/json", **headers},
        encode_chunked=True,
    )
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def raw_submission(partner: dict[str, Any], headers: bytes, body: bytes) -> bytes:
    """POST /v1/jobs as `partner`, byte for byte: more `headers` (each ending in CRLF), `body`."""
    return (
        b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + partner["api_key"].encode() + b"\r\n" + headers + b"\r\n" + body
    )


def padded_submission(size: int) -> bytes:
    """An echo submission of exactly `size` bytes."""
    head, tail = b'{"type": "echo", "input": {"pad": "', b'"}}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def test_a_chunked_body_over_the_limit_is_413(api):
    """A chunked body one byte over POSTBACK_MAX_BODY_BYTES is a 413 problem, not truncated."""
    partner = api.partner()
    reply, data = chunked_post(
        api, "/v1/jobs", padded_submission(MAX_BODY_BYTES + 1), bearer(partner["api_key"])
    )
    assert reply.status == 413, data
    assert reply.getheader("Content-Type") == PROBLEM
    assert json.loads(data)["status"] == 413


def test_a_chunked_body_at_the_limit_is_accepted(api):
    """A chunked body of exactly POSTBACK_MAX_BODY_BYTES is accepted whole."""
    partner = api.partner()
    reply, data = chunked_post(
        api, "/v1/jobs", padded_submission(MAX_BODY_BYTES), bearer(partner["api_key"])
    )
    assert reply.status == 202, data


def test_a_sized_body_over_the_limit_is_413(api):
    """With a Content-Length over the limit the answer is the same 413 problem."""
    partner = api.partner()
    reply = requests.post(
        f"{api.base}/v1/jobs",
        data=padded_submission(MAX_BODY_BYTES + 1),
        headers={"Content-Type": "application/json", **bearer(partner["api_key"])},
        timeout=30,
    )
    assert reply.status_code == 413 and reply.headers["Content-Type"] == PROBLEM


def test_a_100000_deep_body_is_400_on_the_wire(api):
    """Under gunicorn's threads too, 100,000 nested arrays are a 400 problem, not a 500."""
    partner = api.partner()
    reply = requests.post(
        f"{api.base}/v1/jobs",
        data=submission('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        headers={"Content-Type": "application/json", **bearer(partner["api_key"])},
        timeout=30,
    )
    assert reply.status_code == 400 and reply.headers["Content-Type"] == PROBLEM
    assert f"nested deeper than {MAX_DEPTH} levels" in reply.json()["detail"]


def test_a_body_shorter_than_its_content_length_is_400(api):
    """A client that declares 100 bytes, sends 15 and stops sending gets a 400 problem
    naming the shortfall, and no job: the body is not taken as it is."""
    partner = api.partner()
    listed = requests.get(f"{api.base}/v1/jobs", headers=bearer(partner["api_key"]), timeout=10)
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    sock.sendall(raw_submission(partner, b"Content-Length: 100\r\n", b'{"type": "echo"'))
    sock.shutdown(socket.SHUT_WR)
    reply = http.client.HTTPResponse(sock)
    reply.begin()
    body = json.loads(reply.read())
    sock.close()
    assert reply.status == 400 and reply.getheader("Content-Type") == PROBLEM
    assert "15 of its 100 bytes" in body["detail"]
    after = requests.get(f"{api.base}/v1/jobs", headers=bearer(partner["api_key"]), timeout=10)
    assert after.json()["items"] == listed.json()["items"] == []


def test_a_broken_chunked_body_is_400(api):
    """A chunk size that is not hexadecimal is a 400 problem."""
    chunks = b"zz\r\n{}\r\n0\r\n\r\n"
    reply = api.exchange(raw_submission(api.partner(), b"Transfer-Encoding: chunked\r\n", chunks))
    assert reply.status == 400
    assert reply.getheader("Content-Type") == PROBLEM
    assert json.loads(reply.body)["status"] == 400  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /v1/jobs?q=" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (
            b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: 1\r\n" % n for n in range(120))
            + b"\r\n",
            431,
        ),
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),
    ],
)
def test_requests_the_server_refuses_are_problems(api, raw, status):
    """A request line or headers gunicorn refuses get a problem+json answer, not HTML."""
    reply = api.exchange(raw)
    body = reply.body  # type: ignore[attr-defined]
    assert reply.status == status, body
    assert reply.getheader("Content-Type") == PROBLEM, body
    problem = json.loads(body)
    assert problem["status"] == status and problem["type"].startswith("urn:postback:problem:")


def test_a_non_ascii_idempotency_key_is_400_on_the_wire(api):
    """Raw bytes in Idempotency-Key reach the API as text it refuses with a 400, not a 500."""
    headers = b"Idempotency-Key: \xed\xa0\x80\r\nContent-Length: 16\r\n"
    reply = api.exchange(raw_submission(api.partner(), headers, b'{"type": "echo"}'))
    assert reply.status == 400 and reply.getheader("Content-Type") == PROBLEM


def test_options_on_the_wire_lists_the_routes_methods(api):
    """Through gunicorn, OPTIONS on the bulk replay route is a 204 with Allow: OPTIONS, POST."""
    reply = requests.options(f"{api.base}/v1/admin/dead-letters/replay", timeout=10)
    assert reply.status_code == 204
    assert reply.headers["Allow"] == "OPTIONS, POST"
    assert reply.content == b""


# -- a property: whatever is accepted reads back ------------------------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON number written exactly as `text`."""

    text: str


@dataclass(frozen=True)
class Obj:
    """A JSON object as its pairs, so that a key may come twice."""

    pairs: tuple[tuple[str, Any], ...]


ODD_CHARACTERS = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\U0001f600", "\u202e"]
ODD_CHARACTERS += ["\u05d0", "\u0645", "\ufeff", "\u2028", '"', "\\", "\x7f"]
text = st.text(st.one_of(st.characters(), st.sampled_from(ODD_CHARACTERS)), max_size=8)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**330), max_value=10**330),
    st.floats(),
    st.sampled_from(["1e400", "-1e400", "-0.0", "5e-324", "1e-400", "1E+308", "9" * 309]).map(Raw),
    st.sampled_from([str(2**1024), "-" + "9" * 320, "2.2250738585072014e-308"]).map(Raw),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, text)
keys = st.one_of(st.sampled_from(["a", "b", ""]), text)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.lists(st.tuples(keys, children), max_size=4).map(lambda p: Obj(tuple(p))),
    )


# Wide and a little deep, then, for some, wrapped in arrays to either side of the limit.
trees = st.tuples(
    st.recursive(leaves, _containers, max_leaves=12),
    st.one_of(st.just(0), st.integers(MAX_DEPTH - 12, MAX_DEPTH + 4)),
).map(lambda t: nested(t[1], t[0]))


def encode(node: Any) -> str:
    """The JSON text of a generated tree (non-finite floats as NaN and Infinity)."""
    if isinstance(node, Raw):
        return node.text
    if isinstance(node, Obj):
        return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in node.pairs) + "}"
    if isinstance(node, list):
        return "[" + ",".join(encode(item) for item in node) + "]"
    return json.dumps(node)


def _bad_number(text: str) -> bool:
    value = float(text)
    return value != value or value in (float("inf"), float("-inf"))


def _bad_text(value: str) -> bool:
    # json.dumps escapes each surrogate; a high one followed by a low one decodes as a pair.
    decoded = json.loads(json.dumps(value))
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in decoded)


def depth_and_fault(node: Any) -> tuple[int, bool]:
    """How deep the tree nests, and whether strict JSON must refuse something in it."""
    if isinstance(node, Raw):
        return 0, _bad_number(node.text)
    if isinstance(node, bool) or node is None:
        return 0, False
    if isinstance(node, int | float):
        return 0, _bad_number(repr(node))
    if isinstance(node, str):
        return 0, _bad_text(node)
    if isinstance(node, Obj):
        names = [json.loads(json.dumps(k)) for k, _ in node.pairs]
        fault = len(set(names)) != len(names) or any(_bad_text(k) for k, _ in node.pairs)
        children = [v for _, v in node.pairs]
    else:
        fault, children = False, node
    deepest = 0
    for child in children:
        depth, child_fault = depth_and_fault(child)
        deepest, fault = max(deepest, depth), fault or child_fault
    return deepest + 1, fault


@dataclass
class Prop:
    """What the property test keeps across its examples."""

    client: Any
    headers: dict[str, str]
    accepted: int = 0


@pytest.fixture
def prop(settings, redis_client, admin_headers) -> Prop:
    """A client whose rate limit the examples cannot reach, and a partner of it."""
    app = create_app(asdict(replace(settings, rate_limit="100000/second")), client=redis_client)
    client = app.test_client()
    made = client.post("/v1/admin/partners", json={"name": "Prop"}, headers=admin_headers)
    return Prop(client, bearer(made.json["api_key"]))


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(tree=trees)
def test_every_body_is_refused_or_reads_back(prop, receiver, work, tree):
    """Any JSON-ish body is a 400 problem if strict JSON refuses it, else stored and readable
    (and, one in ten, run by a worker and delivered)."""
    client, headers = prop.client, prop.headers
    depth, fault = depth_and_fault(tree)
    refuse = fault or depth + 2 > MAX_DEPTH  # the body and `input` are two levels
    process = not refuse and prop.accepted % 10 == 0
    extra = {"callback_url": receiver.url} if process else {}
    raw = submission("{" + f'"v":{encode(tree)}' + "}", **extra)
    reply = post_raw(client, "/v1/jobs", raw, headers)
    event("refused" if refuse else "processed" if process else "stored")
    if refuse:
        assert_refused(reply, 400)
        return
    assert reply.status_code == 202, (reply.status_code, reply.get_data(as_text=True))
    prop.accepted += 1
    job_id = reply.json["id"]
    expected = json.loads(raw)["input"]
    assert client.get(f"/v1/jobs/{job_id}", headers=headers).status_code == 200
    (newest,) = client.get("/v1/jobs?limit=1", headers=headers).json["items"]
    assert newest["id"] == job_id
    if process:
        work()
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json
        assert job["status"] == "completed" and job["result"] == expected
        assert job["delivery"]["status"] == "delivered"
        hook = json.loads(receiver.received[-1].body)
        assert hook["data"]["id"] == job_id and hook["data"]["result"] == expected


_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


def _mostly(valid: st.SearchStrategy, edges: list) -> st.SearchStrategy:
    """Values the schema takes (most of the time), at its bounds, or of other types."""
    kinds = [valid, st.sampled_from(edges), _ODD]
    return st.sampled_from([0, 0, 0, 0, 1, 2]).flatmap(lambda kind: kinds[kind])


_SUBMISSION = st.fixed_dictionaries(
    {"type": _mostly(st.text(min_size=1, max_size=8), ["x" * 100, "x" * 101, ""])},
    optional={
        "input": _mostly(st.dictionaries(st.text(max_size=3), _ODD, max_size=3), [{}]),
        "callback_url": _mostly(st.just("http://h.test/"), ["h" * 2048, "h" * 2049, ""]),
        "priority": _mostly(st.sampled_from(["high", "normal", "low"]), ["urgent"]),
        "timeout_seconds": _mostly(st.integers(1, 10**6), [0, True, 5.0, 2**70]),
    },
)
_WITH_EXTRA = st.builds(lambda body, odd: {**body, "extra": odd}, _SUBMISSION, _ODD)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([_SUBMISSION, _SUBMISSION, _SUBMISSION, _WITH_EXTRA]).flatmap(lambda s: s))
def test_a_plainly_valid_submission_loads_as_the_schema_loads_it(body):
    """The submission fast path takes only bodies the schema takes, and loads them the same."""
    from app.errors import ValidationFailed
    from app.schemas import JobSubmission, _plain_submission, load

    plain = _plain_submission(body)
    try:
        loaded = load(JobSubmission, body)
    except ValidationFailed:
        assert plain is None
        event("refused by the schema")
        return
    event("taken plainly" if plain is not None else "left to the schema")
    assert plain is None or plain == loaded
