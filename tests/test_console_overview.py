"""The console's overview: `postback status` as a page, and charts of the last hour."""

from __future__ import annotations

import re

from app.console import charts
from postback import metrics as pm
from tests.conftest import ADMIN_TOKEN
from tests.console import sign_in


def submit(client, partner, **body):
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}, **body}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def tile(html: str, label: str) -> str:
    """The value of the overview's tile named `label`."""
    found = re.search(
        r'<div class="value">(?:<a [^>]*>)?([^<]*)(?:</a>)?</div>\s*<div class="label">'
        + re.escape(label)
        + "</div>",
        html,
    )
    assert found is not None, f"no tile {label}"
    return found.group(1)


def queue_depth(html: str, queue: str) -> str:
    found = re.search(
        r"<td><code>" + re.escape(queue) + r'</code></td>\s*<td class="num">(\d+)</td>', html
    )
    assert found is not None, f"no queue {queue}"
    return found.group(1)


def test_the_overview_needs_a_session(client):
    """Without a session the overview leads to the sign-in."""
    reply = client.get("/console")
    assert reply.status_code == 303
    assert "/console/sign-in" in reply.headers["Location"]


def test_the_overview_renders_with_its_live_part_and_charts(client):
    """A signed-in admin sees the figures in a refreshing element, and three SVG charts."""
    sign_in(client, ADMIN_TOKEN)
    reply = client.get("/console")
    html = reply.get_data(as_text=True)
    assert reply.status_code == 200
    assert html.count("<h1>") == 1
    assert re.search(r'<div id="live" data-refresh="5"', html)
    for label in ("Workers alive", "Jobs processing", "Dead letters", "Open circuits"):
        assert tile(html, label) == "0"
    assert html.count("<svg ") == 3
    assert "Jobs submitted: 0 in the last 60 minutes." in html
    assert "style=" not in html and "<script>" not in html


def test_a_submitted_job_shows_in_the_counts_and_the_charts(client, partner, work, redis_client):
    """A job submitted is on its queue; once worked it is in the submitted and finished
    series, and the charts' totals and summaries say so."""
    sign_in(client, ADMIN_TOKEN)
    submit(client, partner)
    html = client.get("/console").get_data(as_text=True)
    assert queue_depth(html, "postback") == "1"
    work()
    submitted = pm.series(redis_client, "postback_jobs_submitted_total")
    finished = pm.series(redis_client, "postback_jobs_finished_total").by("status")
    # Which minute holds each depends on the clock: the totals do not.
    assert submitted.total() == 1 and list(submitted.values) == ["type=echo"]
    assert sum(finished.values["status=completed"]) == 1 and finished.total() == 1
    html = client.get("/console").get_data(as_text=True)
    assert queue_depth(html, "postback") == "0"
    assert "Jobs submitted: 1 in the last 60 minutes, at most 1 in a minute." in html
    assert "at most 1 in a minute; completed 1." in html
    assert re.search(r'<rect class="bar completed" x="[\d.]+" y="0.0" ', html)


def test_open_circuits_are_counted_and_listed(client, app):
    """Circuits opened by failures are counted, and listed with their destination as text."""
    from callbacks.breaker import CircuitBreaker

    sign_in(client, ADMIN_TOKEN)
    breaker = CircuitBreaker(app.extensions["postback"].redis)
    for dest in ("https://a.example:443", "https://b.example:443"):
        for _ in range(5):
            breaker.record("ptn_01JZZZZZZZZZZZZZZZZZZZZZZZ", dest, healthy=False)
    html = client.get("/console").get_data(as_text=True)
    assert tile(html, "Open circuits") == "2"
    assert "<td><code>https://a.example:443</code></td>" in html
    assert 'href="/console/circuits"' in html


def test_a_chart_stacks_label_values_and_summarises_them():
    """Each minute is one bar, its segments by label value, and the summary names the totals."""
    minutes = tuple(range(100, 103))
    series = pm.Series(
        "postback_jobs_finished_total",
        minutes,
        {
            "status=completed,type=echo": (1, 0, 3),
            "status=failed,type=echo": (0, 0, 1),
            "status=completed,type=other": (1, 0, 0),
        },
    )
    drawn = charts.chart("c", "Jobs finished", series, label="status")
    assert drawn.total == 6 and drawn.legend == [("completed", "5"), ("failed", "1")]
    assert drawn.summary == (
        "Jobs finished: 6 in the last 3 minutes, at most 4 in a minute; completed 5, failed 1."
    )
    tallest = [bar for bar in drawn.bars if bar.x > 200]
    assert [bar.css_class for bar in tallest] == ["bar completed", "bar failed"]
    assert sum(bar.height for bar in tallest) == charts.PLOT_HEIGHT
    assert all(bar.height > 0 for bar in drawn.bars)


def test_a_chart_without_a_label_draws_one_segment_a_minute():
    """Without a label to stack by, each minute's label sets make one bar."""
    series = pm.Series(
        "postback_jobs_submitted_total", (1, 2), {"type=a": (1, 2), "type=b": (3, 0)}
    )
    drawn = charts.chart("c", "Jobs submitted", series)
    assert [(bar.css_class, bar.height) for bar in drawn.bars] == [("bar", 100.0), ("bar", 50.0)]
    assert drawn.legend == [] and drawn.summary.endswith("at most 4 in a minute.")


def test_a_refresh_reads_and_draws_only_the_part_it_asks_for(client):
    """The script's refresh of the live figures gets no charts, and of the charts no figures."""
    sign_in(client, ADMIN_TOKEN)
    live = client.get("/console", headers={"X-Console-Refresh": "live"}).get_data(as_text=True)
    assert '<div id="live"' in live and "<svg " not in live
    drawn = client.get("/console", headers={"X-Console-Refresh": "charts"}).get_data(as_text=True)
    assert '<div id="live"' not in drawn and drawn.count("<svg ") == 3
