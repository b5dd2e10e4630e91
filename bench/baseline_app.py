"""The accept benchmark's baseline: a bare Flask app that queues a job with one LPUSH.

    python -m gunicorn -k gevent -w 2 "bench.baseline_app:create_app()"

`POST /v1/jobs` reads the JSON body, pushes it onto a Redis list and answers
202 with an id; `GET /ping` answers 200 without touching Redis (it measures
what the load generator itself can do). Reads `REDIS_URL`.
"""

from __future__ import annotations

import json
import os
import uuid

import redis
from flask import Flask, Response, jsonify, request

QUEUE_KEY = "bench:baseline:jobs"


def create_app() -> Flask:
    app = Flask(__name__)
    client = redis.Redis.from_url(os.environ["REDIS_URL"])

    @app.post("/v1/jobs")
    def accept() -> tuple[Response, int]:
        body = request.get_json()
        job_id = uuid.uuid4().hex
        client.lpush(QUEUE_KEY, json.dumps({"id": job_id, "job": body}, separators=(",", ":")))
        return jsonify({"id": job_id, "status": "queued"}), 202

    @app.get("/ping")
    def ping() -> tuple[str, int]:
        return "ok", 200

    return app
