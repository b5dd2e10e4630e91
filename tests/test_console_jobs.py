"""The console's jobs: search by id, partner, status and time; one job's page."""

from __future__ import annotations

import html as html_lib
import re
from datetime import UTC, datetime

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.console import sign_in
from tests.receiver import Reply

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


def submit(client, partner, **body):
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}, **body}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def listed(html: str) -> list[str]:
    """The job ids a search page lists, in order."""
    return re.findall(r'href="/console/jobs/(job_[0-9A-Z]{26})"', html)


def page(client, url: str, status: int = 200) -> str:
    reply = client.get(url)
    assert reply.status_code == status, reply.get_data(as_text=True)
    return reply.get_data(as_text=True)


def local(moment: float) -> str:
    """`moment` as a `datetime-local` input sends it (UTC, to the second)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture
def admin(client):
    sign_in(client, ADMIN_TOKEN)
    return client


def test_the_pages_need_a_session(client, partner):
    """Without a session the search and a job's page lead to the sign-in."""
    job_id = submit(client, partner)
    for url in ("/console/jobs", f"/console/jobs/{job_id}"):
        reply = client.get(url)
        assert reply.status_code == 303 and "/console/sign-in" in reply.headers["Location"]


def test_without_a_partner_the_search_asks_for_one(admin, partner):
    """The search page lists the partners to choose from and asks for a partner or an id."""
    html = page(admin, "/console/jobs?partner_id=&status=&since=&until=")
    assert "Choose a partner to list its jobs, or enter a job id." in html
    assert f'<option value="{partner["id"]}">Acme ({partner["id"]})</option>' in html
    assert html.count("<h1>") == 1 and listed(html) == []


def test_search_by_partner_pages_newest_first(admin, partner, client, admin_headers):
    """A partner's jobs are listed newest first, a page at a time, without another's."""
    other = client.post("/v1/admin/partners", json={"name": "Other"}, headers=admin_headers).json
    other_job = submit(
        client, {"headers": {"Authorization": f"Bearer {other['api_key']}"}}, input={}
    )
    made = [submit(client, partner, input={"n": n}) for n in range(3)]
    html = page(admin, f"/console/jobs?partner_id={partner['id']}&limit=2")
    assert listed(html) == made[::-1][:2]
    following = re.search(r'<a href="([^"]+)" rel="next">', html)
    assert following is not None
    rest = page(admin, html_lib.unescape(following.group(1)))
    assert listed(rest) == [made[0]] and 'rel="next"' not in rest
    assert other_job not in html + rest


def test_search_by_status(admin, partner, work):
    """The status filter keeps only jobs in that status."""
    failed = submit(admin, partner, type="test.fail")
    completed = submit(admin, partner)
    work()
    queued = submit(admin, partner)
    base = f"/console/jobs?partner_id={partner['id']}"
    assert listed(page(admin, base + "&status=failed")) == [failed]
    assert listed(page(admin, base + "&status=completed")) == [completed]
    assert listed(page(admin, base + "&status=queued")) == [queued]


def made_at(job_id: str) -> float:
    """The time (epoch seconds, to the millisecond) a job's id was made at."""
    millis = 0
    for char in job_id.removeprefix("job_")[:10]:
        millis = millis * 32 + "0123456789ABCDEFGHJKMNPQRSTVWXYZ".index(char)
    return millis / 1000


