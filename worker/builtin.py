"""The built-in job types: `echo`, `sleep` and `report`."""

from __future__ import annotations

import math
import time
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from worker.context import JobContext
from worker.registry import handler


@handler("echo")
def echo(ctx: JobContext) -> dict[str, Any]:
    """The result is the input."""
    return ctx.input


class SleepInput(Schema):
    seconds = fields.Float(
        required=True,
        validate=validate.Range(min=0, max=3600),
        allow_nan=False,
    )


@handler("sleep", input_schema=SleepInput(), timeout_seconds=3700)
def sleep(ctx: JobContext) -> dict[str, Any]:
    """Sleep `input.seconds` (0-3600), reporting progress as it goes."""
    seconds = float(ctx.input["seconds"])
    deadline = time.monotonic() + seconds
    step = max(0.1, seconds / 20)
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step, left))
        ctx.progress(100 * (1 - max(0.0, deadline - time.monotonic()) / seconds))
    return {"slept": ctx.input["seconds"]}


class ReportInput(Schema):
    rows = fields.List(fields.Dict(), required=True, validate=validate.Length(max=100_000))
    value = fields.String(required=True, validate=validate.Length(min=1, max=200))
    group_by = fields.String(load_default=None, validate=validate.Length(min=1, max=200))

    @validates_schema
    def numeric_values(self, data: dict[str, Any], **kwargs: Any) -> None:
        bad = [
            index
            for index, row in enumerate(data.get("rows", []))
            if data["value"] in row and not _is_number(row[data["value"]])
        ]
        if bad:
            raise ValidationError(
                f"{data['value']!r} is not a number in rows {bad[:10]}", field_name="rows"
            )


def _is_number(value: Any) -> bool:
    # An int is checked as it is: math.isfinite would convert it, and overflow past 1.8e308.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


@handler("report", input_schema=ReportInput())
def report(ctx: JobContext) -> dict[str, Any]:
    """count, sum, min, max and mean of `input.value` over `input.rows`, per `input.group_by`.

    Rows without the value field are skipped; rows without the group field fall
    in the group `null`.
    """
    rows = ctx.input["rows"]
    value_field = ctx.input["value"]
    group_field = ctx.input.get("group_by")
    groups: dict[str, dict[str, float]] = {}
    for index, row in enumerate(rows):
        if value_field not in row:
            continue
        value = row[value_field]
        key = (
            "null" if group_field is None or row.get(group_field) is None else str(row[group_field])
        )
        stats = groups.setdefault(key, {"count": 0, "sum": 0, "min": value, "max": value})
        stats["count"] += 1
        stats["sum"] += value
        stats["min"] = min(stats["min"], value)
        stats["max"] = max(stats["max"], value)
        if index % 10_000 == 0:
            ctx.progress(100 * index / len(rows))
    result = [
        {"group": key, **stats, "mean": stats["sum"] / stats["count"]}
        for key, stats in sorted(groups.items())
    ]
    return {"value": value_field, "group_by": group_field, "rows": len(rows), "groups": result}
