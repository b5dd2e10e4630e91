"""The command line is the API's equal: the API's validation and messages, its operations,
settings checked before anything starts, and one line (never a traceback) for a lost Redis."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app.cli import main
from postback import __version__
from tests.processes import POSTBACK, cli_env
from tests.receiver import Reply


@pytest.fixture
def cli(redis_url, monkeypatch, capsys):
    """`postback …` run in this process against the test Redis: (status, JSON out, stderr)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("POSTBACK_CALLBACK_ALLOW_CIDRS", "127.0.0.0/8")

    def run(*argv: str) -> tuple[int, Any, str]:
        capsys.readouterr()  # what the fixtures before logged
        try:
            status = main(list(argv))
        except SystemExit as exited:
            status = int(exited.code or 0)
        captured = capsys.readouterr()
        out = json.loads(captured.out) if captured.out.strip() else None
        return status, out, captured.err

    return run


@pytest.fixture
def dead(client, partner, receiver, work, admin_headers):
    """A dead letter (a webhook that got a 410), as the admin API lists it."""
    receiver.reply(Reply(410))
    reply = client.post(
        "/v1/jobs",
        json={"type": "echo", "input": {"n": 1}, "callback_url": receiver.url},
        headers=partner["headers"],
    )
    assert reply.status_code == 202
    work()
    (letter,) = client.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    return letter


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("postback: ")
    return lines[0]


def test_replay_to_a_non_url_is_refused_with_the_apis_message(cli, dead, client, admin_headers):
    """`dead-letters replay ID --callback-url notaurl` is refused as the API refuses it (exit 2),
    and nothing is replayed: the dead letter stays, no circuit appears."""
    api = client.post(
        f"/v1/admin/dead-letters/{dead['id']}/replay",
        json={"callback_url": "notaurl"},
        headers=admin_headers,
    )
    assert api.status_code == 422
    status, out, err = cli("dead-letters", "replay", dead["id"], "--callback-url", "notaurl")
    assert status == 2 and out is None
    assert one_line(err) == f"postback: {api.json['detail']}"
    assert [i["id"] for i in cli("dead-letters", "list")[1]["items"]] == [dead["id"]]
    assert cli("circuits", "list")[1] == {"items": [], "next_cursor": None}


def test_replay_to_a_private_address_is_refused_by_the_ssrf_rules(cli, dead, monkeypatch):
    """A corrected callback URL aimed at a private address is refused by the API's SSRF rules."""
    monkeypatch.delenv("POSTBACK_CALLBACK_ALLOW_CIDRS")
    status, _, err = cli(
        "dead-letters", "replay", dead["id"], "--callback-url", "http://10.0.0.5/hook"
    )
    assert status == 2
    assert one_line(err).startswith("postback: callback_url refused: ")


def test_a_partner_with_an_empty_name_is_refused(cli, client, admin_headers, redis_client):
    """`partners create ""` is refused with the API's message and creates nobody."""
    api = client.post("/v1/admin/partners", json={"name": ""}, headers=admin_headers)
    assert api.status_code == 422
    status, out, err = cli("partners", "create", "")
    assert status == 2 and out is None
    line = one_line(err)
    assert api.json["detail"] in line and api.json["errors"]["name"][0] in line
    assert cli("partners", "list")[1] == {"items": [], "next_cursor": None}


def test_a_circuit_reset_of_a_non_destination_is_refused(cli):
    """`circuits reset garbage` is a usage error (exit 2) with the API's message."""
    status, _, err = cli("circuits", "reset", "garbage")
    assert status == 2
    assert "must be an http(s) URL or scheme://host:port" in err


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (("dead-letters", "list", "--limit", "0"), "limit"),
        (("dead-letters", "list", "--limit", "101"), "limit"),
        (("dead-letters", "list", "--cursor", "garbage"), "cursor"),
        (("dead-letters", "list", "--since", "yesterday"), "since"),
        (("circuits", "list", "--limit", "0"), "limit"),
        (("circuits", "list", "--cursor", "garbage"), "cursor"),
        (("partners", "list", "--cursor", "garbage"), "cursor"),
    ],
)
def test_a_bad_page_is_refused_with_the_apis_message(cli, argv, field):
    """A limit out of range or a cursor the API never returned is refused (exit 2), naming the
    field as the API does; no crash, no silent restart from the top."""
    status, out, err = cli(*argv)
    assert status == 2 and out is None
    assert one_line(err).startswith(f"postback: the request is not valid: {field}: ")


