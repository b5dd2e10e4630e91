"""Settings are read and checked once, into typed values; the policies carry their defaults."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from app import create_app
from app.server import _Gunicorn, options
from callbacks.breaker import DEFAULT_BREAKER_SETTINGS
from callbacks.policy import DEFAULT_RETRY_POLICY
from postback.settings import (
    Durability,
    LogLevel,
    RateLimit,
    Settings,
    SettingsError,
    check_handler_modules,
    redacted_url,
)
from worker import runtime
from worker.process import breaker, retry_policy


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("POSTBACK_DURABILITY", "FSYNC", "one of fsync, everysec, replicated"),
        ("POSTBACK_DURABILITY", "always", "one of fsync, everysec, replicated"),
        ("POSTBACK_DURABILITY_REPLICAS", "0", "an integer from 1 to 16"),
        ("POSTBACK_DURABILITY_REPLICAS", "17", "an integer from 1 to 16"),
        ("POSTBACK_DURABILITY_REPLICAS", "two", "an integer"),
        ("POSTBACK_RATE_LIMIT", "abc", "a rate such as 200/second"),
        ("POSTBACK_RATE_LIMIT", "0/second", "a rate such as 200/second"),
        ("POSTBACK_LOG_LEVEL", "verbose", "one of DEBUG, INFO"),
        ("POSTBACK_API_WORKERS", "0", "at least 1"),
        ("POSTBACK_JOB_MAX_ATTEMPTS", "0", "at least 1"),
        ("POSTBACK_REDIS_TIMEOUT_SECONDS", "0", "more than 0"),
        ("POSTBACK_RETRY_BASE_SECONDS", "-1", "more than 0"),
        ("POSTBACK_BREAKER_THRESHOLD", "0", "at least 1"),
        ("POSTBACK_DELIVERY_MAX_RATE", "0", "more than 0"),
        ("POSTBACK_SECRET_GRACE_SECONDS", "-5", "at least 0"),
        ("POSTBACK_CALLBACK_ALLOW_CIDRS", "nonsense", "CIDR networks"),
        ("POSTBACK_PUBLIC_URL", "api.example.com", "an http(s) URL"),
        ("POSTBACK_MAX_JSON_DEPTH", "0", "an integer from 1 to 256"),
    ],
)
def test_a_bad_value_is_an_error_naming_its_variable(name, value, expected):
    """A value of the wrong shape or out of range is refused, naming the variable and what
    was expected."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    assert refused.value.name == name
    assert str(refused.value).startswith(f"{name}={value!r}: expected ")
    assert expected in str(refused.value)


def test_choices_and_rates_are_typed_values():
    """Durability and log level are enums, the rate limit a parsed value; lower-case log
    levels are accepted, durability only as the exact lower-case names."""
    read = Settings.from_env(
        {
            "POSTBACK_DURABILITY": "everysec",
            "POSTBACK_LOG_LEVEL": "debug",
            "POSTBACK_RATE_LIMIT": "10/2 minutes",
        }
    )
    assert read.durability is Durability.EVERYSEC
    assert read.log_level is LogLevel.DEBUG
    assert read.rate_limit == RateLimit(10, "minute", 2)
    assert read.rate_limit.period_seconds == 120
    assert str(read.rate_limit) == "10/2 minutes"
    assert str(Settings().rate_limit) == "200/second"
    assert Settings().durability is Durability.FSYNC
    replicated = Settings.from_env(
        {"POSTBACK_DURABILITY": "replicated", "POSTBACK_DURABILITY_REPLICAS": "2"}
    )
    assert replicated.durability is Durability.REPLICATED
    assert replicated.durability_replicas == 2
    assert Settings().durability_replicas == 1


def test_values_given_in_code_are_checked_too():
    """Settings made in code (tests, benchmarks) parse strings and refuse bad values alike."""
    assert Settings(durability="everysec").durability is Durability.EVERYSEC  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        dataclasses.replace(Settings(), durability="FSYNC")  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        Settings(api_workers=0)
    again = Settings(**dataclasses.asdict(Settings(rate_limit="5/minute")))  # type: ignore[arg-type]
    assert again.rate_limit == RateLimit(5, "minute")


