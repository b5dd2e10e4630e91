"""Liveness, readiness, the OpenAPI document and its rendering at /docs."""

from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint
from rq import Worker

from app.errors import problem
from app.services import services

bp = Blueprint("health", __name__)

# Swagger UI, served from the package's own files (no CDN), reading /openapi.yaml.
docs = get_swaggerui_blueprint(
    "/docs", "/openapi.yaml", config={"app_name": "Postback API"}, blueprint_name="docs"
)


@bp.get("/healthz")
def healthz() -> Response:
    """200 while the process lives."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """200 when Redis answers and at least one worker is alive, else 503."""
    client = services().redis
    try:
        client.ping()
        workers = Worker.count(connection=client)
    except Exception:
        return problem(503, "Not ready", "Redis does not answer", slug="not-ready")
    if workers < 1:
        return problem(503, "Not ready", "no worker is alive", slug="not-ready")
    return jsonify({"status": "ready", "redis": "ok", "workers": workers})


@bp.get("/openapi.yaml")
def openapi() -> Response:
    """The OpenAPI 3.1 description of this API."""
    text = resources.files("app").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")
