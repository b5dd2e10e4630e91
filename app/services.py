"""What the request handlers and the command line share: the settings and the stores.

`Services.connect` is the one factory: the API builds one set per app process
(`app.create_app`), each `postback` command one set, over one Redis client.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app
from redis import Redis

from app.hub import Hub
from app.idempotency import Idempotency
from app.partners_store import PartnerStore
from app.throttle import Backlog, MemoryHeadroom, RateLimiter
from app.waits import Waits
from callbacks.ssrf import Resolver, UrlPolicy, system_resolver
from postback.connection import connect, redis_target
from postback.settings import Settings
from worker.jobs import JobStore
from worker.runtime import job_store


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: Redis
    jobs: JobStore
    partners: PartnerStore
    rate_limiter: RateLimiter
    backlog: Backlog
    idempotency: Idempotency
    url_policy: UrlPolicy
    waits: Waits
    # The process's one subscription, shared by every request that waits (`app.hub`).
    hub: Hub
    # Resolves callback host names (tests substitute their own DNS).
    resolver: Resolver
    memory: MemoryHeadroom

    @classmethod
    def connect(
        cls,
        settings: Settings,
        *,
        max_connections: int | None = None,
        resolver: Resolver = system_resolver,
    ) -> Services:
        """The services over a new client of the system's Redis (the primary Sentinel names,
        `REDIS_URL` or the data dir's embedded server), with the configured timeouts."""
        client = connect(
            redis_target(settings),
            timeout_seconds=settings.redis_timeout_seconds,
            max_connections=max_connections,
        )
        return cls.build(settings, client, resolver=resolver)

    @classmethod
    def build(
        cls, settings: Settings, client: Redis, *, resolver: Resolver = system_resolver
    ) -> Services:
        """The services over `client`."""
        hub = Hub(client)
        return cls(
            settings,
            client,
            job_store(client, settings),
            PartnerStore(client),
            RateLimiter(client, str(settings.rate_limit)),
            Backlog(client, settings.max_backlog),
            Idempotency(client, ttl_seconds=settings.idempotency_ttl_seconds),
            url_policy(settings),
            Waits(client, max_per_partner=settings.partner_max_waits, hub=hub),
            hub,
            resolver,
            MemoryHeadroom(client),
        )


def url_policy(settings: Settings) -> UrlPolicy:
    """The callback URL rules the settings describe."""
    return UrlPolicy.from_settings(settings.callback_allow_cidrs, settings.callback_require_https)


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["postback"]
