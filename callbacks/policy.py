"""When to try a delivery again, and when to give up: the retry policy value object."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped, bounded by attempts and by age.

    The delay before attempt n+1, after n attempts, is
    `uniform(0.5, 1.0) * min(max_seconds, base_seconds * 2 ** (n - 1))`.
    """

    base_seconds: float = 5.0
    max_seconds: float = 36_000.0
    # Total attempts, the first included.
    max_attempts: int = 22
    # Give up once the event is this old.
    window_seconds: float = 259_200.0
    # One whole attempt: connect, send, read the answer.
    timeout_seconds: float = 15.0

    def backoff_seconds(self, attempts: int) -> float:
        """The uncapped-by-jitter delay after `attempts` attempts (the upper bound)."""
        exponent = min(max(attempts - 1, 0), 64)
        return min(self.max_seconds, self.base_seconds * 2**exponent)

    def delay_seconds(
        self,
        attempts: int,
        *,
        retry_after_seconds: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait before the next attempt, after `attempts` attempts.

        A `Retry-After` from the receiver replaces the computed delay, clamped
        to [computed delay, max_seconds].
        """
        jitter = (rng or random).uniform(0.5, 1.0)
        delay = jitter * self.backoff_seconds(attempts)
        if retry_after_seconds is not None:
            delay = min(max(retry_after_seconds, delay), self.max_seconds)
        return delay

    def gives_up(self, attempts: int, age_seconds: float) -> bool:
        """Whether no further attempt is allowed."""
        return attempts >= self.max_attempts or age_seconds >= self.window_seconds


DEFAULT_RETRY_POLICY = RetryPolicy()
