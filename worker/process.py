"""A worker: an RQ worker in this process, a delivery process and a scheduler process beside it."""

from __future__ import annotations

import logging
import os
import signal
import threading

import redis
from rq import Queue

from callbacks.breaker import BreakerSettings, CircuitBreaker
from callbacks.dispatcher import Dispatcher
from callbacks.outbox import Outbox
from callbacks.policy import RetryPolicy
from callbacks.secrets import SecretStore
from callbacks.sender import Sender
from callbacks.ssrf import UrlPolicy
from postback import WEBHOOK_USER_AGENT
from postback.children import Children, forks_die_with_parent, python_command
from postback.connection import Target, async_twin, target_environ
from postback.faults import FaultWatch, patiently
from postback.resources import raise_file_limit
from postback.settings import Settings
from worker import liveness, reaper, registry, runtime
from worker.deliveries import JobTimeline
from worker.entry import PARENT_PID_ENV
from worker.jobs import PRIORITIES, QUEUES
from worker.patient import PatientWorker

log = logging.getLogger(__name__)

SUPERVISE_EVERY_SECONDS = 0.5


def retry_policy(settings: Settings) -> RetryPolicy:
    """The delivery retry policy the settings describe."""
    return RetryPolicy(
        **settings.overrides("retry_"), timeout_seconds=settings.delivery_timeout_seconds
    )


def outbox(client: redis.Redis) -> Outbox:
    """Postback's outbox: deliveries record the job's timeline and the metrics."""
    return Outbox(client, observer=JobTimeline())


def dispatcher(settings: Settings, client: redis.Redis) -> Dispatcher:
    """The delivery dispatcher the settings describe.

    Its asyncio Redis client talks to the same server as `client`, with the same
    timeouts, through a bounded pool (attempts in flight share a few connections).
    """
    return Dispatcher(
        outbox(client),
        SecretStore(client),
        Sender(
            timeout_seconds=settings.delivery_timeout_seconds,
            user_agent=WEBHOOK_USER_AGENT,
            url_policy=UrlPolicy.from_settings(
                settings.callback_allow_cidrs, settings.callback_require_https
            ),
        ),
        breaker(settings, client),
        aclient=async_twin(client, max_connections=ASYNC_REDIS_CONNECTIONS),
        policy=retry_policy(settings),
        concurrency=settings.delivery_concurrency,
        per_destination=settings.delivery_per_destination,
        max_rate_per_second=settings.delivery_max_rate,
        poll_seconds=settings.delivery_poll_seconds,
        dead_letter_retention_seconds=settings.dead_letter_retention_seconds,
    )


ASYNC_REDIS_CONNECTIONS = 16


def breaker(settings: Settings, client: redis.Redis) -> CircuitBreaker:
    """The circuit breaker the settings describe."""
    return CircuitBreaker(
        client,
        BreakerSettings(
            **settings.overrides("breaker_"),
            probe_lease_seconds=settings.delivery_timeout_seconds + 5,
        ),
    )


def run(
    settings: Settings,
    client: redis.Redis,
    *,
    target: Target,
    queue_client: redis.Redis | None = None,
    burst: bool = False,
) -> None:
    """Work jobs until SIGTERM/SIGINT (or, with `burst`, until idle), with its child processes.

    Jobs run in this process (RQ's SimpleWorker: no fork per job); webhooks are
    delivered by a delivery process and RQ's scheduled jobs moved by a scheduler
    process (`worker.scheduler`), children kept running beside it (restarted if
    they die, stopped when this process stops, and by the kernel if this process
    is killed), so that none waits on another's interpreter lock and none holds
    a copy of this process's connections. `target` is where they find Redis.
    `queue_client` is the connection RQ blocks on while it waits for jobs and
    keeps its own records with (default: `client`); the job store, the lease
    renewals, the heartbeat and the reaper use `client`. Redis faults are waited
    out, not fatal.
    """
    registry.load(settings.handler_modules)
    runtime.configure(settings, client=client)
    # Whatever this process forks (a handler's multiprocessing, say) dies with it too.
    forks_die_with_parent()
    stop = threading.Event()
    children = Children(
        {**os.environ, **target_environ(target), PARENT_PID_ENV: str(os.getpid())},
        stop_seconds=settings.delivery_timeout_seconds + 5,
    )
    children.add("delivery process", python_command("worker.deliver"))
    if not burst:
        # In a burst, RQ moves the scheduled jobs once, in this process, and forks nothing.
        children.add("scheduler", python_command("worker.scheduler"))
    # Started from this thread, and restarted from one that lives as long as the
    # process: the kernel's death signal follows the thread that started a child.
    children.start()
    supervising = threading.Thread(
        target=_supervise, args=(children, stop), name="children", daemon=True
    )
    reaping = threading.Thread(
        target=reaper.run,
        args=(runtime.job_store(client, settings), settings, stop),
        name="reaper",
        daemon=True,
    )
    supervising.start()
    reaping.start()
    beating: threading.Thread | None = None
    try:
        queue_client = queue_client or client
        # RQ's worker talks to Redis as it is made: wait for a Redis that answers.
        patiently(
            queue_client.ping,
            watch=FaultWatch("worker", logger=log),
            timeout_seconds=settings.redis_timeout_seconds,
        )
        worker = PatientWorker(
            queues(queue_client),
            connection=queue_client,
            timeout_seconds=settings.redis_timeout_seconds,
        )
        beating = threading.Thread(
            target=liveness.run, args=(client, worker.name, stop), name="liveness", daemon=True
        )
        beating.start()
        worker.work(burst=burst, with_scheduler=burst, logging_level=settings.log_level)
    finally:
        stop.set()
        supervising.join()
        children.stop()
        if beating is not None:
            beating.join(timeout=settings.redis_timeout_seconds * 2)


def _supervise(children: Children, stop: threading.Event) -> None:
    while not stop.wait(SUPERVISE_EVERY_SECONDS):
        children.supervise()


def deliver(settings: Settings, client: redis.Redis) -> int:
    """Deliver webhooks until SIGTERM/SIGINT; attempts in flight finish first. Returns an exit code.

    Started by a worker, it stops when that worker dies (`worker.entry.deliver`).
    """
    # The signals are taken by sigwait in this thread, not by a handler, which
    # could interrupt the dispatcher's own wait on `stop` and deadlock on its lock.
    stopping = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stopping)
    stop = threading.Event()
    crashed = threading.Event()

    raise_file_limit()

    def delivering() -> None:
        try:
            dispatcher(settings, client).run(stop)
        except BaseException:
            log.exception("the dispatcher crashed; this delivery process exits")
            crashed.set()
            os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=delivering, name="dispatcher")
    thread.start()
    signal.sigwait(stopping)
    stop.set()
    thread.join()
    return 1 if crashed.is_set() else 0


def queues(client: redis.Redis) -> list[Queue]:
    """The job queues, highest priority first: a worker always takes `high` work first."""
    return [Queue(QUEUES[priority], connection=client) for priority in PRIORITIES]
