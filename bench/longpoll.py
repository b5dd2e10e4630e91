"""Long-poll benchmark (P8): submissions while 2,000 long-polls are open, ÷ the same without.

    python -m bench.longpoll [--quick] [--waits 2000]

Postback's API (`postback serve`, 2 gevent workers) on the embedded Redis. A
holder process keeps `--waits` long-polls open (`GET /v1/jobs/{id}?wait=N`,
N from 20 to 30 s, on queued jobs that no worker runs, re-sent as each one
answers, after `Retry-After` when refused), spread over
partners of 100 waits each (the default POSTBACK_PARTNER_MAX_WAITS). The P1
load generator then measures `POST /v1/jobs` at saturation, and at a fixed
rate of half the saturating rate without long-polls (for the p99 of a loaded
but not saturated API), with and without the holder; the order alternates
from run to run, and each phase starts once no long-poll of the one before is
still held. The API processes' memory (RSS) is read with and without.

Goals: submissions/s with ÷ without >= 0.9; p99 with them at the fixed rate <= 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis
import requests

from bench.accept import JOB, LoadGenerator, Target, _partner_key, _postback, _summary
from bench.common import clean_env, embedded_redis, spawn, stop_group, tail
from postback.embedded import free_port

WAITS_PER_PARTNER = 100


def api_rss_mib(master_pid: int) -> float:
    """Resident memory of the gunicorn master's worker processes, in MiB."""
    total_kib = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == master_pid and "VmRSS" in fields:
            total_kib += int(fields["VmRSS"].split()[0])
    return total_kib / 1024


async def _hold(base: str, keys: list[str], job_ids: list[str], waits: int) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(number: int) -> None:
            partner = number // WAITS_PER_PARTNER
            headers = {"Authorization": f"Bearer {keys[partner]}"}
            while True:
                # As clients do: waits of differing lengths (so they do not all end and
                # come back at once), and a refusal's Retry-After honoured.
                url = f"{base}/v1/jobs/{job_ids[partner]}?wait={random.randint(20, 30)}"
                pause = 1.0
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.get(url, headers=headers) as reply:
                        await reply.read()
                        if reply.status == 200:
                            continue
                        pause = float(reply.headers.get("Retry-After", "1"))
                await asyncio.sleep(pause)

        await asyncio.gather(*(one(n) for n in range(waits)))


def hold_main(base: str, keys_file: str, waits: int) -> None:
    """The holder process: `waits` long-polls, re-sent as they answer, until killed."""
    lines = Path(keys_file).read_text().split()
    keys, job_ids = lines[0::2], lines[1::2]
    asyncio.run(_hold(base, keys, job_ids, waits))


@contextlib.contextmanager
def holder(base: str, keys_file: Path, waits: int, log: Path) -> Iterator[subprocess.Popen]:
    command = [sys.executable, "-m", "bench.longpoll", "--hold", base, str(keys_file)]
    process = spawn([*command, "--waits", str(waits)], clean_env(), log)
    try:
        yield process
    finally:
        stop_group(process)


def open_waits(client: redis.Redis) -> int:
    """Long-polls held now: the partners' wait tokens that have not lapsed."""
    now = f"({time.time()!r}"
    return sum(client.zcount(key, now, "+inf") for key in client.scan_iter("pb:waits:*"))


def wait_until_closed(client: redis.Redis) -> None:
    """Until the last phase's long-polls have given their places back."""
    deadline = time.monotonic() + 60
    while open_waits(client):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{open_waits(client)} long-polls still open 60 s after a phase")
        time.sleep(0.2)


