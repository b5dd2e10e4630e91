"""The OpenAPI document: valid, in step with the app's routes, and served as written."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
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
        and not rule.endpoint.startswith(("docs.", "metrics.", "console", "portal"))
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


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def _resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        _, *keys = node["$ref"].split("/")
        target: Any = spec
        for key in keys:
            target = target[key]
        node = target
    return node


def test_spec_documents_the_cross_cutting_statuses(spec: dict[str, Any]) -> None:
    """Each operation lists 503 if it touches Redis, 400/413/415 if it takes a body, 401/403
    if it needs a token, and, for a partner, 429 and RateLimit-* headers after authentication."""
    rate_limit_headers = {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"}
    for path, method, operation in _operations(spec):
        where = f"{method.upper()} {path}"
        statuses = set(operation["responses"])
        schemes = {name for requirement in operation.get("security", []) for name in requirement}
        if path not in {"/healthz", "/openapi.yaml"}:
            assert "503" in statuses, where
        if "requestBody" in operation:
            assert {"400", "413", "415", "422"} <= statuses, where
        if schemes:
            assert {"401", "403"} <= statuses, where
        if "partnerKey" in schemes:
            assert "429" in statuses, where
            for status, response in operation["responses"].items():
                if status in {"401", "403", "503"}:
                    continue  # refused before the request is counted, or Redis is down
                headers = _resolve(spec, response).get("headers", {})
                assert rate_limit_headers <= set(headers), f"{where} {status}"


def test_openapi_endpoint_serves_the_file(app: Flask, spec: dict[str, Any]) -> None:
    """GET /openapi.yaml returns 200 and the same document as the root openapi.yaml."""
    response = app.test_client().get("/openapi.yaml")
    assert response.status_code == 200
    assert yaml.safe_load(response.get_data(as_text=True)) == spec


def test_docs_serve_swagger_ui_from_local_assets(app: Flask) -> None:
    """GET /docs/ is Swagger UI whose scripts and styles all come from /docs/, not a CDN."""
    client = app.test_client()
    page = client.get("/docs/")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assets = re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert assets, "the page loads no assets"
    for url in assets:
        is_relative = not re.match(r"^(?:[a-z][a-z0-9+.-]*:|//|/)", url, flags=re.I)
        assert is_relative or url.startswith("/docs/"), url
    bundle = client.get("/docs/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert bundle.data


def test_docs_configure_no_online_validator(app: Flask) -> None:
    """GET /docs/ configures Swagger UI with `validatorUrl: null`, so no page loads a badge from
    an online validator, whatever the host."""
    html = app.test_client().get("/docs/").get_data(as_text=True)
    found = re.search(r"var user_config = (\{.*?\});", html)
    assert found, "the page has no user config"
    config = json.loads(found.group(1))
    assert "validatorUrl" in config
    assert config["validatorUrl"] is None


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _subschemas(value)
    elif isinstance(node, list):
        for value in node:
            yield from _subschemas(value)


def test_no_schema_negates_a_typeless_schema(spec: dict[str, Any]) -> None:
    """Every `not` in the spec names a `type`: Swagger UI shows a schema whose `not` is typeless
    as type `never` (as it did `Job`)."""
    negated = [node["not"] for node in _subschemas(spec) if isinstance(node.get("not"), dict)]
    assert negated, "the spec has no `not` left to check"
    for schema in negated:
        assert "type" in schema, schema


def test_redis_faults_are_documented_with_their_cause(spec: dict[str, Any]) -> None:
    """Every 503 carries Retry-After and, but on /readyz, a `cause` naming every Redis fault;
    /readyz's 503 documents `checks`."""
    from postback.faults import Cause

    causes = spec["components"]["schemas"]["RedisFaultCause"]["enum"]
    assert set(causes) == {str(c) for c in Cause}
    for path, method, operation in _operations(spec):
        if "503" not in operation["responses"]:
            continue
        response = _resolve(spec, operation["responses"]["503"])
        schema = response["content"]["application/problem+json"]["schema"]["$ref"]
        if path == "/readyz":
            assert schema.endswith("/NotReadyProblem"), method
        else:
            assert schema.endswith("/UnavailableProblem"), f"{method} {path}"
            assert "Retry-After" in response["headers"], f"{method} {path}"


def test_spec_names_the_license_and_a_server(spec: dict[str, Any]) -> None:
    """The spec's `info.license` is the license pyproject.toml declares and LICENSE holds, and
    its `servers` name the local `postback up`."""
    root = SPEC_PATH.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    declared_license = declared["project"]["license"]
    # `license = "…"` (PEP 639) or the older `license = { text = "…" }`.
    license_id = declared_license if isinstance(declared_license, str) else declared_license["text"]
    assert spec["info"]["license"] == {"name": license_id, "identifier": license_id}
    assert (root / "LICENSE").read_text(encoding="utf-8").lstrip().startswith("Apache License")
    assert license_id == "Apache-2.0"
    assert [server["url"] for server in spec["servers"]] == ["http://127.0.0.1:8000"]
