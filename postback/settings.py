"""Configuration: named defaults, overridden by `POSTBACK_*` environment variables.

This is the only module that reads the environment. Everything else receives a
`Settings` value (the Flask app keeps it in `app.config["SETTINGS"]`). Settings
are read and checked once, at start: a value of the wrong shape or out of range
is a `SettingsError` naming its variable, raised by `Settings.from_env` (or by
`Settings(...)` itself, for values given in code); `check_handler_modules`
imports the handler modules the settings name.

The delivery retry policy and the circuit breaker carry their own defaults
(`callbacks.policy.RetryPolicy`, `callbacks.breaker.BreakerSettings`); their
settings here are overrides only (None: the policy's default), see `overrides`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from postback.errors import Misconfigured

PREFIX = "POSTBACK_"
# The deepest `max_json_depth` allowed. A stored record wraps a body a few levels deeper
# (a job's result inside its webhook, inside a listing), and Python's JSON gives out near
# a thousand levels: a ceiling well below that keeps everything accepted readable.
MAX_JSON_DEPTH_CEILING = 256
# How long importing the handler modules may take when they are checked at start.
HANDLER_CHECK_TIMEOUT_SECONDS = 60.0
# The most replicas `replicated` durability may wait for: more than any Sentinel set
# holds, few enough that a typo (100 for 10) is refused at start, not a 503 per job.
MAX_DURABILITY_REPLICAS = 16


class SettingsError(Misconfigured, ValueError):
    """An environment variable holds a value of the wrong shape."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


class Durability(StrEnum):
    """When a submission is acknowledged: after Redis's AOF is fsynced (on the primary,
    or on the primary and `durability_replicas` replicas), or at once."""

    FSYNC = "fsync"
    EVERYSEC = "everysec"
    REPLICATED = "replicated"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    CRITICAL = "CRITICAL"


_RATE = re.compile(
    r"(?P<amount>[0-9]+)\s*(?:/|per)\s*(?P<multiples>[0-9]+)?\s*"
    r"(?P<unit>second|minute|hour|day)s?",
    re.IGNORECASE,
)
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}


@dataclass(frozen=True)
class RateLimit:
    """`amount` requests per `multiples` `unit`s (`200/second`, `10/2 minutes`)."""

    amount: int
    unit: str
    multiples: int = 1

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """The rate `text` states; ValueError unless it is `N/unit` or `N/M units`."""
        found = _RATE.fullmatch(text.strip())
        if found is None:
            raise ValueError(f"not a rate: {text!r}")
        amount, multiples = int(found["amount"]), int(found["multiples"] or 1)
        if amount < 1 or multiples < 1:
            raise ValueError(f"not a rate: {text!r}")
        return cls(amount, found["unit"].lower(), multiples)

    @property
    def period_seconds(self) -> int:
        return self.multiples * _UNIT_SECONDS[self.unit]

    def __str__(self) -> str:
        if self.multiples == 1:
            return f"{self.amount}/{self.unit}"
        return f"{self.amount}/{self.multiples} {self.unit}s"


# Lower bounds of numeric settings: (bound, inclusive). A field not listed has none.
_AT_LEAST_ONE = (1, True)
_POSITIVE = (0, False)
_NOT_NEGATIVE = (0, True)


