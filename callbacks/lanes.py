"""Who gets the next delivery slot: fair, adaptive concurrency inside one delivery process.

Claimed deliveries wait in *lanes*, one per owner and destination. A lane's
share of the process follows how its destination behaves, in the manner of
TCP congestion control: its `Window` starts small, grows on fast successes
(doubling at first, then by one per window's worth), and halves on every
timeout, connection failure or 429/502/503/504, between 1 and the
per-destination limit. Besides the windows:

- the lanes of one destination together never exceed `per_destination`;
- lanes whose last attempt got no answer (hanging, trickling, refusing
  receivers) together hold at most `suspect_share` of the capacity;
- one owner holds at most `owner_share` of the capacity, so the rest is
  always there for the others;
- slots go round-robin across owners with runnable lanes, then round-robin
  across that owner's lanes: a partner with one webhook is served as soon as
  a slot frees, however long another partner's queue is.

This module is pure bookkeeping (no I/O, no clock of its own): the
dispatcher calls `add`, `take` and `done`, and does the work.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")

INITIAL_WINDOW = 2.0
# How many waiting owners `take` compares to find the least served one.
PICK_SCAN = 256


@dataclass(kw_only=True)
class Window:
    """Additive increase, multiplicative decrease, between 1 and `maximum`."""

    maximum: float
    limit: float = INITIAL_WINDOW
    threshold: float = float("inf")

    def __post_init__(self) -> None:
        self.limit = max(1.0, min(self.limit, self.maximum))

    @property
    def slots(self) -> int:
        return int(self.limit)

    def grow(self) -> None:
        """A fast success: +1 below the threshold (slow start), else +1 per window."""
        step = 1.0 if self.limit < self.threshold else 1.0 / self.limit
        self.limit = min(self.maximum, self.limit + step)

    def shrink(self) -> None:
        """A throttle signal: halve (never below 1); growth is additive from here."""
        self.limit = max(1.0, self.limit / 2)
        self.threshold = self.limit


class Signal(StrEnum):
    """How an attempt ended, as far as its lane's share is concerned."""

    FAST = "fast"  # a success within the fast threshold: grow
    SLOW = "slow"  # an answer, neither fast success nor throttle: keep
    THROTTLE = "throttle"  # 429/502/503/504: shrink
    SILENT = "silent"  # no answer at all (timeout, connection failure): shrink, suspect
    NONE = "none"  # no attempt was made (parked, given back): nothing learnt


@dataclass(eq=False)
class Lane(Generic[T]):
    """The deliveries of one owner to one destination waiting in this process."""

    owner: str
    dest: str
    window: Window
    pending: collections.deque[T] = field(default_factory=collections.deque)
    in_flight: int = 0
    # Of those, how many were taken while the lane was suspect (counted against that cap).
    suspect_in_flight: int = 0
    suspect: bool = False
    paused: bool = False
    ready: bool = False
    # Smoothed attempt duration (seconds), for estimating how long the line takes;
    # None until the first attempt ends.
    latency_seconds: float | None = None

    @property
    def locally_runnable(self) -> bool:
        return bool(self.pending) and not self.paused and self.in_flight < self.window.slots

    def wait_estimate_seconds(self) -> float:
        """About how long the last delivery in line waits for its turn."""
        latency = self.latency_seconds if self.latency_seconds is not None else 0.05
        return len(self.pending) / max(1, self.window.slots) * latency


@dataclass(eq=False)
class _Owner(Generic[T]):
    name: str
    ready: collections.deque[Lane[T]] = field(default_factory=collections.deque)
    in_flight: int = 0
    queued: bool = False


