"""One delivery's turn: rate limit, circuit, the signed attempt, and its outcome settled.

The dispatcher hands the courier a claimed delivery whose lane has a slot;
the courier does, in order:

1. gives up a delivery whose round has outlived the retry window (dead);
2. takes a token from the destination's rate limit, if one is set (none
   left: the turn ends, and the dispatcher holds the lane back);
3. asks the circuit breaker; an open circuit *parks* the delivery (no
   attempt spent) until the circuit closes or its cooldown ends;
4. signs and posts it (`callbacks.sender`: one deadline for the whole exchange);
5. reports to the breaker what the answer says about the destination, and
   when its probe closes a circuit, lets that circuit's parked deliveries go;
6. settles it under its claim's fencing token, as `callbacks.verdict` judges
   the answer: recorded, retried with backoff, delivered, or dead.

An outcome is recorded through a Redis fault while its claim lasts: an
attempt made but not recorded would be made again (a duplicate).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import redis

from callbacks import verdict
from callbacks.breaker import CircuitBreaker, Permit, circuit_id, counts_against
from callbacks.claims import Claimed, Settlement
from callbacks.errors import SecretError
from callbacks.lanes import Signal
from callbacks.model import Delivery, DeliveryStatus
from callbacks.outbox import Outbox
from callbacks.policy import RetryPolicy
from callbacks.ratelimit import RateLimiter
from callbacks.secrets import SecretStore
from callbacks.sender import Response, Sender
from callbacks.signing import headers as signed_headers
from postback import clock
from postback.faults import Fault, FaultWatch, classify, pause_seconds

# The delivery process's lines keep one logger name, whichever module writes them.
log = logging.getLogger("callbacks.dispatcher")


@dataclass(frozen=True)
class Turn:
    """How a turn ended: what it says about the lane, and where the delivery went."""

    signal: Signal = Signal.NONE
    # The delivery left this process (settled, parked); else it is still held here.
    leaves: bool = True
    # The rate limit had no token: hold the lane back this long, the delivery first in line.
    hold_seconds: float = 0.0


class Courier:
    """Takes one claimed delivery through its turn (`deliver`)."""

    def __init__(
        self,
        outbox: Outbox,
        secrets: SecretStore,
        sender: Sender,
        breaker: CircuitBreaker,
        *,
        policy: RetryPolicy,
        lease_seconds: float,
        outcome_faults: FaultWatch,
        redis_timeout_seconds: float | None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.outbox = outbox
        self.secrets = secrets
        self.sender = sender
        self.breaker = breaker
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.outcome_faults = outcome_faults
        self.redis_timeout_seconds = redis_timeout_seconds
        self.limiter = limiter

    def fault(self, exc: BaseException) -> Fault | None:
        """The Redis fault `exc` is, or None if it is none."""
        return classify(exc, timeout_seconds=self.redis_timeout_seconds)

    async def deliver(self, claimed: Claimed) -> Turn:
        """One delivery's turn."""
        delivery = claimed.delivery
        if clock.now() - delivery.round_started_at >= self.policy.window_seconds:
            error = delivery.last_error or "retry window exhausted"
            await self.settle(claimed, Settlement(status=DeliveryStatus.DEAD, error=error))
            return Turn()
        if self.limiter is not None:
            wait = await self.limiter.take(delivery.destination)
            if wait > 0:
                return Turn(leaves=False, hold_seconds=wait)
        permit = await self.breaker.aacquire(delivery.owner, delivery.destination)
        if not permit.allowed:
            await self.outbox.apark(
                claimed,
                group=circuit_id(delivery.owner, delivery.destination),
                generation=permit.generation,
                until=permit.retry_at or clock.now() + 1,
            )
            return Turn()
        response = await self._post(delivery)
        await self._report(delivery, permit, response)
        await self.settle(claimed, verdict.settlement(self.policy, delivery, response))
        log.info(
            "delivery attempt %s of %s: %s (%s, %d ms)",
            delivery.attempts + 1,
            delivery.id,
            "ok" if response.ok else "failed",
            response.status_code or response.error,
            response.duration_ms,
        )
        return Turn(signal=verdict.lane_signal(response, self.policy.timeout_seconds))

    async def _post(self, delivery: Delivery) -> Response:
        try:
            secrets = await self.secrets.asigning_secrets(delivery.owner)
            headers = signed_headers(secrets, delivery.id, int(clock.now()), delivery.message.body)
        except SecretError as exc:
            return Response(status_code=None, duration_ms=0, error=f"signing: {exc}")
        return await self.sender.post(
            delivery.url, delivery.message.body, {**delivery.message.headers, **headers}
        )

    async def _report(self, delivery: Delivery, permit: Permit, response: Response) -> None:
        """Tell the breaker what the answer says about the destination's health."""
        healthy = not counts_against(response.status_code)
        if healthy and permit.clean:
            return
        _, closed = await self.breaker.arecord(
            delivery.owner, delivery.destination, healthy=healthy, probe=permit.probe
        )
        if closed is not None:
            await self.outbox.aunpark(circuit_id(delivery.owner, delivery.destination), closed)

    async def settle(self, claimed: Claimed, settlement: Settlement) -> None:
        """Record the outcome under the claim; through a Redis fault, while the claim lasts
        (an attempt made but not recorded would be made again: a duplicate)."""
        deadline = time.monotonic() + self.lease_seconds / 2
        while True:
            try:
                settled = await self.outbox.asettle(claimed, settlement)
                break
            except redis.RedisError as exc:
                found = self.fault(exc)
                if found is None or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(pause_seconds(self.outcome_faults.failed(found)))
        self.outcome_faults.recovered()
        if not settled:
            log.warning(
                "stale outcome of %s discarded: its claim was lost (%s)",
                claimed.delivery.id,
                settlement.status,
            )
