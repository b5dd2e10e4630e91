"""What a handler receives: the job's input, progress reporting, and cancellation."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from worker.errors import JobCancelled


@dataclass(frozen=True)
class JobContext:
    """`ctx` in `fn(ctx)`: read `ctx.input`, report with `ctx.progress(percent)`.

    `ctx.cancelled` is set when the job is cancelled; `ctx.progress` then raises
    `JobCancelled`, so a handler that reports progress stops there by itself.
    Long computations without progress calls may check `ctx.cancelled.is_set()`.
    """

    job_id: str
    input: dict[str, Any]
    _report: Callable[[int], None] = field(repr=False, default=lambda percent: None)
    cancelled: threading.Event = field(default_factory=threading.Event)
    attempt: int = 1

    def progress(self, percent: float) -> None:
        """Report progress, 0 to 100 (clamped); visible as the job's `progress`."""
        if self.cancelled.is_set():
            raise JobCancelled(self.job_id)
        self._report(int(max(0, min(100, percent))))