class Lanes(Generic[T]):
    """The lanes of one process and the rules that hand out its `capacity` slots."""

    def __init__(
        self,
        *,
        capacity: int,
        per_destination: int,
        suspect_share: float = 0.25,
        owner_share: float = 0.75,
        initial_window: float = INITIAL_WINDOW,
    ) -> None:
        self.capacity = capacity
        self.per_destination = per_destination
        self.suspect_cap = max(1, int(capacity * suspect_share))
        self.owner_cap = max(1, int(capacity * owner_share))
        self.initial_window = initial_window
        self.in_flight = 0
        self.suspect_in_flight = 0
        self.waiting = 0
        # Waiting in lanes whose last attempt got no answer.
        self.suspect_waiting = 0
        self._lanes: dict[tuple[str, str], Lane[T]] = {}
        self._owners: dict[str, _Owner[T]] = {}
        self._rotation: collections.deque[_Owner[T]] = collections.deque()
        self._dest_in_flight: collections.Counter[str] = collections.Counter()
        self._dest_blocked: dict[str, list[Lane[T]]] = {}
        self._suspect_blocked: list[Lane[T]] = []

    @property
    def held(self) -> int:
        """Deliveries this process holds: waiting in lanes or in flight."""
        return self.waiting + self.in_flight

    def lane(self, owner: str, dest: str) -> Lane[T]:
        key = (owner, dest)
        lane = self._lanes.get(key)
        if lane is None:
            window = Window(maximum=self.per_destination, limit=self.initial_window)
            lane = self._lanes[key] = Lane(owner, dest, window)
        return lane

    def lanes(self) -> Iterator[Lane[T]]:
        return iter(list(self._lanes.values()))

    def add(self, lane: Lane[T], item: T, *, line_limit: int) -> bool:
        """Queue `item` in `lane`; False (not queued) if the lane's line is full.

        A silent lane's line holds one window's worth, and all silent lanes together
        no more than they may have in flight: what waits for them would only keep
        this process from taking deliveries that can go now.
        """
        if len(lane.pending) >= line_limit:
            return False
        if lane.suspect and (
            len(lane.pending) >= lane.window.slots or self.suspect_waiting >= self.suspect_cap
        ):
            return False
        lane.pending.append(item)
        self._waited(lane, 1)
        self._offer(lane)
        return True

    def put_back(self, lane: Lane[T], item: T) -> None:
        """Return an item taken but not attempted to the front of its lane."""
        lane.pending.appendleft(item)
        self._waited(lane, 1)
        self._offer(lane)

    def _waited(self, lane: Lane[T], count: int) -> None:
        self.waiting += count
        if lane.suspect:
            self.suspect_waiting += count

    def take(self) -> tuple[Lane[T], T] | None:
        """The next item to attempt, its slot taken; None if nothing may start now."""
        while self.in_flight < self.capacity and (owner := self._pick_owner()) is not None:
            lane = self._next_lane(owner)
            if owner.ready:
                self._queue_owner(owner)
            if lane is None:
                continue
            item = lane.pending.popleft()
            self._waited(lane, -1)
            lane.in_flight += 1
            owner.in_flight += 1
            self.in_flight += 1
            self._dest_in_flight[lane.dest] += 1
            if lane.suspect:
                lane.suspect_in_flight += 1
                self.suspect_in_flight += 1
            if lane.locally_runnable:
                self._offer(lane)
            return lane, item
        return None

    def _pick_owner(self) -> _Owner[T] | None:
        """Of the owners waiting for a slot, the one with the fewest in flight (the first such
        in turn order), taken out of the rotation. Owners at their cap are dropped from it
        (offered again when one of their attempts ends)."""
        best: _Owner[T] | None = None
        capped = []
        for owner in itertools.islice(self._rotation, PICK_SCAN):
            if owner.in_flight >= self.owner_cap:
                capped.append(owner)
            elif best is None or owner.in_flight < best.in_flight:
                best = owner
                if not owner.in_flight:
                    break
        for owner in [*capped, *([best] if best is not None else [])]:
            self._rotation.remove(owner)
            owner.queued = False
        return best

    def _next_lane(self, owner: _Owner[T]) -> Lane[T] | None:
        while owner.ready:
            lane = owner.ready.popleft()
            lane.ready = False
            if not lane.locally_runnable:
                continue
            if self._dest_in_flight[lane.dest] >= self.per_destination:
                self._dest_blocked.setdefault(lane.dest, []).append(lane)
                continue
            if lane.suspect and self.suspect_in_flight >= self.suspect_cap:
                self._suspect_blocked.append(lane)
                continue
            return lane
        return None

    def done(self, lane: Lane[T], signal: Signal, *, seconds: float | None = None) -> None:
        """An attempt of `lane` ended (or was not made): free its slot, learn from `signal`."""
        lane.in_flight -= 1
        self.in_flight -= 1
        self._dest_in_flight[lane.dest] -= 1
        if not self._dest_in_flight[lane.dest]:
            del self._dest_in_flight[lane.dest]
        if lane.suspect_in_flight:
            lane.suspect_in_flight -= 1
            self.suspect_in_flight -= 1
        owner = self._owners[lane.owner]
        owner.in_flight -= 1
        if seconds is not None:
            before = lane.latency_seconds
            lane.latency_seconds = seconds if before is None else 0.8 * before + 0.2 * seconds
        if signal == Signal.FAST:
            lane.window.grow()
        if signal in (Signal.THROTTLE, Signal.SILENT):
            lane.window.shrink()
        if signal != Signal.NONE and lane.suspect != (signal == Signal.SILENT):
            self.suspect_waiting += len(lane.pending) if not lane.suspect else -len(lane.pending)
            lane.suspect = not lane.suspect
        for blocked in self._dest_blocked.pop(lane.dest, []):
            self._offer(blocked)
        if self._suspect_blocked and self.suspect_in_flight < self.suspect_cap:
            blocked_lanes, self._suspect_blocked = self._suspect_blocked, []
            for blocked in blocked_lanes:
                self._offer(blocked)
        self._offer(lane)
        if owner.ready:
            self._queue_owner(owner)

    def pause(self, lane: Lane[T]) -> None:
        """Hold `lane` back (its destination's rate limit) until `resume`."""
        lane.paused = True

    def resume(self, lane: Lane[T]) -> None:
        lane.paused = False
        self._offer(lane)

    def drop(self, lane: Lane[T], items: set[T]) -> None:
        """Remove waiting `items` from `lane` (their claims were lost)."""
        kept = [item for item in lane.pending if item not in items]
        self._waited(lane, len(kept) - len(lane.pending))
        lane.pending = collections.deque(kept)

    def clear(self) -> list[T]:
        """Take every waiting item out (on stop); returns them."""
        items = [item for lane in self._lanes.values() for item in lane.pending]
        for lane in self._lanes.values():
            lane.pending.clear()
        self.waiting = self.suspect_waiting = 0
        return items

    def forget_idle(self) -> int:
        """Drop lanes with nothing waiting or in flight (windows start afresh); how many."""
        idle = [
            key
            for key, lane in self._lanes.items()
            if not lane.pending and not lane.in_flight and not lane.paused
        ]
        for key in idle:
            del self._lanes[key]
        busy_owners = {lane.owner for lane in self._lanes.values()}
        for name in [n for n in self._owners if n not in busy_owners]:
            owner = self._owners[name]
            if not owner.in_flight and not owner.queued:
                del self._owners[name]
        return len(idle)

    def _offer(self, lane: Lane[T]) -> None:
        if lane.ready or not lane.locally_runnable:
            return
        owner = self._owners.get(lane.owner)
        if owner is None:
            owner = self._owners[lane.owner] = _Owner(lane.owner)
        lane.ready = True
        owner.ready.append(lane)
        self._queue_owner(owner)

    def _queue_owner(self, owner: _Owner[T]) -> None:
        if not owner.queued:
            owner.queued = True
            self._rotation.append(owner)
