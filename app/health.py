"""Liveness, readiness, the OpenAPI document and its rendering at /docs."""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import redis
from flask import Blueprint, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint

from app import status
from app.services import services
from postback.errors import NotReady
from postback.faults import classify
from postback.settings import Durability

bp = Blueprint("health", __name__)

# What /readyz writes to see that Redis takes writes; it expires by itself.
READY_PROBE_KEY = "pb:readyz"
READY_PROBE_TTL_MS = 10_000
NO_LIVE_WORKER = "no_live_worker"
TOO_FEW_REPLICAS = "too_few_replicas"

# Swagger UI, served from the package's own files (no CDN), reading /openapi.yaml. No
# validator: its badge would send the spec's address to an online service from any host
# but localhost.
docs = get_swaggerui_blueprint(
    "/docs",
    "/openapi.yaml",
    config={"app_name": "Postback API", "validatorUrl": None},
    blueprint_name="docs",
)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process lives: asks nothing of Redis, so it answers whatever Redis does."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """200 when Redis takes writes and a worker is alive; else 503 naming what is not ready.

    `checks` says, for `redis` and `workers`, `ok` or `failing` with a `cause` and a
    `detail` (`unknown` when not checked). The probe is a write, so that a server
    that answers but refuses writes (MISCONF, READONLY, OOM) is not ready either; it
    waits at most the Redis timeout. In `replicated` durability, `replication` says
    whether the primary has the replicas a submission waits for: without them every
    submission would be a 503.
    """
    svc = services()
    replicated = svc.settings.durability is Durability.REPLICATED
    checks: dict[str, dict[str, str]] = {
        "redis": {"status": "ok"},
        "workers": {"status": "unknown"},
        **({"replication": {"status": "unknown"}} if replicated else {}),
    }
    try:
        svc.redis.set(READY_PROBE_KEY, "1", px=READY_PROBE_TTL_MS)
        workers = status.workers(svc.redis)
        online = replicas_online(svc.redis) if replicated else 0
    except redis.RedisError as exc:
        found = classify(exc, timeout_seconds=svc.settings.redis_timeout_seconds)
        if found is None:
            raise
        checks["redis"] = failing(str(found.cause), found.detail)
        raise NotReady(
            found.detail, checks=checks, retry_after_seconds=found.retry_after_seconds
        ) from None
    if workers < 1:
        checks["workers"] = failing(NO_LIVE_WORKER, "no worker is alive")
        raise NotReady("no worker is alive", checks=checks)
    checks["workers"] = {"status": "ok"}
    if replicated:
        wanted = svc.settings.durability_replicas
        if online < wanted:
            detail = f"{online} of the {wanted} replicas a submission waits for are online"
            checks["replication"] = failing(TOO_FEW_REPLICAS, detail)
            raise NotReady(detail, checks=checks)
        checks["replication"] = {"status": "ok"}
    return jsonify({"status": "ready", "redis": "ok", "workers": workers, "checks": checks})


def replicas_online(client: redis.Redis) -> int:
    """How many replicas the primary `client` writes to are connected and in sync."""
    info = cast("dict[str, Any]", client.info("replication"))
    return sum(
        1
        for name, replica in info.items()
        if name.startswith("slave")
        and isinstance(replica, dict)
        and replica.get("state") == "online"
    )


def failing(cause: str, detail: str) -> dict[str, str]:
    return {"status": "failing", "cause": cause, "detail": detail}


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    text = resources.files("app").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")
