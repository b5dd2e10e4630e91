"""A worker process: an RQ worker (with the scheduler) and a delivery dispatcher beside it."""

from __future__ import annotations

import logging
import threading

import redis
from rq import Queue, SimpleWorker

from callbacks.breaker import BreakerSettings, CircuitBreaker
from callbacks.dispatcher import Dispatcher
from callbacks.outbox import Outbox
from callbacks.policy import RetryPolicy
from callbacks.secrets import SecretStore
from callbacks.sender import Sender
from callbacks.ssrf import UrlPolicy
from postback import __version__
from postback.settings import Settings
from worker import reaper, registry, runtime
from worker.jobs import PRIORITIES, QUEUES

log = logging.getLogger(__name__)


def retry_policy(settings: Settings) -> RetryPolicy:
    """The delivery retry policy the settings describe."""
    return RetryPolicy(
        base_seconds=settings.retry_base_seconds,
        max_seconds=settings.retry_max_seconds,
        max_attempts=settings.retry_max_attempts,
        window_seconds=settings.retry_window_seconds,
        timeout_seconds=settings.delivery_timeout_seconds,
    )


def dispatcher(settings: Settings, client: redis.Redis) -> Dispatcher:
    """The delivery dispatcher the settings describe."""
    return Dispatcher(
        Outbox(client),
        SecretStore(client),
        Sender(
            timeout_seconds=settings.delivery_timeout_seconds,
            user_agent=f"Postback/{__version__}",
            url_policy=UrlPolicy.from_settings(
                settings.callback_allow_cidrs, settings.callback_require_https
            ),
        ),
        breaker(settings, client),
        policy=retry_policy(settings),
        concurrency=settings.delivery_concurrency,
        per_destination=settings.delivery_per_destination,
        poll_seconds=settings.delivery_poll_seconds,
        dead_letter_retention_seconds=settings.dead_letter_retention_seconds,
    )


def breaker(settings: Settings, client: redis.Redis) -> CircuitBreaker:
    """The circuit breaker the settings describe."""
    return CircuitBreaker(
        client,
        BreakerSettings(
            threshold=settings.breaker_threshold,
            cooldown_seconds=settings.breaker_cooldown_seconds,
            probe_lease_seconds=settings.delivery_timeout_seconds + 5,
        ),
    )


def run(
    settings: Settings,
    client: redis.Redis,
    *,
    queue_client: redis.Redis | None = None,
    burst: bool = False,
) -> None:
    """Work jobs and deliver webhooks until SIGTERM/SIGINT (or, with `burst`, until idle).

    Jobs run in this process (RQ's SimpleWorker: no fork per job); deliveries run
    on a thread pool beside it. `queue_client` is the connection RQ blocks on
    while it waits for jobs (default: `client`).
    """
    registry.load(settings.handler_modules)
    runtime.configure(settings)
    stop = threading.Event()
    delivery = threading.Thread(
        target=dispatcher(settings, client).run, args=(stop,), name="dispatcher", daemon=True
    )
    reaping = threading.Thread(
        target=reaper.run,
        args=(runtime.job_store(client, settings), settings, stop),
        name="reaper",
        daemon=True,
    )
    delivery.start()
    reaping.start()
    try:
        queue_client = queue_client or client
        SimpleWorker(queues(queue_client), connection=queue_client).work(
            burst=burst, with_scheduler=True, logging_level=settings.log_level
        )
    finally:
        stop.set()
        delivery.join(timeout=settings.delivery_timeout_seconds + 5)


def queues(client: redis.Redis) -> list[Queue]:
    """The job queues, highest priority first: a worker always takes `high` work first."""
    return [Queue(QUEUES[priority], connection=client) for priority in PRIORITIES]
