"""Configuration: named defaults, overridden by `POSTBACK_*` environment variables.

This is the only module that reads the environment. Everything else receives a
`Settings` value (the Flask app keeps it in `app.config["SETTINGS"]`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from postback.errors import Misconfigured

PREFIX = "POSTBACK_"
# The deepest `max_json_depth` allowed. A stored record wraps a body a few levels deeper
# (a job's result inside its webhook, inside a listing), and Python's JSON gives out near
# a thousand levels: a ceiling well below that keeps everything accepted readable.
MAX_JSON_DEPTH_CEILING = 256


class SettingsError(Misconfigured, ValueError):
    """An environment variable holds a value of the wrong shape."""

    def __init__(self, name: str, value: str, expected: str) -> None:
        super().__init__(f"{name}={value!r}: expected {expected}")
        self.name = name
        self.value = value
        self.expected = expected


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting Postback reads, with its default. The README lists them all."""

    # Where Redis lives. Unset: the embedded server of `data_dir`.
    redis_url: str | None = None
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
    log_level: str = "INFO"
    api_workers: int = 2
    # Open connections each API process serves at once (waiting ones included).
    api_worker_connections: int = 4096
    # A connection has this long to send a complete request head; an idle
    # kept-alive connection is closed after `api_keepalive_seconds`.
    api_header_timeout_seconds: float = 10.0
    api_keepalive_seconds: float = 5.0
    # Connect and command timeout of every Redis client (but the one RQ blocks on, which
    # waits on the queue longer than this): a frozen or lost server fails fast.
    redis_timeout_seconds: float = 2.0
    # Seconds a partner should wait before polling a freshly accepted job.
    poll_after_seconds: int = 1
    # Delivery.
    # The hard deadline of one delivery attempt, the whole exchange on the wall clock.
    delivery_timeout_seconds: float = 15.0
    # Attempts in flight per delivery process, and the most one destination may get.
    delivery_concurrency: int = 2048
    delivery_per_destination: int = 48
    # Deliveries per second per destination, across every delivery process; unset: unlimited.
    delivery_max_rate: float | None = None
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 36_000.0
    retry_max_attempts: int = 22
    retry_window_seconds: float = 259_200.0
    # How often an idle delivery dispatcher looks for due deliveries.
    delivery_poll_seconds: float = 0.05
    breaker_threshold: int = 5
    breaker_cooldown_seconds: float = 30.0
    # How long a rotated-out signing secret keeps signing beside the new one.
    secret_grace_seconds: float = 86_400.0
    # Dead letters older than this are removed (and the removal logged); 0 keeps them.
    dead_letter_retention_seconds: float = 0.0
    # Callback URLs: CIDRs exempt from the SSRF rules (local development, tests), https only.
    callback_allow_cidrs: tuple[str, ...] = ()
    callback_require_https: bool = False
    # Job lifecycle.
    durability: str = "fsync"
    job_max_attempts: int = 3
    job_lease_seconds: float = 10.0
    job_max_timeout_seconds: int = 86_400
    job_retry_base_seconds: float = 1.0
    job_retry_max_seconds: float = 300.0
    job_retention_seconds: float = 7 * 86_400
    inline_result_bytes: int = 65_536
    result_url_ttl_seconds: int = 86_400
    # Limits on partner requests.
    max_body_bytes: int = 1_048_576
    # Arrays and objects nested in a JSON body, at most (1 to MAX_JSON_DEPTH_CEILING).
    max_json_depth: int = 64
    rate_limit: str = "200/second"
    max_backlog: int = 100_000
    # Per partner: queued jobs, and the input + result bytes its retained jobs hold.
    partner_max_backlog: int = 10_000
    partner_max_retained_bytes: int = 1_073_741_824
    idempotency_ttl_seconds: int = 86_400
    # Long-polls (`?wait=`) one partner may hold open at once, across API processes.
    partner_max_waits: int = 100

    def __post_init__(self) -> None:
        if not 1 <= self.max_json_depth <= MAX_JSON_DEPTH_CEILING:
            raise SettingsError(
                self.env_name("max_json_depth"),
                str(self.max_json_depth),
                f"an integer from 1 to {MAX_JSON_DEPTH_CEILING}",
            )

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
    return raw
