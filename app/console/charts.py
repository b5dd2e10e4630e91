"""Bar charts of per-minute counters, laid out on the server for an inline SVG.

A pure function of a `postback.metrics.Series`: the template draws each `Bar`
as a `<rect>` from its numbers and class, so a chart needs no script and no
style attribute. One bar per minute, stacked by label value (each segment's
class is its value, e.g. `bar failed`, which the stylesheet colours).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from postback.metrics import Series, parse_label_string

WIDTH = 360
HEIGHT = 120
# Room under the bars for the axis and its two labels.
PLOT_HEIGHT = 100
GAP = 1


@dataclass(frozen=True)
class Bar:
    """One segment of one minute's bar, in SVG user units; `title` says what it counts."""

    x: float
    y: float
    width: float
    height: float
    css_class: str
    title: str


@dataclass(frozen=True)
class Chart:
    """A chart's title, the total of its span, a text summary (for screen readers and
    the SVG's `<title>`), its totals by label value, and its bars."""

    id: str
    title: str
    total: float
    summary: str
    parts: tuple[tuple[str, float], ...]
    bars: tuple[Bar, ...]
    width: int = WIDTH
    height: int = HEIGHT
    plot_height: int = PLOT_HEIGHT

    @property
    def total_text(self) -> str:
        return _number(self.total)

    @property
    def legend(self) -> list[tuple[str, str]]:
        """Each label value with its total, as text; empty for a chart without labels."""
        return [(name, _number(value)) for name, value in self.parts if name]


def chart(id: str, title: str, series: Series, *, label: str | None = None) -> Chart:
    """`series` as bars, one per minute; with `label`, each bar stacked by that label's value."""
    if label:
        grouped = series.by(label)
    else:  # one segment a minute, whatever the label sets
        grouped = Series(series.name, series.minutes, {"": series.per_minute()})
    columns = grouped.per_minute()
    count = len(series.minutes)
    peak = max(columns, default=0)
    slot = WIDTH / max(count, 1)
    bars: list[Bar] = []
    parts: list[tuple[str, float]] = []
    for labels, values in grouped.values.items():
        name = parse_label_string(labels).get(label, "") if label else ""
        parts.append((name, sum(values)))
    for i, minute in enumerate(series.minutes):
        bottom = float(PLOT_HEIGHT)
        for (name, _), values in zip(parts, grouped.values.values(), strict=True):
            value = values[i]
            if not value or not peak:
                continue
            height = PLOT_HEIGHT * value / peak
            bottom -= height
            what = f"{name}: {_number(value)}" if name else _number(value)
            bars.append(
                Bar(
                    x=round(i * slot + GAP / 2, 2),
                    y=round(bottom, 2),
                    width=round(max(slot - GAP, 0.5), 2),
                    height=round(height, 2),
                    css_class=f"bar {name}".strip(),
                    title=f"{_clock(minute)} UTC, {what}",
                )
            )
    total = sum(columns)
    return Chart(
        id=id,
        title=title,
        total=total,
        summary=_summary(title, total, count, peak, parts),
        parts=tuple(parts),
        bars=tuple(bars),
    )


def _summary(
    title: str, total: float, minutes: int, peak: float, parts: list[tuple[str, float]]
) -> str:
    text = f"{title}: {_number(total)} in the last {minutes} minutes"
    if not total:
        return text + "."
    text += f", at most {_number(peak)} in a minute"
    named = [f"{name} {_number(value)}" for name, value in parts if name and value]
    return text + (f"; {', '.join(named)}." if named else ".")


def _clock(epoch_minute: int) -> str:
    return dt.datetime.fromtimestamp(epoch_minute * 60, dt.UTC).strftime("%H:%M")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"
