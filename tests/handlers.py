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


@handler("test.flaky")
def flaky(ctx):
    """Fails with a RetryableError until its attempt number reaches `input.succeed_on`."""
    from worker import RetryableError

    if ctx.attempt < ctx.input.get("succeed_on", 99):
        raise RetryableError(f"attempt {ctx.attempt} hit a temporary error")
    return {"attempt": ctx.attempt}


@handler("test.hang")
def hang(ctx):
    """Sleeps without reporting progress: only an interruption stops it."""
    import time

    time.sleep(ctx.input.get("seconds", 60))
    return {"slept": True}


@handler("test.big")
def big(ctx):
    """Returns a result of `input.bytes` characters."""
    return {"blob": "x" * ctx.input["bytes"]}


@handler("test.crash")
def crash(ctx):
    """Kills the worker process running it, every time (a crash loop)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