def test_partners_list_rotate_key_and_disable(cli, client):
    """`partners list` pages like the admin API; `rotate-key` gives a new working key and ends
    the old; `disable` ends every key; unknown or disabled partners are refused."""
    created = [cli("partners", "create", name)[1] for name in ("Acme", "Bolt", "Cord")]
    status, first, _ = cli("partners", "list", "--limit", "2")
    assert status == 0
    assert [p["name"] for p in first["items"]] == ["Acme", "Bolt"]
    assert set(first["items"][0]) == {"id", "name", "created_at", "disabled"}
    rest = cli("partners", "list", "--cursor", first["next_cursor"])[1]
    assert [p["name"] for p in rest["items"]] == ["Cord"] and rest["next_cursor"] is None

    acme = created[0]
    status, rotated, _ = cli("partners", "rotate-key", acme["id"])
    assert status == 0 and rotated["id"] == acme["id"]
    old = {"Authorization": f"Bearer {acme['api_key']}"}
    new = {"Authorization": f"Bearer {rotated['api_key']}"}
    assert client.get("/v1/jobs", headers=old).status_code == 401
    assert client.get("/v1/jobs", headers=new).status_code == 200

    assert cli("partners", "disable", acme["id"])[:2] == (0, {"id": acme["id"], "disabled": True})
    assert client.get("/v1/jobs", headers=new).status_code == 401
    status, _, err = cli("partners", "rotate-key", acme["id"])
    assert status == 1 and one_line(err) == f"postback: partner {acme['id']} is disabled"
    status, _, err = cli("partners", "disable", "ptn_nobody")
    assert status == 1 and one_line(err) == "postback: no partner ptn_nobody"


def test_an_admin_sees_any_partners_job(cli, client, partner, admin_headers, work):
    """`GET /v1/admin/jobs/{id}` and `postback jobs show ID` give the job as its partner sees it,
    plus its partner_id; an unknown job is a 404 problem and exit status 1."""
    job_id = client.post(
        "/v1/jobs", json={"type": "echo", "input": {"n": 2}}, headers=partner["headers"]
    ).json["id"]
    work()
    own = client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).json
    reply = client.get(f"/v1/admin/jobs/{job_id}", headers=admin_headers)
    assert reply.status_code == 200
    assert reply.json == {**own, "partner_id": partner["id"]}
    assert client.get(f"/v1/admin/jobs/{job_id}", headers=partner["headers"]).status_code in (
        401,
        403,
    )
    for unknown in ("job_00000000000000000000000000", "garbage"):
        missing = client.get(f"/v1/admin/jobs/{unknown}", headers=admin_headers)
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/problem+json"
    status, shown, _ = cli("jobs", "show", job_id)
    assert status == 0 and shown == reply.json
    status, _, err = cli("jobs", "show", "job_nobody")
    assert status == 1 and one_line(err) == "postback: no job job_nobody"


def test_purge_all_asks_first(cli, dead, monkeypatch):
    """`dead-letters purge --all` without a terminal purges nothing (exit 1); `--yes` purges."""
    status, out, err = cli("dead-letters", "purge", "--all")
    assert status == 1 and out is None and "--yes" in err
    assert len(cli("dead-letters", "list")[1]["items"]) == 1
    assert cli("dead-letters", "purge", "--all", "--yes")[:2] == (0, {"purged": 1})


