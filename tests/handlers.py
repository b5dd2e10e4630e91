"""Job types the tests load through POSTBACK_HANDLER_MODULES."""

from __future__ import annotations

from worker import handler


class QuotaExceeded(Exception):
    pass


@handler("test.fail")
def fail(ctx):
    raise QuotaExceeded(f"quota of {ctx.input.get('quota', 0)} exceeded")


@handler("test.progress")
def progress(ctx):
    for percent in (25, 50, 75):
        ctx.progress(percent)
    return {"job_id": ctx.job_id}


@handler("test.not_json")
def not_json(ctx):
    return {"value": object()}
