"""How the delivery library talks back: the `Observer` told what happens to deliveries.

Each hook queues writes on `writes` (a recorder pipeline, see `postback.lua`)
that the outbox applies in the same atomic step as the change it reports, or
not at all (Postback records its job timeline and metrics there).
"""

from __future__ import annotations

from typing import Any, Protocol

import redis

from callbacks.model import Attempt, Delivery


class Observer(Protocol):
    """Told what happens to deliveries; each hook queues writes on `writes` (a recorder
    pipeline) that are applied atomically with the change, or not at all."""

    def on_attempt(
        self, writes: redis.client.Pipeline, delivery: Delivery, attempt: Attempt
    ) -> None:
        """An attempt was made and is being recorded."""

    def on_delivered(self, writes: redis.client.Pipeline, delivery: Delivery) -> None:
        """The receiver acknowledged the delivery."""

    def on_dead(
        self, writes: redis.client.Pipeline, delivery: Delivery, dead_letter_id: str
    ) -> None:
        """The delivery was given up and put on the dead-letter list."""

    def on_reopened(
        self, writes: redis.client.Pipeline, delivery: Delivery, *, replay: bool
    ) -> None:
        """A new round started (a dead-letter replay, or a redelivery).

        For a replay of many letters the message comes without its body and
        headers (see `Outbox.get_heads`).
        """


class NoObserver:
    """An observer that records nothing."""

    def on_attempt(self, writes: Any, delivery: Delivery, attempt: Attempt) -> None:
        pass

    def on_delivered(self, writes: Any, delivery: Delivery) -> None:
        pass

    def on_dead(self, writes: Any, delivery: Delivery, dead_letter_id: str) -> None:
        pass

    def on_reopened(self, writes: Any, delivery: Delivery, *, replay: bool) -> None:
        pass
