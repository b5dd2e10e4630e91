"""The OpenAPI document: valid, in step with the app's routes, and served as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from flask import Flask
from openapi_spec_validator import validate

from app import create_app

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi.yaml"
IGNORED_METHODS = {"HEAD", "OPTIONS"}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


@pytest.fixture
def app() -> Flask:
    # The client points at a closed port; nothing connects until a request needs Redis.
    return create_app({"redis_url": "redis://127.0.0.1:1/0"}, client=redis.Redis(port=1))


def test_spec_is_valid_openapi(spec: dict[str, Any]) -> None:
    """The root openapi.yaml is a valid OpenAPI 3.1 document."""
    validate(spec)


def test_spec_paths_match_app_routes(app: Flask, spec: dict[str, Any]) -> None:
    """Every route the app serves is in the spec, and every path in the spec is served."""
    routes = {
        (re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in IGNORED_METHODS
    }
    documented = {
        (path, key.upper())
        for path, item in spec["paths"].items()
        for key in item
        if key in HTTP_METHODS
    }
    assert routes == documented


def test_openapi_endpoint_serves_the_file(app: Flask, spec: dict[str, Any]) -> None:
    """GET /openapi.yaml returns 200 and the same document as the root openapi.yaml."""
    response = app.test_client().get("/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.get_data(as_text=True)) == spec