def _bound(kind: tuple[int, bool]) -> dict[str, Any]:
    return {"bound": kind}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting Postback reads, with its default. The README lists them all."""

    # Where Redis lives. Unset: the embedded server of `data_dir`.
    redis_url: str | None = None
    # Sentinels (`host:port`) that name the primary of `redis_sentinel_service`: set,
    # they win over `redis_url` (which then gives only a user, password and database)
    # and the embedded server.
    redis_sentinels: tuple[str, ...] = ()
    redis_sentinel_service: str = "postback"
    # The data nodes' password (else the one in `redis_url`), and the Sentinels'.
    redis_password: str | None = field(default=None, repr=False)
    redis_sentinel_password: str | None = field(default=None, repr=False)
    data_dir: Path = field(default_factory=lambda: Path(".postback"))
    # The embedded server's `maxmemory` (it never evicts: `noeviction`).
    redis_maxmemory: str = "1gb"
    admin_token: str | None = None
    # Bearer token `GET /metrics` requires; unset: /metrics is open.
    metrics_token: str | None = None
    # Base URL used in `status_url` and `Location`; unset: the request's own host.
    public_url: str | None = None
    # Without `public_url`, the Hosts whose requests may become the base of those links
    # (`name`, `name:port`, `.domain` for its subdomains too, `*` any); others are a 400.
    allowed_hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "[::1]")
    handler_modules: tuple[str, ...] = ()
    log_level: LogLevel = LogLevel.INFO
    api_workers: int = field(default=2, metadata=_bound(_AT_LEAST_ONE))
    # Open connections each API process serves at once (waiting ones included).
    api_worker_connections: int = field(default=4096, metadata=_bound(_AT_LEAST_ONE))
    # A connection has this long to send a complete request head; an idle
    # kept-alive connection is closed after `api_keepalive_seconds`.
    api_header_timeout_seconds: float = field(default=10.0, metadata=_bound(_POSITIVE))
    api_keepalive_seconds: float = field(default=5.0, metadata=_bound(_POSITIVE))
    # A request's body must arrive whole within `api_body_timeout_seconds` of its head
    # (else 408); a client that does not take each 64 KiB of its answer within
    # `api_send_timeout_seconds` is disconnected (a stream it stopped reading ends).
    api_body_timeout_seconds: float = field(default=30.0, metadata=_bound(_POSITIVE))
    api_send_timeout_seconds: float = field(default=30.0, metadata=_bound(_POSITIVE))
    # Connect and command timeout of every Redis client (but the one RQ blocks on, which
    # waits on the queue longer than this): a frozen or lost server fails fast.
    redis_timeout_seconds: float = field(default=2.0, metadata=_bound(_POSITIVE))
    # Seconds a partner should wait before polling a freshly accepted job.
    poll_after_seconds: int = field(default=1, metadata=_bound(_NOT_NEGATIVE))
    # Delivery.
    # The hard deadline of one delivery attempt, the whole exchange on the wall clock.
    delivery_timeout_seconds: float = field(default=15.0, metadata=_bound(_POSITIVE))
    # Attempts in flight per delivery process, and the most one destination may get.
    delivery_concurrency: int = field(default=2048, metadata=_bound(_AT_LEAST_ONE))
    delivery_per_destination: int = field(default=48, metadata=_bound(_AT_LEAST_ONE))
    # Deliveries per second per destination, across every delivery process; unset: unlimited.
    delivery_max_rate: float | None = field(default=None, metadata=_bound(_POSITIVE))
    # Overrides of the retry policy's defaults (`callbacks.policy.RetryPolicy`).
    retry_base_seconds: float | None = field(default=None, metadata=_bound(_POSITIVE))
    retry_max_seconds: float | None = field(default=None, metadata=_bound(_POSITIVE))
    retry_max_attempts: int | None = field(default=None, metadata=_bound(_AT_LEAST_ONE))
    retry_window_seconds: float | None = field(default=None, metadata=_bound(_POSITIVE))
    # How often an idle delivery dispatcher looks for due deliveries.
    delivery_poll_seconds: float = field(default=0.05, metadata=_bound(_POSITIVE))
    # Overrides of the breaker's defaults (`callbacks.breaker.BreakerSettings`).
    breaker_threshold: int | None = field(default=None, metadata=_bound(_AT_LEAST_ONE))
    breaker_cooldown_seconds: float | None = field(default=None, metadata=_bound(_POSITIVE))
    # How long a rotated-out signing secret keeps signing beside the new one.
    secret_grace_seconds: float = field(default=86_400.0, metadata=_bound(_NOT_NEGATIVE))
    # Dead letters older than this are removed (and the removal logged); 0 keeps them.
    dead_letter_retention_seconds: float = field(default=0.0, metadata=_bound(_NOT_NEGATIVE))
    # Callback URLs: CIDRs exempt from the SSRF rules (local development, tests), https only.
    callback_allow_cidrs: tuple[str, ...] = ()
    callback_require_https: bool = False
    # Job lifecycle.
    durability: Durability = Durability.FSYNC
    # In `replicated` durability, the replicas that must have fsynced a job before its 202
    # (1 to MAX_DURABILITY_REPLICAS).
    durability_replicas: int = 1
    job_max_attempts: int = field(default=3, metadata=_bound(_AT_LEAST_ONE))
    job_lease_seconds: float = field(default=10.0, metadata=_bound(_POSITIVE))
    job_max_timeout_seconds: int = field(default=86_400, metadata=_bound(_AT_LEAST_ONE))
    job_retry_base_seconds: float = field(default=1.0, metadata=_bound(_POSITIVE))
    job_retry_max_seconds: float = field(default=300.0, metadata=_bound(_POSITIVE))
    job_retention_seconds: float = field(default=7 * 86_400, metadata=_bound(_NOT_NEGATIVE))
    inline_result_bytes: int = field(default=65_536, metadata=_bound(_NOT_NEGATIVE))
    result_url_ttl_seconds: int = field(default=86_400, metadata=_bound(_AT_LEAST_ONE))
    # Limits on partner requests.
    max_body_bytes: int = field(default=1_048_576, metadata=_bound(_AT_LEAST_ONE))
    # Arrays and objects nested in a JSON body, at most (1 to MAX_JSON_DEPTH_CEILING).
    max_json_depth: int = 64
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(200, "second"))
    max_backlog: int = field(default=100_000, metadata=_bound(_NOT_NEGATIVE))
    # Per partner: queued jobs, and the input + result bytes its retained jobs hold.
    partner_max_backlog: int = field(default=10_000, metadata=_bound(_AT_LEAST_ONE))
    partner_max_retained_bytes: int = field(default=1_073_741_824, metadata=_bound(_AT_LEAST_ONE))
    idempotency_ttl_seconds: int = field(default=86_400, metadata=_bound(_AT_LEAST_ONE))
    # Long-polls (`?wait=`) one partner may hold open at once, across API processes.
    partner_max_waits: int = field(default=100, metadata=_bound(_NOT_NEGATIVE))
    # The console and the portal: how long a sign-in lasts, and a portal link's validity.
    console_session_seconds: float = field(default=8 * 3600.0, metadata=_bound(_POSITIVE))
    portal_link_ttl_seconds: int = field(default=3600, metadata=_bound(_AT_LEAST_ONE))

    def __post_init__(self) -> None:
        # Values given in code (tests, benchmarks) are held to the same rules as the
        # environment's: a string for a choice or a rate is parsed here.
        for name, kind, parse in (
            ("durability", Durability, Durability),
            ("log_level", LogLevel, lambda text: LogLevel(text.upper())),
            ("rate_limit", RateLimit, RateLimit.parse),
        ):
            value = getattr(self, name)
            if isinstance(value, dict) and kind is RateLimit:
                # `dataclasses.asdict` of settings, given back (tests do).
                value = str(RateLimit(**value))
            if not isinstance(value, kind):
                try:
                    object.__setattr__(self, name, parse(str(value)))
                except ValueError:
                    raise SettingsError(self.env_name(name), str(value), _EXPECTED[name]) from None
        if not 1 <= self.max_json_depth <= MAX_JSON_DEPTH_CEILING:
            raise SettingsError(
                self.env_name("max_json_depth"),
                str(self.max_json_depth),
                f"an integer from 1 to {MAX_JSON_DEPTH_CEILING}",
            )
        if not 1 <= self.durability_replicas <= MAX_DURABILITY_REPLICAS:
            raise SettingsError(
                self.env_name("durability_replicas"),
                str(self.durability_replicas),
                f"an integer from 1 to {MAX_DURABILITY_REPLICAS}",
            )
        for f in dataclasses.fields(self):
            if "bound" in f.metadata:
                _check_bound(self.env_name(f.name), getattr(self, f.name), f.metadata["bound"])
        for text in self.callback_allow_cidrs:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise SettingsError(
                    self.env_name("callback_allow_cidrs"), text, "CIDR networks, comma-separated"
                ) from None
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise SettingsError(self.env_name("public_url"), self.public_url, "an http(s) URL")
        if self.redis_url is not None and urlsplit(self.redis_url).scheme not in (
            "redis",
            "rediss",
            "unix",
        ):
            raise SettingsError(
                "REDIS_URL",
                redacted_url(self.redis_url),
                "a redis://, rediss:// or unix:// URL",
            )
        for text in self.redis_sentinels:
            try:
                parse_address(text)
            except ValueError:
                raise SettingsError(
                    self.env_name("redis_sentinels"),
                    text,
                    "host:port pairs, comma-separated, each port 1 to 65535",
                ) from None
        if not re.fullmatch(r"[A-Za-z0-9._-]+", self.redis_sentinel_service):
            raise SettingsError(
                self.env_name("redis_sentinel_service"),
                self.redis_sentinel_service,
                "a Sentinel service name (letters, digits, '.', '_', '-')",
            )

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """`redis_sentinels` as (host, port) pairs."""
        return tuple(parse_address(text) for text in self.redis_sentinels)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then the environment, then explicit `overrides` (tests)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = "REDIS_URL" if f.name == "redis_url" else PREFIX + f.name.upper()
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(name, raw.strip(), f.type)
        values.update(overrides)
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)

    def env_name(self, field_name: str) -> str:
        """The environment variable that sets `field_name`."""
        return "REDIS_URL" if field_name == "redis_url" else PREFIX + field_name.upper()

    def overrides(self, prefix: str) -> dict[str, Any]:
        """The settings named `prefix…` that are set, by the rest of their name: what a
        policy object is built with (`RetryPolicy(**settings.overrides("retry_"))`)."""
        return {
            f.name.removeprefix(prefix): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name.startswith(prefix) and getattr(self, f.name) is not None
        }


_EXPECTED = {
    "durability": "one of " + ", ".join(Durability),
    "log_level": "one of " + ", ".join(LogLevel) + " (any case)",
    "rate_limit": "a rate such as 200/second or 1000/5 minutes (second, minute, hour, day)",
}


def _check_bound(name: str, value: Any, bound: tuple[int, bool]) -> None:
    if value is None:
        return
    low, inclusive = bound
    if value >= low if inclusive else value > low:
        return
    expected = f"{'at least' if inclusive else 'more than'} {low}"
    raise SettingsError(name, f"{value:g}" if isinstance(value, float) else str(value), expected)


def _parse(name: str, raw: str, annotation: Any) -> Any:
    kind = str(annotation)
    if "tuple" in kind:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    if "Path" in kind:
        return Path(raw)
    if kind.startswith("int"):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(name, raw, "an integer") from None
    if kind.startswith("float"):
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(name, raw, "a number") from None
    if kind.startswith("bool"):
        if raw.lower() in {"1", "true", "yes", "on"}:
            return True
        if raw.lower() in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(name, raw, "true or false")
    # Choices and rates are parsed by `Settings.__post_init__`.
    return raw


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port` for an IPv6 address) as (host, port); ValueError unless
    there is a host and a port from 1 to 65535."""
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or any(c.isspace() or c in "/@[]" for c in host):
        raise ValueError(f"not host:port: {text!r}")
    if ":" in host:
        ipaddress.IPv6Address(host)  # ValueError unless one (given in brackets)
        if not text.strip().startswith("["):
            raise ValueError(f"an IPv6 address goes in brackets: {text!r}")
    if not port.isdigit() or not 1 <= int(port) <= 65_535:
        raise ValueError(f"not a port: {text!r}")
    return host, int(port)


