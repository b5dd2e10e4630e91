"""`postback listen`: a partner's feed relayed, signed, to a receiver on loopback; each event
exactly once across restarts of the relay, and through a restart of the API."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from app.cli import listen_state
from app.cli.common import Refused
from app.cli.listen import Relay, SignedEvent
from postback.embedded import free_port
from tests.processes import POSTBACK, cli_env, eventually, postback_worker, stop_process
from tests.receiver import Received, Receiver

# Generous: each bounds a wait for something that takes a second or two.
SETTLE_SECONDS = 30.0


@contextlib.contextmanager
def api(redis_url: str, port: int) -> Iterator[str]:
    """`postback serve` on `port` of 127.0.0.1; its base URL. Stopped at the end."""
    process = subprocess.Popen(
        [*POSTBACK, "serve", "--port", str(port)], env=cli_env(REDIS_URL=redis_url)
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, "postback serve exited"
        with contextlib.suppress(requests.RequestException):
            return requests.get(f"{base}/healthz", timeout=SETTLE_SECONDS).status_code == 200
        return False

    try:
        eventually(up, timeout_seconds=SETTLE_SECONDS, what="postback serve answers /healthz")
        yield base
    finally:
        stop_process(process, grace_seconds=10)


class Listen:
    """A `postback listen` process whose output lines are collected as they come."""

    def __init__(self, *args: str, **env: str) -> None:
        self.process = subprocess.Popen(
            [*POSTBACK, "listen", *args],
            env=cli_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._collect, args=(stream, lines), daemon=True)
            for stream, lines in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream: Any, lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, text: str, *, stderr: bool = False) -> str:
        """The first line of stdout (or stderr) with `text`, waited for."""
        lines = self.err if stderr else self.out

        def found() -> str | None:
            return next((line for line in lines if text in line), None)

        with self._changed:
            assert self._changed.wait_for(found, SETTLE_SECONDS), (text, self.out, self.err)
            return found() or ""

    def stop(self) -> int:
        """SIGTERM, as a developer's Ctrl-C; the exit status, once all output is read."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout=SETTLE_SECONDS)
        for reader in self._readers:
            reader.join(timeout=SETTLE_SECONDS)
        return status

    def kill(self) -> None:
        stop_process(self.process, grace_seconds=5)


@contextlib.contextmanager
def listening(
    base: str, partner: dict, target: Receiver, state_file: Path | None = None, **env: str
) -> Iterator[Listen]:
    """`postback listen` relaying `partner`'s feed at `base` to `target`; killed if left running."""
    state = ("--state-file", str(state_file)) if state_file else ()
    listen = Listen(
        *("--forward-to", target.url, "--api-url", base, *state),
        POSTBACK_API_KEY=partner["api_key"],
        **env,
    )
    try:
        yield listen
    finally:
        listen.kill()


