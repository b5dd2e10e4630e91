"""The HTTP face of Postback: a Flask app factory, one blueprint per resource."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask

from app import correlation, errors, shedding
from app.allow import PostbackFlask
from app.services import Services
from app.shedding import Shedder
from app.throttle import add_rate_limit_headers
from callbacks.ssrf import Resolver, system_resolver
from postback.logs import configure_logging
from postback.settings import Settings
from worker import registry

# Redis connections of one API process: requests take turns on them (a request
# waits up to POSTBACK_REDIS_TIMEOUT_SECONDS for one), however many are open.
REDIS_CONNECTIONS = 64


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    settings: Settings | None = None,
    client: redis.Redis | None = None,
    resolver: Resolver = system_resolver,
) -> Flask:
    """Build the app from `settings` (a process's composition root passes the ones it
    read at start; without them: defaults, then `POSTBACK_*`), then `test_config`."""
    if settings is None:
        settings = Settings.from_env(**dict(test_config or {}))
    elif test_config:
        settings = dataclasses.replace(settings, **dict(test_config))
    configure_logging(settings.log_level)
    registry.load(settings.handler_modules)
    flask_app = PostbackFlask(__name__)
    flask_app.json.sort_keys = False  # type: ignore[attr-defined]
    flask_app.config["SETTINGS"] = settings
    # A larger Content-Length is refused with 413 before the body is read (a chunked
    # body, which has none, is counted as it is read: `app.body.raw_body`).
    flask_app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if client is None:
        built = Services.connect(settings, max_connections=REDIS_CONNECTIONS, resolver=resolver)
    else:
        built = Services.build(settings, client, resolver=resolver)
    flask_app.extensions["postback"] = built
    errors.register(flask_app)
    correlation.register(flask_app)
    shedding.register(flask_app, Shedder(probe_seconds=2 * settings.redis_timeout_seconds))
    flask_app.after_request(add_rate_limit_headers)

    from app import admin, console, events, health, jobs, metrics, partners, results, streams

    flask_app.register_blueprint(health.bp)
    flask_app.register_blueprint(health.docs)
    flask_app.register_blueprint(partners.bp)
    flask_app.register_blueprint(jobs.bp)
    flask_app.register_blueprint(streams.bp)
    flask_app.register_blueprint(events.bp)
    flask_app.register_blueprint(admin.bp)
    flask_app.register_blueprint(results.bp)
    flask_app.register_blueprint(metrics.bp)
    console.register(flask_app)
    return flask_app
