"""Reads fetch only what they return: no job's input is loaded to show or list jobs."""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import replace

import pytest

INPUT_BYTES = 1_048_576
JOBS = 20
# A page of jobs is a few KiB of JSON; loading one input alone would be 1 MiB.
MAX_PAGE_PEAK_BYTES = 3 * 1_048_576


@pytest.fixture
def settings(settings):
    """Bodies big enough for a 1 MiB input."""
    return replace(settings, max_body_bytes=2 * INPUT_BYTES)


def submit_big(client, partner) -> str:
    body = {"type": "echo", "input": {"blob": "q" * INPUT_BYTES}}
    reply = client.post("/v1/jobs", json=body, headers=partner["headers"])
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def peak_bytes(call):
    """(the reply of `call()`, the peak of Python allocations while it ran, seconds taken)."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        reply = call()
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return reply, peak, seconds


def test_a_listing_page_of_jobs_with_1_mib_inputs_loads_none_of_them(client, partner):
    """Listing 20 jobs with 1 MiB inputs allocates under 3 MiB and returns no input."""
    for _ in range(JOBS):
        submit_big(client, partner)
    client.get("/v1/jobs?limit=100", headers=partner["headers"])  # warm: scripts, imports
    reply, peak, seconds = peak_bytes(
        lambda: client.get("/v1/jobs?limit=100", headers=partner["headers"])
    )
    assert reply.status_code == 200 and len(reply.json["items"]) == JOBS
    assert b"qqqq" not in reply.data
    assert peak < MAX_PAGE_PEAK_BYTES, f"peak {peak} bytes in {seconds:.3f} s"


def test_getting_a_job_with_a_1_mib_input_does_not_load_the_input(client, partner):
    """GET /v1/jobs/{id} of a job with a 1 MiB input allocates well under that input's size."""
    job_id = submit_big(client, partner)
    client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])
    reply, peak, _ = peak_bytes(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])
    )
    assert reply.status_code == 200 and b"qqqq" not in reply.data
    assert peak < INPUT_BYTES // 2


def test_a_large_result_is_linked_and_not_loaded_but_its_link_serves_it(client, partner, work):
    """A result over POSTBACK_INLINE_RESULT_BYTES is a result_url, read only when followed."""
    job_id = submit_big(client, partner)
    work(deliveries=False)
    client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])
    reply, peak, _ = peak_bytes(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=partner["headers"])
    )
    job = reply.json
    assert job["status"] == "completed" and "result" not in job and job["result_url"]
    assert peak < INPUT_BYTES // 2
    result = client.get(job["result_url"])
    assert result.status_code == 200 and result.json == {"blob": "q" * INPUT_BYTES}