def test_an_unknown_redis_url_scheme_is_refused_without_its_password():
    """A REDIS_URL that is no Redis URL is refused; the message does not show its password."""
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"REDIS_URL": "http://user:hunter2@example.com:6379"})
    assert "hunter2" not in str(refused.value) and "REDIS_URL" in str(refused.value)
    assert redacted_url("redis://user:hunter2@h:1/0") == "redis://user:***@h:1/0"
    assert redacted_url("redis://h:1/0") == "redis://h:1/0"


def test_handler_modules_that_cannot_be_imported_are_refused(tmp_path: Path):
    """A handler module that is missing or fails to import is a SettingsError naming it."""
    (tmp_path / "broken_handlers.py").write_text("raise RuntimeError('half written')\n")
    path = [str(tmp_path)]
    check_handler_modules(Settings(handler_modules=("json",)), path=path)
    for module, reason in [
        ("no_such_handlers", "ModuleNotFoundError"),
        ("broken_handlers", "RuntimeError: half written"),
    ]:
        with pytest.raises(SettingsError) as refused:
            check_handler_modules(Settings(handler_modules=("json", module)), path=path)
        assert refused.value.name == "POSTBACK_HANDLER_MODULES"
        assert refused.value.value == module
        assert reason in str(refused.value)


def test_the_policies_carry_the_defaults_and_settings_only_override():
    """Unset, the retry and breaker settings leave the policies' own defaults; set, they win."""
    defaults = Settings()
    assert defaults.retry_base_seconds is None and defaults.breaker_threshold is None
    policy = retry_policy(defaults)
    assert dataclasses.replace(policy, timeout_seconds=DEFAULT_RETRY_POLICY.timeout_seconds) == (
        DEFAULT_RETRY_POLICY
    )
    assert breaker(defaults, None).settings.threshold == DEFAULT_BREAKER_SETTINGS.threshold  # type: ignore[arg-type]
    set_ = Settings.from_env(
        {"POSTBACK_RETRY_MAX_ATTEMPTS": "4", "POSTBACK_BREAKER_THRESHOLD": "9"}
    )
    assert retry_policy(set_).max_attempts == 4
    assert retry_policy(set_).base_seconds == DEFAULT_RETRY_POLICY.base_seconds
    assert breaker(set_, None).settings.threshold == 9  # type: ignore[arg-type]


def test_an_unconfigured_worker_runtime_is_an_error(monkeypatch):
    """Job code that asks for the worker's settings before they were configured fails loudly
    instead of running on defaults."""
    monkeypatch.setattr(runtime, "_settings", [])
    with pytest.raises(RuntimeError, match="configure"):
        runtime.settings()


def test_the_app_takes_the_settings_it_is_given(settings, redis_client, monkeypatch):
    """`create_app(settings=…)` uses those settings and does not read the environment again."""
    monkeypatch.setenv("POSTBACK_DURABILITY", "FSYNC")
    monkeypatch.setenv("POSTBACK_ADMIN_TOKEN", "from-the-environment")
    app = create_app(settings=settings, client=redis_client)
    assert app.config["SETTINGS"] is settings
    tested = create_app({"max_body_bytes": 10}, settings=settings, client=redis_client)
    assert tested.config["SETTINGS"].max_body_bytes == 10
    assert tested.config["SETTINGS"].admin_token == settings.admin_token


def test_gunicorn_builds_the_app_from_the_servers_settings(settings, monkeypatch):
    """The API process builds its app from the settings `serve()` was given."""
    monkeypatch.setenv("POSTBACK_LOG_LEVEL", "verbose")
    server = _Gunicorn(options(settings, host="127.0.0.1", port=1), settings)
    assert server.load().config["SETTINGS"] is settings