def format_address(host: str, port: int) -> str:
    """(host, port) as `parse_address` reads it back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def redacted_url(url: str) -> str:
    """`url` without its password (`redis://user:***@host:port/0`), to be shown or logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


_IMPORT_ALL = (
    "import importlib, json, sys\n"
    "sys.path[:] = json.loads(sys.argv[1])\n"
    "for name in sys.argv[2:]:\n"
    "    try:\n"
    "        importlib.import_module(name)\n"
    "    except BaseException as exc:\n"
    "        print(name, type(exc).__name__ + ': ' + str(exc), sep='\\n')\n"
    "        sys.exit(3)\n"
)


def check_handler_modules(settings: Settings, *, path: Iterable[str] | None = None) -> None:
    """SettingsError unless every module of `POSTBACK_HANDLER_MODULES` imports.

    They are imported in a fresh interpreter with this one's import path: importing
    them here could run their code before `postback serve`'s event loop patches the
    standard library, and leave a failed import half done in `sys.modules`.
    """
    modules = settings.handler_modules
    if not modules:
        return
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, json.dumps(list(path or sys.path)), *modules],
        capture_output=True,
        text=True,
        timeout=HANDLER_CHECK_TIMEOUT_SECONDS,
        check=False,
    )
    if done.returncode == 0:
        return
    lines = done.stdout.splitlines()
    if done.returncode == 3 and len(lines) >= 2:
        module, reason = lines[0], lines[1]
    else:
        module = ",".join(settings.handler_modules)
        reason = (done.stderr.strip().splitlines() or ["the import did not finish"])[-1]
    raise SettingsError(
        settings.env_name("handler_modules"), module, f"an importable module ({reason})"
    )
