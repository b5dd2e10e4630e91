"""What a handler receives: the job's input and a way to report progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class JobContext:
    """`ctx` in `fn(ctx)`: read `ctx.input`, report with `ctx.progress(percent)`."""

    job_id: str
    input: dict[str, Any]
    _report: Callable[[int], None] = field(repr=False, default=lambda percent: None)

    def progress(self, percent: float) -> None:
        """Report progress, 0 to 100 (clamped); visible as the job's `progress`."""
        self._report(int(max(0, min(100, percent))))
