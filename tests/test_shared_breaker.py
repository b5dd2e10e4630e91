"""Two real worker processes share one circuit breaker: a sick destination gets one probe."""

from __future__ import annotations

import subprocess
from dataclasses import replace

from callbacks.breaker import CircuitBreaker
from callbacks.model import destination
from tests.processes import POSTBACK, cli_env, eventually, stop_process
from tests.receiver import Receiver, Reply
from worker.process import breaker as breaker_for


def test_two_workers_send_a_single_probe_in_half_open(
    client, partner, settings, redis_url, redis_client
):
    """While the one half-open probe hangs, neither worker sends anything else to that host."""
    env = cli_env(
        REDIS_URL=redis_url,
        POSTBACK_BREAKER_COOLDOWN_SECONDS="1",
        POSTBACK_DELIVERY_TIMEOUT_SECONDS="5",
        POSTBACK_RETRY_BASE_SECONDS="0.05",
        POSTBACK_RETRY_MAX_SECONDS="0.1",
    )
    with Receiver() as sick:
        dest = destination(sick.url)
        breaker = breaker_for(replace(settings, breaker_cooldown_seconds=1), redis_client)
        for _ in range(breaker.settings.threshold):
            breaker.record(partner["id"], dest, healthy=False)
        # The probe hangs 1.5 s and fails; everything after it succeeds.
        sick.reply(Reply(500, delay_seconds=1.5))
        job_ids = []
        for number in range(12):
            reply = client.post(
                "/v1/jobs",
                json={"type": "echo", "input": {"n": number}, "callback_url": sick.url},
                headers=partner["headers"],
            )
            job_ids.append(reply.json["id"])
        workers = [subprocess.Popen([*POSTBACK, "worker"], env=env) for _ in range(2)]
        try:
            # 1 failed probe, 1 successful probe, then the other 11 (12 events in all).
            received = sick.wait_for(13, timeout_seconds=30)
        finally:
            for worker in workers:
                stop_process(worker, grace_seconds=10)
    probe, second_probe, *rest = sorted(received, key=lambda r: r.arrived_at)
    # Nothing reached the host while the first probe hung, nor before the re-opened
    # circuit let the second probe through.
    assert second_probe.arrived_at >= probe.arrived_at + 1.5
    assert all(r.arrived_at >= second_probe.arrived_at for r in rest)
    assert len({r.headers["webhook-id"] for r in received}) == 12

    def all_delivered():
        jobs = [client.get(f"/v1/jobs/{j}", headers=partner["headers"]).json for j in job_ids]
        return all(j["delivery"]["status"] == "delivered" for j in jobs)

    eventually(all_delivered, timeout_seconds=10, what="every job delivered")
    assert CircuitBreaker(redis_client).state(partner["id"], dest)["state"] == "closed"
