"""What the request handlers share: the settings and the stores, one set per app."""

from __future__ import annotations

from dataclasses import dataclass

import redis
from flask import current_app

from app.partners_store import PartnerStore
from postback.settings import Settings
from worker.jobs import JobStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    redis: redis.Redis
    jobs: JobStore
    partners: PartnerStore

    @classmethod
    def build(cls, settings: Settings, client: redis.Redis) -> Services:
        return cls(settings, client, JobStore(client), PartnerStore(client))


def services() -> Services:
    """The current app's services."""
    return current_app.extensions["postback"]