def submit(base: str, partner: dict, callback_url: str | None = None) -> str:
    body: dict[str, Any] = {"type": "echo", "input": {}}
    if callback_url:
        body["callback_url"] = callback_url
    reply = requests.post(
        f"{base}/v1/jobs", json=body, headers=partner["headers"], timeout=SETTLE_SECONDS
    )
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def feed(base: str, partner: dict) -> list[dict[str, Any]]:
    """Every item of the partner's feed, oldest first, as the API lists it."""
    reply = requests.get(
        f"{base}/v1/events?limit=500", headers=partner["headers"], timeout=SETTLE_SECONDS
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["items"]


def verified(partner: dict, request: Received) -> dict[str, Any]:
    """The body of `request` once the standardwebhooks library verifies it as a webhook."""
    return Webhook(partner["signing_secret"]).verify(request.body, request.headers)


def test_every_event_arrives_once_verified_across_a_restart_of_listen(redis_url, partner, tmp_path):
    """Two runs of `listen` around a stop forward each feed event exactly once, in order, none
    skipped, each verified as a webhook with the partner's secret and with the feed's webhook
    id, byte for byte the body the server delivers to the job's callback URL."""
    state_file = tmp_path / "listen.json"
    with (
        Receiver() as target,
        Receiver() as callbacks,
        api(redis_url, free_port()) as base,
        postback_worker(redis_url),
    ):
        jobs = [submit(base, partner), submit(base, partner, callbacks.url)]
        jobs += [submit(base, partner), submit(base, partner, callbacks.url)]
        with listening(base, partner, target, state_file) as first:
            first.wait_for_line(f"State file: {state_file}")
            target.wait_for(4, timeout_seconds=SETTLE_SECONDS)
            assert first.stop() == 0
        assert json.loads(state_file.read_text())["after"] == feed(base, partner)[3]["id"]
        assert "Traceback" not in "\n".join(first.err)

        jobs += [submit(base, partner, callbacks.url), submit(base, partner)]
        with listening(base, partner, target, state_file) as second:
            second.wait_for_line(f"Starting after {feed(base, partner)[3]['id']}")
            target.wait_for(6, timeout_seconds=SETTLE_SECONDS)
            assert second.stop() == 0
        delivered = callbacks.wait_for(3, timeout_seconds=SETTLE_SECONDS)
        items = feed(base, partner)

    forwarded = target.received
    assert len(items) == 6 and len(forwarded) == 6
    assert [r.headers["webhook-id"] for r in forwarded] == [i["webhook_id"] for i in items]
    for request, item in zip(forwarded, items, strict=True):
        body = verified(partner, request)
        assert body == {key: item[key] for key in ("type", "timestamp", "data")}
        assert request.headers["content-type"] == "application/json"
        assert "postback listen" in request.headers["user-agent"]
    assert sorted(item["data"]["id"] for item in items) == sorted(jobs)
    by_id = {r.headers["webhook-id"]: r.body for r in forwarded}
    assert {r.headers["webhook-id"]: r.body for r in delivered}.items() <= by_id.items()
    lines = [line for line in first.out + second.out if "  job." in line]
    assert len(lines) == 6 and all(" -> 200 (" in line for line in lines), lines


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ((), {}, "postback: no API key: pass --api-key or set POSTBACK_API_KEY"),
        (("--after", "nope"), {"POSTBACK_API_KEY": "k"}, "after: must be a cursor"),
        (("--api-url", "localhost:8000"), {"POSTBACK_API_KEY": "k"}, "--api-url must be an http"),
    ],
)
def test_a_missing_key_or_a_bad_option_is_one_line_and_exit_status_2(argv, env, message):
    """Without an API key (or with a cursor or URL that is not one) `listen` exits 2 with one
    line on stderr and contacts no one."""
    done = subprocess.run(
        [*POSTBACK, "listen", "--forward-to", "http://127.0.0.1:9/hook", *argv],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=SETTLE_SECONDS,
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("postback: ") and message in line
    assert done.stdout == ""


def test_listen_survives_a_restart_of_the_api_and_carries_on_from_its_cursor(
    redis_url, partner, tmp_path
):
    """With the API stopped and started again on its port, `listen` says once that it is
    reconnecting, then that it is back, and forwards the next event; a wrong key is refused."""
    port, env = free_port(), {"XDG_STATE_HOME": str(tmp_path)}
    with Receiver() as target, postback_worker(redis_url), contextlib.ExitStack() as stack:
        with api(redis_url, port) as base:
            refused = subprocess.run(
                [*POSTBACK, "listen", "--forward-to", target.url, "--api-url", base],
                env=cli_env(POSTBACK_API_KEY="pk_wrong", **env),
                capture_output=True,
                text=True,
                timeout=SETTLE_SECONDS,
            )
            listen = stack.enter_context(listening(base, partner, target, **env))
            first = submit(base, partner)
            target.wait_for(1, timeout_seconds=SETTLE_SECONDS)
        listen.wait_for_line("reconnecting", stderr=True)
        with api(redis_url, port):
            second = submit(base, partner)
            target.wait_for(2, timeout_seconds=SETTLE_SECONDS)
            listen.wait_for_line(f"reconnected to {base}", stderr=True)
            items = feed(base, partner)
            assert listen.stop() == 0

    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"postback: the API at {base} answered 401")
    assert [r.headers["webhook-id"] for r in target.received] == [i["webhook_id"] for i in items]
    assert [verified(partner, r)["data"]["id"] for r in target.received] == [first, second]
    assert len([line for line in listen.err if "reconnecting" in line]) == 1
    assert "Traceback" not in "\n".join(listen.err)
    (state_file,) = (tmp_path / "postback").glob("listen-*.json")
    assert f"State file: {state_file}" in listen.out
    assert json.loads(state_file.read_text())["after"] == items[-1]["id"]
    assert partner["api_key"] not in state_file.read_text()


def relay_to(url: str, state_file: Path) -> Relay:
    return Relay(
        api_url="http://127.0.0.1:9",
        api_key="pbk_test",
        forward_to=url,
        state_file=state_file,
        after=None,
    )


def event(cursor: str, webhook_id: str) -> SignedEvent:
    headers = {"content-type": "application/json", "webhook-id": webhook_id}
    return SignedEvent(cursor, webhook_id, "job.completed", '{"type":"job.completed"}', headers)


def test_a_webhook_forwarded_in_this_run_is_not_forwarded_again(tmp_path, capsys):
    """An event whose webhook id this run forwarded already is passed over, its cursor saved."""
    state_file = tmp_path / "state.json"
    with Receiver() as target:
        relay = relay_to(target.url, state_file)
        relay._forward(event("1-0", "msg_a"))
        relay._forward(event("2-0", "msg_a"))
    assert [r.headers["webhook-id"] for r in target.received] == ["msg_a"]
    assert target.received[0].body == b'{"type":"job.completed"}'
    assert listen_state.load(state_file) == "2-0"
    assert "skipped: forwarded already in this run" in capsys.readouterr().out


def test_a_receiver_that_is_down_is_reported_and_passed(tmp_path, capsys):
    """With nothing listening at the target, the event's line says "connection refused" and
    the relay moves on past it: the server, not the relay, retries the job's own webhook."""
    state_file = tmp_path / "state.json"
    relay_to(f"http://127.0.0.1:{free_port()}/hook", state_file)._forward(event("7-1", "msg_b"))
    (line,) = capsys.readouterr().out.splitlines()
    assert "job.completed" in line and "msg_b" in line and "-> connection refused (" in line
    assert listen_state.load(state_file) == "7-1"


def test_each_api_key_and_target_has_its_own_state_file_and_a_bad_one_is_refused(tmp_path):
    """The default state file differs by API URL, key and target, never holds the key, and a
    file that holds no cursor is refused rather than read as the start of the feed."""
    env = {"XDG_STATE_HOME": str(tmp_path)}
    where = {"api_url": "http://api", "api_key": "pbk_1", "forward_to": "http://localhost/a"}
    path = listen_state.default_path(env, **where)
    others = [
        listen_state.default_path(env, **{**where, name: value})
        for name, value in (("api_url", "http://b"), ("api_key", "pbk_2"), ("forward_to", "x"))
    ]
    assert path.parent == tmp_path / "postback" and path not in others and len(set(others)) == 3
    listen_state.save(path, "5-0", api_url="http://api", forward_to="http://localhost/a")
    assert listen_state.load(path) == "5-0" and "pbk_1" not in path.read_text()
    path.write_text('{"after": "garbage"}')
    with pytest.raises(Refused, match="holds no cursor"):
        listen_state.load(path)