def test_search_by_time(admin, partner):
    """Since keeps jobs created at or after it, until those created before it (UTC)."""
    made = [submit(admin, partner, input={"n": n}) for n in range(4)]
    middle = made_at(made[2])
    stamp = datetime.fromtimestamp(middle, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
    base = f"/console/jobs?partner_id={partner['id']}"
    newest_first = made[::-1]
    since = [j for j in newest_first if made_at(j) >= middle]
    until = [j for j in newest_first if made_at(j) < middle]
    assert listed(page(admin, f"{base}&since={stamp}")) == since
    assert listed(page(admin, f"{base}&until={stamp}")) == until
    assert listed(page(admin, f"{base}&since={stamp}&until={stamp}")) == []
    hour_ago, in_an_hour = local(middle - 3600), local(middle + 3600)
    assert listed(page(admin, f"{base}&since={hour_ago}&until={in_an_hour}")) == newest_first
    assert listed(page(admin, f"{base}&since={in_an_hour}")) == []
    assert listed(page(admin, f"{base}&until={hour_ago}")) == []


def test_the_listing_bounds_by_time_and_pages_within_them(app):
    """`Listing.page` with since and until returns the jobs made in that window, newest
    first, and its cursor pages within the window."""
    from postback import ids
    from worker.model import Job, JobStatus
    from worker.records import job_key, partner_index

    jobs = app.extensions["postback"].jobs
    start = 1_700_000_000.0
    made = []
    for minute in range(6):
        job = Job(
            id=ids.new_id("job", at=start + 60 * minute),
            partner_id="ptn_x",
            type="echo",
            status=JobStatus.QUEUED,
            created_at=start + 60 * minute,
        )
        jobs.redis.hset(job_key(job.id), mapping=job.to_hash())
        jobs.redis.zadd(partner_index("ptn_x"), {job.id: 0})
        made.append(job.id)
    window = {"since": start + 60, "until": start + 240}  # minutes 1, 2 and 3

    def one_page(cursor):
        found, following = jobs.page(
            "ptn_x",
            status=None,
            limit=2,
            cursor=cursor,
            since=window["since"],
            until=window["until"],
        )
        return [read.job.id for read in found], following

    first, cursor = one_page(None)
    assert first == [made[3], made[2]] and cursor == made[2]
    rest, cursor = one_page(cursor)
    assert rest == [made[1]] and cursor is None
    everything, _ = jobs.page("ptn_x", status=None, limit=10, cursor=None)
    assert [read.job.id for read in everything] == made[::-1]


def test_a_well_formed_id_goes_to_its_page(admin, partner):
    """An id typed in the search goes to its job's page; an unknown or malformed one is a 404."""
    job_id = submit(admin, partner)
    reply = admin.get(f"/console/jobs?id={job_id}")
    assert reply.status_code == 303 and reply.headers["Location"].endswith(
        f"/console/jobs/{job_id}"
    )
    unknown = "job_" + "0" * 26
    assert "no job " + unknown in page(admin, f"/console/jobs?id={unknown}", 404)
    page(admin, "/console/jobs?id=nonsense", 404)
    page(admin, f"/console/jobs/{unknown}", 404)
    page(admin, "/console/jobs/nonsense", 404)


@pytest.mark.parametrize(
    "query",
    [
        "status=nonsense",
        "limit=0",
        "limit=abc",
        "cursor=garbage",
        "since=yesterday",
        "until=2026-13-45T99:00",
        "color=blue",
    ],
)
def test_bad_filters_are_a_422_page(admin, partner, query, redis_client):
    """A filter the API's query schema refuses is a 422 page naming the field; nothing changes."""
    before = {k for k in redis_client.scan_iter() if not k.startswith(b"pb:console")}
    reply = admin.get(f"/console/jobs?partner_id={partner['id']}&{query}")
    html = reply.get_data(as_text=True)
    assert reply.status_code == 422 and "<h1>" in html
    assert f"<code>{query.split('=')[0]}</code>" in html
    after = {k for k in redis_client.scan_iter() if not k.startswith(b"pb:console")}
    assert after == before


def test_an_unknown_partner_is_a_404_page(admin):
    """Searching the jobs of a partner that does not exist is a 404 page."""
    assert "no partner ptn_nobody" in page(admin, "/console/jobs?partner_id=ptn_nobody", 404)


def test_a_job_page_shows_its_fields_timeline_input_and_result(admin, partner, work):
    """A completed job's page shows its fields, partner link, timeline, input and result."""
    job_id = submit(admin, partner, input={"n": 7})
    work()
    html = page(admin, f"/console/jobs/{job_id}")
    assert html.count("<h1>") == 1 and job_id in html
    assert f'href="/console/jobs?partner_id={partner["id"]}"' in html
    assert '<span class="status status-completed">completed</span>' in html
    assert "&#34;n&#34;: 7" in html or "&quot;n&quot;: 7" in html
    for event in ("accepted", "enqueued", "started", "finished"):
        assert f"<td>{event}</td>" in html


def test_a_large_result_is_said_to_be_behind_a_signed_link(admin, partner, work, settings):
    """A result too large to show inline is named as stored behind a signed link."""
    job_id = submit(admin, partner, type="test.big", input={"bytes": settings.inline_result_bytes})
    work()
    html = page(admin, f"/console/jobs/{job_id}")
    assert "stored behind a signed link" in html
    assert "x" * 100 not in html


def test_a_dead_webhook_shows_its_attempts_and_links_its_dead_letter(
    admin, partner, receiver, work, admin_headers
):
    """A webhook that died shows each attempt's status code, duration and error, and a link
    to its dead letter."""
    receiver.reply(Reply(410))
    job_id = submit(admin, partner, callback_url=receiver.url)
    work()
    (letter,) = admin.get("/v1/admin/dead-letters", headers=admin_headers).json["items"]
    html = page(admin, f"/console/jobs/{job_id}")
    assert '<span class="status status-dead">dead</span>' in html
    assert f'href="/console/dead-letters/{letter["id"]}"' in html
    assert '<td class="num">410</td>' in html and "<code>HTTP 410</code>" in html
    assert re.search(r'<td class="num">\d+ ms</td>', html)
    assert f"<code>{receiver.url}</code>" in html
    assert f'href="{receiver.url}"' not in html


def test_hostile_values_render_escaped(admin, partner, receiver, work):
    """Markup in a job's input, callback URL, result and error appears only escaped."""
    url = receiver.url + "?q=" + IMG.replace(" ", "%20") + SCRIPT
    hostile = {"quota": SCRIPT + IMG, "note": IMG}
    failed = submit(admin, partner, type="test.fail", input=hostile, callback_url=url)
    echoed = submit(admin, partner, input=hostile)
    work()
    for job_id in (failed, echoed):
        html = page(admin, f"/console/jobs/{job_id}")
        assert SCRIPT not in html and "<img src=x" not in html and "onerror=alert(1)>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
    failed_html = page(admin, f"/console/jobs/{failed}")
    assert "quota of &lt;script&gt;" in failed_html  # the error message
    assert "?q=&#34;&gt;&lt;img" in failed_html or "?q=&quot;&gt;&lt;img" in failed_html
    listing = page(admin, f"/console/jobs?partner_id={partner['id']}")
    assert SCRIPT not in listing and "<img src=x" not in listing


def test_a_hostile_partner_name_renders_escaped(admin, admin_headers):
    """A partner named with markup appears escaped in the menu and the listing's heading."""
    made = admin.post("/v1/admin/partners", json={"name": SCRIPT + IMG}, headers=admin_headers)
    assert made.status_code == 201
    html = page(admin, f"/console/jobs?partner_id={made.json['id']}")
    assert SCRIPT not in html and "<img src=x" not in html
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") == 2
