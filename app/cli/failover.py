"""`postback failover`: ask Sentinel to make a replica the primary, and wait until it is.

For maintenance (upgrading or moving the primary's machine): every Postback
process follows the switch by itself (`postback.sentinel`), as after a primary's
crash, but without waiting for the Sentinels to count the primary down.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import redis
import redis.sentinel

from app.cli.common import FAILED, Refused, data_dir_option, emit, say
from postback.connection import KEEPALIVE_OPTIONS, redis_target
from postback.sentinel import Sentinels, sentinel_manager
from postback.settings import Settings, format_address

DEFAULT_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.2


def add(commands: Any) -> None:
    """Add `failover` to the `postback` parser's subcommands."""
    failover = commands.add_parser(
        "failover",
        parents=[data_dir_option()],
        help="make a replica the Redis primary now (Sentinel), and wait until it is",
    )
    failover.add_argument(
        "--timeout-seconds",
        type=_seconds,
        default=DEFAULT_TIMEOUT_SECONDS,
        help=f"how long to wait for the switch (default {DEFAULT_TIMEOUT_SECONDS:g})",
    )
    failover.set_defaults(run=_failover)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _failover(args: argparse.Namespace, settings: Settings) -> int:
    target = redis_target(settings)
    if not isinstance(target, Sentinels):
        raise Refused(
            "Sentinel is not configured: set POSTBACK_REDIS_SENTINELS "
            "(the Sentinels' host:port, comma-separated)"
        )
    manager = sentinel_manager(
        target,
        timeout_seconds=settings.redis_timeout_seconds,
        keepalive_options=KEEPALIVE_OPTIONS,
    )
    asked = _ask(manager, target.service)
    former = _primary_of(asked, target.service)
    deadline = time.monotonic() + args.timeout_seconds
    while time.monotonic() < deadline:
        try:
            now = _primary_of(asked, target.service)
        except redis.RedisError:  # the Sentinel asked is restarting: ask it again
            now = former
        if now != former and _answers_as_primary(now, target, settings.redis_timeout_seconds):
            emit(
                {
                    "service": target.service,
                    "former_primary": format_address(*former),
                    "primary": format_address(*now),
                }
            )
            return 0
        time.sleep(POLL_SECONDS)
    say(
        f"the primary of {target.service!r} is still {format_address(*former)} after "
        f"{args.timeout_seconds:g} s; see the Sentinels' logs"
    )
    return FAILED


def _ask(manager: redis.sentinel.Sentinel, service: str) -> redis.Redis:
    """The first Sentinel that takes `SENTINEL FAILOVER service` (or is already failing it
    over); `Refused` (exit 1) with the last refusal if none does."""
    refusal: Exception | None = None
    for node in manager.sentinels:
        try:
            node.execute_command("SENTINEL FAILOVER", service)
        except redis.ResponseError as exc:
            if str(exc).startswith("INPROG"):
                return node
            refusal = exc
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            refusal = exc
        else:
            return node
    if isinstance(refusal, redis.ResponseError):
        # NOGOODSLAVE (no replica in a state to take over), or an unknown service.
        raise Refused(f"Sentinel refused the failover: {refusal}", status=FAILED)
    raise refusal or redis.ConnectionError("no Sentinel configured")


def _primary_of(node: redis.Redis, service: str) -> tuple[str, int]:
    host, port = node.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", service)
    return (host.decode() if isinstance(host, bytes) else str(host)), int(port)


def _answers_as_primary(address: tuple[str, int], target: Sentinels, timeout: float) -> bool:
    """Whether the server at `address` says it is a primary (`ROLE`)."""
    client = redis.Redis(
        host=address[0],
        port=address[1],
        username=target.username,
        password=target.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    try:
        return bool(client.execute_command("ROLE")[0] in (b"master", "master"))
    except redis.RedisError:
        return False
    finally:
        client.close()
