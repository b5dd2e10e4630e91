"""Template filters of the console and the portal: times and JSON as people read them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Blueprint

# A value longer than this (as JSON text) is shown collapsed, behind its size.
LARGE_CHARS = 2000


def when(value: Any) -> str:
    """An epoch time or an RFC 3339 string as `2026-12-07 04:16:37 UTC`; "" for none."""
    if value in (None, ""):
        return ""
    if isinstance(value, int | float):
        moment = dt.datetime.fromtimestamp(float(value), dt.UTC)
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return str(value)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    """`value` as indented JSON text (escaped by the template like any other text)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def is_large(text: str) -> bool:
    return len(text) > LARGE_CHARS


def duration(seconds: Any) -> str:
    """Seconds as `12 ms` or `3.4 s`; "" for none."""
    if seconds in (None, ""):
        return ""
    value = float(seconds)
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def register(bp: Blueprint) -> None:
    for name, function in (
        ("when", when),
        ("pretty_json", pretty_json),
        ("duration", duration),
    ):
        bp.add_app_template_filter(function, name)
    bp.add_app_template_test(is_large, "large")
