"""The settings and job-store client of this worker process, set once at start-up
(`worker.process.run`)."""

from __future__ import annotations

import redis

from postback.settings import Durability, Settings
from worker.jobs import FSYNC_WAIT_SECONDS, REPLICATED_WAIT_SECONDS, JobStore
from worker.quotas import Quota

_settings: list[Settings] = []
# The client of Postback's own records (the job store), when the process was given one.
_client: list[redis.Redis] = []
# The last store made, reused while its client and settings are asked for again
# (a store registers its Lua scripts when it is made: once per worker, not per job).
_last_store: list[tuple[redis.Redis, Settings, JobStore]] = []


def configure(settings: Settings, *, client: redis.Redis | None = None) -> None:
    """Make `settings` (and `client`, for the job store) the ones RQ entry points use."""
    _settings[:] = [settings]
    _client[:] = [client] if client is not None else []


def client() -> redis.Redis | None:
    """The configured client of the job store, if any (else: the RQ job's own connection)."""
    return _client[0] if _client else None


def settings() -> Settings:
    """The configured settings; RuntimeError if `configure` was not called (a worker
    runs with the settings it was started with, never with silent defaults)."""
    if not _settings:
        raise RuntimeError("worker.runtime.configure(settings) was not called in this process")
    return _settings[0]


def job_store(client: redis.Redis, current: Settings) -> JobStore:
    """The job store as the settings describe it."""
    if _last_store:
        last_client, last_settings, store = _last_store[0]
        if last_client is client and last_settings == current:
            return store
    store = JobStore(
        client,
        durability=current.durability,
        durability_replicas=current.durability_replicas,
        retention_seconds=current.job_retention_seconds,
        inline_result_bytes=current.inline_result_bytes,
        result_url_ttl_seconds=current.result_url_ttl_seconds,
        quota=Quota(
            max_retained_bytes=current.partner_max_retained_bytes,
            max_backlog=current.partner_max_backlog,
        ),
        # The server's own "not fsynced" answer comes before the client's timeout.
        fsync_wait_seconds=min(
            REPLICATED_WAIT_SECONDS
            if current.durability is Durability.REPLICATED
            else FSYNC_WAIT_SECONDS,
            current.redis_timeout_seconds * 0.75,
        ),
    )
    _last_store[:] = [(client, current, store)]
    return store