def wait_until_open(client: redis.Redis, waits: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while open_waits(client) < waits:
        if process.poll() is not None:
            raise RuntimeError(f"the long-poll holder exited:\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{open_waits(client)} of {waits} long-polls open after 120 s")
        time.sleep(0.2)


def partners(base: str, admin_token: str, count: int, keys_file: Path) -> list[str]:
    """`count` partners, each with one queued job to wait on; written to `keys_file`."""
    lines, keys = [], []
    for _ in range(count):
        key = _partner_key(base, admin_token)
        reply = requests.post(
            f"{base}/v1/jobs",
            data=JOB,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=10,
        )
        reply.raise_for_status()
        lines.append(f"{key} {reply.json()['id']}")
        keys.append(key)
    keys_file.write_text("\n".join(lines) + "\n")
    return keys


def main(quick: bool = False, waits: int = 2000, data_parent: str = ".") -> dict:
    seconds, warmup, repeats = (1.0, 0.25, 1) if quick else (8.0, 1.0, 3)
    with embedded_redis(data_parent) as (url, data), redis.Redis.from_url(url) as client:
        admin_token = secrets.token_hex(16)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        keys_file = data / "waiters.txt"
        generator = LoadGenerator()
        runs: dict[str, list[dict]] = {"without": [], "with": []}
        memory: dict[str, list[float]] = {"without": [], "with": []}
        try:
            # No worker runs: the submissions only pile up, which is not what is measured.
            unbounded = {
                "POSTBACK_MAX_BACKLOG": "10000000",
                "POSTBACK_PARTNER_MAX_BACKLOG": "10000000",
            }
            with _postback(
                url, "everysec", port, admin_token, data / "api.log", **unbounded
            ) as api:
                # `postback serve` is gunicorn's master; the API processes are its children.
                master = api.pid
                count = -(-waits // WAITS_PER_PARTNER)
                partners(base, admin_token, count, keys_file)
                submitter = _partner_key(base, admin_token)
                target = Target("POST", f"{base}/v1/jobs", 202, JOB, submitter)
                timing = {"seconds": seconds, "warmup": warmup}
                rate = None
                for number in range(repeats):
                    order = ("without", "with") if number % 2 == 0 else ("with", "without")
                    for phase in order:
                        # Each phase starts with no long-poll of the one before still open:
                        # a holder that starts while the last one's waits are being
                        # released measures that release, not 2,000 open waits.
                        wait_until_closed(client)
                        with contextlib.ExitStack() as stack:
                            if phase == "with":
                                log = data / f"holder-{number}.log"
                                process = stack.enter_context(holder(base, keys_file, waits, log))
                                wait_until_open(client, waits, process, log)
                            memory[phase].append(api_rss_mib(master))
                            full = generator.measure(target, **timing)
                            if rate is None and phase == "without":
                                rate = full["per_second"] / 2
                            paced = generator.measure(target, rate=rate, **timing) if rate else {}
                            runs[phase].append({"full": full, "paced": paced})
        finally:
            generator.close()
    paired = [
        (w["full"]["per_second"], o["full"]["per_second"])
        for w, o in zip(runs["with"], runs["without"], strict=True)
    ]
    return {
        "waits": waits,
        "rate": rate,
        "per_second": {p: _summary([r["full"]["per_second"] for r in runs[p]]) for p in runs},
        "ratio": _summary([w / o for w, o in paired]),
        "p99_ms_saturated": {p: _summary([r["full"]["p99_ms"] for r in runs[p]]) for p in runs},
        "p99_ms_at_rate": {
            p: _summary([r["paced"]["p99_ms"] for r in runs[p] if r["paced"]]) for p in runs
        },
        "errors": sum(r[kind]["errors"] for p in runs for r in runs[p] for kind in r if r[kind]),
        "api_rss_mib": {p: _summary(memory[p]) for p in memory},
    }


def report(results: dict) -> str:
    def median(figure: dict) -> float:
        return statistics.median(figure["runs"])

    ps, p99, paced, rss = (
        results["per_second"],
        results["p99_ms_saturated"],
        results["p99_ms_at_rate"],
        results["api_rss_mib"],
    )
    return "\n".join(
        [
            f"P8 long-polls: {results['waits']} open while submitting",
            f"   submissions/s without {median(ps['without']):.0f}, with {median(ps['with']):.0f}: "
            f"ratio {results['ratio']['median']:.2f} (runs "
            + ", ".join(f"{r:.2f}" for r in results["ratio"]["runs"])
            + "; goal >= 0.9)",
            f"   p99 saturated: without {median(p99['without']):.1f} ms, "
            f"with {median(p99['with']):.1f} ms",
            f"   p99 at {results['rate']:.0f}/s: without {median(paced['without']):.1f} ms, "
            f"with {median(paced['with']):.1f} ms (goal <= 50)",
            f"   API memory (RSS, all workers): without {median(rss['without']):.0f} MiB, "
            f"with {median(rss['with']):.0f} MiB; failed requests: {results['errors']}",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--waits", type=int, default=2000)
    parser.add_argument("--hold", nargs=2, metavar=("BASE", "KEYS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold_main(args.hold[0], args.hold[1], args.waits)
    else:
        print(report(main(args.quick, args.waits)))
