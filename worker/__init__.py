"""The job lifecycle: the handler registry, the RQ entry points, the built-in handlers.

Write a handler::

    from worker import handler

    @handler("resize")
    def resize(ctx):
        ctx.progress(50)
        return {"width": ctx.input["width"] // 2}
"""

from __future__ import annotations

from worker.context import JobContext
from worker.errors import JobCancelled, JobTimedOut, RetryableError
from worker.registry import Handler, HandlerError, handler

__all__ = [
    "Handler",
    "HandlerError",
    "JobCancelled",
    "JobContext",
    "JobTimedOut",
    "RetryableError",
    "handler",
]
