"""The handler registry and the built-in job types."""

from __future__ import annotations

import pytest

from worker import HandlerError, handler, registry
from worker.builtin import report, sleep
from worker.context import JobContext


def context(data, seen=None):
    return JobContext("job_test", data, (seen if seen is not None else []).append)


def test_handler_modules_and_builtins_are_loaded():
    """Loading registers the built-ins and the modules named in the settings."""
    registry.load(["tests.handlers"])
    assert {"echo", "sleep", "report", "test.fail"} <= set(registry.names())


def test_a_bad_handler_module_is_a_clear_error():
    """A module that does not import raises HandlerError naming it."""
    with pytest.raises(HandlerError, match="no_such_module"):
        registry.load(["no_such_module"])


def test_two_functions_cannot_claim_one_type():
    """Registering a second, different function for a taken type fails."""
    with pytest.raises(HandlerError, match="echo"):
        handler("echo")(lambda ctx: None)


def test_report_groups_count_sum_min_max_mean():
    """`report` aggregates the value field per group and skips rows without it."""
    rows = [{"k": "a", "v": 1}, {"k": "a", "v": 3}, {"k": "b", "v": 2.5}, {"k": "b"}, {"v": 4}]
    result = report(context({"rows": rows, "value": "v", "group_by": "k"}))
    assert result["rows"] == 5
    assert result["groups"] == [
        {"group": "a", "count": 2, "sum": 4, "min": 1, "max": 3, "mean": 2.0},
        {"group": "b", "count": 1, "sum": 2.5, "min": 2.5, "max": 2.5, "mean": 2.5},
        {"group": "null", "count": 1, "sum": 4, "min": 4, "max": 4, "mean": 4.0},
    ]


def test_sleep_reports_progress_and_its_duration():
    """`sleep` reports rising progress up to 100 and returns the seconds slept."""
    seen: list[int] = []
    assert sleep(context({"seconds": 0.3}, seen)) == {"slept": 0.3}
    assert seen == sorted(seen) and seen[-1] == 100


def test_progress_is_clamped():
    """ctx.progress keeps values within 0..100."""
    seen: list[int] = []
    ctx = context({}, seen)
    ctx.progress(-5)
    ctx.progress(250)
    assert seen == [0, 100]
