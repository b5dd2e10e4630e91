"""The delivery loop: claim due deliveries fairly, attempt them under a hard deadline, settle each.

One asyncio event loop per delivery process holds every attempt in flight
(thousands of them cost a few kilobytes each, not a thread each; see the
README for the measurement behind this choice). The loop claims what fits
(`callbacks.claims`), queues each claimed delivery in its lane, and starts
each one when its lane gets a slot (`callbacks.lanes`: fair across owners,
adaptive per destination, bounded for destinations that do not answer). A
started delivery's turn, from the rate limit and the circuit to the settled
outcome, is the courier's (`callbacks.courier`); what the answer says about
the lane comes back to the lanes when the turn ends.

While the process holds a delivery (waiting in a lane or in flight), it renews
the delivery's claim, so the claim cannot lapse under a running attempt. Now
and then it also expires old dead letters, prunes expired circuits and forgets
idle lanes.

A Redis fault stops nothing: claims are tried again with growing pauses, an
outcome is recorded once Redis takes it (while its claim lasts), and each kind of
fault is logged once per change of state (`postback.faults`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from callbacks.breaker import CircuitBreaker
from callbacks.claims import Claimed
from callbacks.courier import Courier
from callbacks.deadletters import DeadLetters
from callbacks.lanes import Lane, Lanes, Signal
from callbacks.outbox import Outbox
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.ratelimit import RateLimiter
from callbacks.secrets import SecretStore
from callbacks.sender import Sender
from postback import clock, logs, lua
from postback.connection import timeout_of
from postback.faults import Fault, FaultWatch, classify, pause_seconds

log = logging.getLogger(__name__)

MAINTAIN_EVERY_SECONDS = 60.0
# How many claimed deliveries may wait in one lane, in windows' worth.
LINE_WINDOWS = 4
MIN_LINE = 1000
CLAIM_BATCH = 500
# How long the loop waits after a claim failed on an error that is no Redis fault.
REDIS_RETRY_SECONDS = 1.0


class Dispatcher:
    """Delivers due deliveries until stopped (`run`), or those due now (`drain`)."""

    def __init__(
        self,
        outbox: Outbox,
        secrets: SecretStore,
        sender: Sender,
        breaker: CircuitBreaker,
        *,
        aclient: Callable[[], redis.asyncio.Redis],
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        concurrency: int = 2048,
        per_destination: int = 48,
        max_rate_per_second: float | None = None,
        poll_seconds: float = 0.05,
        dead_letter_retention_seconds: float = 0,
    ) -> None:
        self.outbox = outbox
        self.secrets = secrets
        self.sender = sender
        self.breaker = breaker
        self.aclient = aclient
        self.policy = policy
        self.concurrency = concurrency
        self.per_destination = per_destination
        self.max_rate_per_second = max_rate_per_second
        self.poll_seconds = poll_seconds
        self.dead_letter_retention_seconds = dead_letter_retention_seconds
        self.dead_letters = DeadLetters(outbox.redis, outbox=outbox)
        self._lanes: Lanes[Claimed] = Lanes(capacity=1, per_destination=1)
        self._held: dict[str, Claimed] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._batch: lua.Batch | None = None
        self._wake = asyncio.Event()
        # Redis faults, logged once per change of state for each kind of work.
        self._redis_timeout = timeout_of(outbox.redis)
        self._claim_faults = FaultWatch("delivery claims", logger=log)
        self._renewal_faults = FaultWatch("delivery claim renewals", logger=log)
        self._outcome_faults = FaultWatch("delivery outcomes", logger=log)
        self._maintenance_faults = FaultWatch("delivery maintenance", logger=log)
        self._courier = self._new_courier()

    @property
    def lease_seconds(self) -> float:
        """How long a claim lasts without renewal: several renewals' worth beyond a deadline."""
        return max(30.0, self.policy.timeout_seconds * 2)

    @property
    def in_flight(self) -> int:
        return self._lanes.in_flight

    def _new_courier(self, limiter: RateLimiter | None = None) -> Courier:
        """A courier with the dispatcher's parts as they are now (a test may swap the policy)."""
        return Courier(
            self.outbox,
            self.secrets,
            self.sender,
            self.breaker,
            policy=self.policy,
            lease_seconds=self.lease_seconds,
            outcome_faults=self._outcome_faults,
            redis_timeout_seconds=self._redis_timeout,
            limiter=limiter,
        )

    # Entry points ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Claim and deliver until `stop` is set; attempts in flight finish first."""
        asyncio.run(self._serve(stop))

    def drain(self, *, max_rounds: int = 100) -> int:
        """Attempt every delivery due now, and those due again within the run; how many.

        For tests and tools: claims until nothing is due, waits for every attempt.
        """
        return asyncio.run(self._drain(max_rounds))

    # The loop ----------------------------------------------------------------------

    async def _open(self) -> redis.asyncio.Redis:
        client = self.aclient()
        # Scripts go out in pipelines: what many attempts settle in one turn of the loop.
        batch = self._batch = lua.Batch(client)
        self.outbox.aredis = batch
        self.breaker.aredis = batch
        self.secrets.aredis = client
        limiter = None
        if self.max_rate_per_second:
            limiter = RateLimiter(batch, self.max_rate_per_second, keys=self.outbox.keys)
        self._courier = self._new_courier(limiter)
        self._lanes = Lanes(capacity=self.concurrency, per_destination=self.per_destination)
        self._held = {}
        self._wake = asyncio.Event()
        return client

    async def _close(self, client: redis.asyncio.Redis) -> None:
        await self.sender.close()
        if self._batch is not None:
            await self._batch.aclose()
        await client.aclose()

    async def _serve(self, stop: threading.Event) -> None:
        client = await self._open()
        keeping = asyncio.create_task(self._keep_claims())
        maintaining = asyncio.create_task(self._maintain())
        try:
            while not stop.is_set():
                try:
                    got = await self._claim_some()
                except redis.RedisError as exc:
                    found = self._fault(exc)
                    if found is None:
                        log.warning("could not claim deliveries; trying again", exc_info=True)
                        await asyncio.sleep(REDIS_RETRY_SECONDS)
                    else:
                        await asyncio.sleep(pause_seconds(self._claim_faults.failed(found)))
                    continue
                self._claim_faults.recovered()
                if got is None:
                    # Full: wait until a slot frees (or a while).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self._wake.wait()
                    self._wake.clear()
                elif not got:
                    await asyncio.sleep(self.poll_seconds)
            await self._give_back_on_stop()
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        finally:
            keeping.cancel()
            maintaining.cancel()
            await self._close(client)

    async def _give_back_on_stop(self) -> None:
        """Hand back what waits in the lanes; if Redis cannot take it, the claims lapse."""
        waiting = self._lanes.clear()
        try:
            await self._give_back(waiting, at=clock.now())
        except redis.RedisError as exc:
            found = self._fault(exc)
            if found is None:
                raise
            log.warning(
                "%d claimed deliveries not given back (%s); they are due again in %.0f s",
                len(waiting),
                found.detail,
                self.lease_seconds,
            )

    def _fault(self, exc: BaseException) -> Fault | None:
        return classify(exc, timeout_seconds=self._redis_timeout)

    async def _drain(self, max_rounds: int) -> int:
        client = await self._open()
        attempted = 0
        try:
            for _ in range(max_rounds):
                got = await self._claim_some()
                attempted += got or 0
                if not got and not self._tasks:
                    break
                if self._tasks:
                    await asyncio.wait(set(self._tasks), return_when=asyncio.FIRST_COMPLETED)
            while self._tasks:
                await asyncio.wait(set(self._tasks))
            await self._give_back(self._lanes.clear(), at=clock.now())
        finally:
            await self._close(client)
        return attempted

    async def _claim_some(self) -> int | None:
        """Claim what fits, queue it in lanes, start what may start. None if full."""
        free = self.concurrency * 2 - self._lanes.held
        if free <= 0:
            return None
        claimed = await self.outbox.aclaim(
            limit=min(free, CLAIM_BATCH), lease_seconds=self.lease_seconds
        )
        overflow: list[tuple[Claimed, float]] = []
        for item in claimed:
            delivery = item.delivery
            lane = self._lanes.lane(delivery.owner, delivery.destination)
            line = max(MIN_LINE, LINE_WINDOWS * lane.window.slots)
            if self._lanes.add(lane, item, line_limit=line):
                self._held[delivery.id] = item
            else:
                overflow.append((item, clock.now() + _busy_delay(lane)))
        if overflow:
            await self._give_back_each(overflow)
        self._pump()
        return len(claimed)

    def _pump(self) -> None:
        while (taken := self._lanes.take()) is not None:
            lane, item = taken
            task = asyncio.create_task(self._run_one(lane, item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run_one(self, lane: Lane[Claimed], claimed: Claimed) -> None:
        signal, seconds = Signal.NONE, None
        started = time.monotonic()
        release = True
        try:
            with logs.bind(
                webhook_id=claimed.delivery.id,
                job_id=claimed.delivery.message.subject,
                partner_id=claimed.delivery.owner,
                destination=claimed.delivery.destination,
                request_id=claimed.delivery.message.headers.get("x-request-id"),
            ):
                turn = await self._courier.deliver(claimed)
                if turn.hold_seconds > 0:
                    self._hold_back(lane, claimed, turn.hold_seconds)
            signal, release = turn.signal, turn.leaves
            if signal != Signal.NONE:
                seconds = time.monotonic() - started
        except Exception as exc:
            found = self._fault(exc)
            if found is None:
                log.exception("delivery of %s crashed; it is given back", claimed.delivery.id)
            else:
                self._outcome_faults.failed(found)
            with contextlib.suppress(Exception):
                await self._give_back_each([(claimed, clock.now() + 5)])
        finally:
            if release:
                self._held.pop(claimed.delivery.id, None)
            self._lanes.done(lane, signal, seconds=seconds)
            self._pump()
            self._wake.set()

    def _hold_back(self, lane: Lane[Claimed], claimed: Claimed, wait_seconds: float) -> None:
        """Put `claimed` back at the head of its lane and pause the lane for `wait_seconds`."""
        self._lanes.put_back(lane, claimed)
        self._lanes.pause(lane)
        loop = asyncio.get_running_loop()

        def resume() -> None:
            self._lanes.resume(lane)
            self._pump()

        loop.call_later(wait_seconds, resume)

    async def _give_back(self, items: list[Claimed], *, at: float) -> None:
        await self._give_back_each([(item, at) for item in items])

    async def _give_back_each(self, items: list[tuple[Claimed, float]]) -> None:
        """Hand claimed deliveries back to the schedule unattempted, each due at its time."""
        for start in range(0, len(items), CLAIM_BATCH):
            await self.outbox.arelease(items[start : start + CLAIM_BATCH])
        for item, _ in items:
            self._held.pop(item.delivery.id, None)

    async def _keep_claims(self) -> None:
        """Renew the claims of everything held, a few times per lease."""
        every = self.lease_seconds / 4
        while True:
            await asyncio.sleep(every)
            try:
                lost = await self.outbox.arenew(
                    list(self._held.values()), lease_seconds=self.lease_seconds
                )
            except Exception as exc:
                found = self._fault(exc)
                if found is None:
                    log.warning("could not renew delivery claims; retrying", exc_info=True)
                else:
                    self._renewal_faults.failed(found)
                continue
            self._renewal_faults.recovered()
            # Settled or given back while the renewal was on its way: not lost.
            lost &= self._held.keys()
            if lost:
                log.warning("%d delivery claims were lost (the process stalled?)", len(lost))
                self._forget(lost)

    def _forget(self, lost: set[str]) -> None:
        by_lane: dict[int, tuple[Lane[Claimed], set[Claimed]]] = {}
        for delivery_id in lost:
            item = self._held.pop(delivery_id, None)
            if item is None:
                continue
            lane = self._lanes.lane(item.delivery.owner, item.delivery.destination)
            by_lane.setdefault(id(lane), (lane, set()))[1].add(item)
        for lane, items in by_lane.values():
            self._lanes.drop(lane, items)

    async def _maintain(self) -> None:
        """Now and then: expire old dead letters, prune expired circuits, forget idle lanes."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_SECONDS)
            try:
                if self.dead_letter_retention_seconds:
                    await loop.run_in_executor(
                        None, self.dead_letters.expire, self.dead_letter_retention_seconds
                    )
                await loop.run_in_executor(None, self.breaker.sweep)
            except redis.RedisError as exc:
                found = self._fault(exc)
                if found is None:
                    log.warning("delivery maintenance failed; will try again", exc_info=True)
                else:
                    self._maintenance_faults.failed(found)
            else:
                self._maintenance_faults.recovered()
            self._lanes.forget_idle()


def _busy_delay(lane: Lane[Claimed]) -> float:
    """When a delivery that found its lane's line full should come back: about when the
    line will have moved, jittered, between 0.05 and 30 seconds."""
    return min(30.0, max(0.05, lane.wait_estimate_seconds())) * random.uniform(1.0, 1.5)