def purge_at_a_terminal(answer: bytes, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """`postback dead-letters purge --all` with its stdin a terminal that answers `answer`."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*POSTBACK, "dead-letters", "purge", "--all"],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        os.write(controller, answer)
        out, err = process.communicate(timeout=30)
    finally:
        os.close(controller)
        os.close(terminal)
    return process.returncode, (out + err).decode()


def test_purge_all_at_a_terminal_needs_a_yes(dead, redis_url, tmp_path):
    """At a terminal, `purge --all` asks; "n" keeps every dead letter (exit 1), "y" purges."""
    env = cli_env(REDIS_URL=redis_url)
    status, output = purge_at_a_terminal(b"n\n", env, tmp_path)
    assert status == 1, output
    assert "[y/N]" in output
    assert dead_count(env, tmp_path) == 1
    status, output = purge_at_a_terminal(b"y\n", env, tmp_path)
    assert status == 0, output
    assert '"purged": 1' in output
    assert dead_count(env, tmp_path) == 0


def dead_count(env: dict[str, str], cwd: Path) -> int:
    done = subprocess.run(
        [*POSTBACK, "dead-letters", "list"], env=env, cwd=cwd, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return len(json.loads(done.stdout)["items"])


def run_cli(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*POSTBACK, *argv], env=cli_env(**env), cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_an_unreachable_redis_is_one_line_without_the_password(tmp_path):
    """Every command that needs Redis, given an unreachable one, prints one line naming the
    URL without its password, and exits 1."""
    url = "redis://user:secret@127.0.0.1:1"
    for argv in (
        ("partners", "create", "Acme"),
        ("partners", "list"),
        ("dead-letters", "list"),
        ("circuits", "list"),
        ("jobs", "show", "job_00000000000000000000000000"),
        ("status",),
    ):
        done = run_cli(*argv, cwd=tmp_path, REDIS_URL=url, POSTBACK_REDIS_TIMEOUT_SECONDS="1")
        assert done.returncode == 1, (argv, done.stderr)
        line = one_line(done.stderr)
        assert "redis://user:***@127.0.0.1:1" in line and "secret" not in line


def test_version():
    """`postback --version` prints the package's version."""
    done = subprocess.run([*POSTBACK, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == f"postback {__version__}"


def test_every_command_that_reaches_the_data_dir_takes_data_dir(tmp_path):
    """`--data-dir` is taken by every command that finds the system through its data dir."""
    empty = tmp_path / "empty-data-dir"
    for argv in (
        ("partners", "create", "Acme"),
        ("partners", "list"),
        ("partners", "rotate-key", "ptn_x"),
        ("dead-letters", "list"),
        ("dead-letters", "purge", "--all", "--yes"),
        ("circuits", "reset", "http://example.com"),
        ("jobs", "show", "job_x"),
        ("status",),
    ):
        done = run_cli(*argv, "--data-dir", str(empty), cwd=tmp_path)
        assert done.returncode == 2, (argv, done.stderr)
        assert f"no embedded Redis runs for data dir {empty}" in one_line(done.stderr)


BAD_SETTINGS = [
    ({"POSTBACK_DURABILITY": "FSYNC"}, "POSTBACK_DURABILITY='FSYNC': expected one of fsync"),
    ({"POSTBACK_RATE_LIMIT": "abc"}, "POSTBACK_RATE_LIMIT='abc': expected a rate"),
    ({"POSTBACK_LOG_LEVEL": "verbose"}, "POSTBACK_LOG_LEVEL='verbose': expected one of DEBUG"),
    (
        {"POSTBACK_HANDLER_MODULES": "tests.handlers,no_such_handlers"},
        "POSTBACK_HANDLER_MODULES='no_such_handlers': expected an importable module",
    ),
]


@pytest.mark.parametrize(("env", "message"), BAD_SETTINGS)
def test_bad_settings_end_a_plain_command_at_once(env, message, redis_url, tmp_path):
    """A bad setting ends a command with one line naming the variable, exit 2."""
    done = run_cli("partners", "list", cwd=Path.cwd(), REDIS_URL=redis_url, **env)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr).startswith(f"postback: {message}")
    assert done.stdout == ""


@pytest.mark.parametrize(("env", "message"), BAD_SETTINGS)
def test_bad_settings_stop_up_before_it_starts_anything(env, message, data_dir, tmp_path):
    """`postback up` with a bad setting exits 2 with one line, starts nothing (no data dir, no
    server), and never says it is up."""
    done = subprocess.run(
        [*POSTBACK, "up", "--data-dir", str(data_dir), "--port", "1"],
        env=cli_env(**env),
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert one_line(done.stderr).startswith(f"postback: {message}")
    assert "Postback is up" not in done.stdout + done.stderr
    assert not data_dir.exists()
