"""The client side of P9 (`bench.streams`): a process that holds many event streams open.

    python -m bench.stream_reader KIND BASE KEY JOBS_FILE OUT_FILE --seconds N

KIND `stream` opens `GET /v1/jobs/{id}/events` on every job of JOBS_FILE (one
id a line) and reads each stream until it closes; KIND `poll` long-polls each
job (`GET /v1/jobs/{id}?wait=30`) until it answers with the job ended. Every
message is timestamped (wall clock, the clock the API stamps `at` with) as
its bytes arrive. It prints `open` once every stream has had its first
message (long-polls are counted open from the partner's waits), and stops by itself
when every stream or long-poll is over, after `--seconds`, or on SIGTERM; then it writes
OUT_FILE (JSON: `arrivals`, one `[stream, event, arrived_at, at, progress]`
per message, `outcomes` per stream, and its own CPU seconds) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from postback.resources import raise_file_limit

# Streams being opened at once (connected, answer head not yet read): a burst of
# thousands of connects overflows the listen backlog and measures SYN retries.
OPENING_AT_ONCE = 100
LONG_POLL_SECONDS = 30
ENDED = {"completed", "failed", "cancelled"}


def parse(block: bytes) -> tuple[str | None, dict[str, Any]]:
    """(event, data) of one server-sent message; (None, {}) for a comment or `retry:`."""
    event, data = None, ""
    for line in block.decode().split("\n"):
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data += value
    return event, json.loads(data) if event is not None and data else {}


class Reader:
    """Every stream's messages and how each stream ended."""

    def __init__(self, base: str, key: str, job_ids: list[str]) -> None:
        self.base = base
        self.headers = {"Authorization": f"Bearer {key}"}
        self.job_ids = job_ids
        self.arrivals: list[list[Any]] = []
        self.outcomes: list[dict[str, Any]] = [{"status": None} for _ in job_ids]
        self.heard = 0
        self.all_open = asyncio.Event()
        self.gate = asyncio.Semaphore(OPENING_AT_ONCE)

    def _opened(self) -> None:
        self.heard += 1
        if self.heard == len(self.job_ids):
            self.all_open.set()

    async def stream(self, session: Any, index: int) -> None:
        outcome = self.outcomes[index]
        url = f"{self.base}/v1/jobs/{self.job_ids[index]}/events"
        headers = {**self.headers, "Accept": "text/event-stream"}
        first = True
        try:
            async with self.gate:
                reply = await session.get(url, headers=headers)
            async with reply:
                outcome["status"] = reply.status
                if reply.status != 200:
                    return
                pending = b""
                async for chunk in reply.content.iter_any():
                    now = time.time()
                    *blocks, pending = (pending + chunk).split(b"\n\n")
                    for block in blocks:
                        event, data = parse(block)
                        if event is None:
                            if block.startswith(b":"):  # a keep-alive: the stream is alive
                                self.arrivals.append([index, "comment", now, None, None])
                            continue
                        self.arrivals.append(
                            [index, event, now, data.get("at"), data.get("progress")]
                        )
                        outcome["ended"] = event == "end"
                        if first:
                            first = False
                            self._opened()
        except Exception as exc:  # every failure is counted, none stops the others
            outcome["error"] = type(exc).__name__
        finally:
            outcome["closed_at"] = time.time()

    async def poll(self, session: Any, index: int) -> None:
        outcome = self.outcomes[index]
        url = f"{self.base}/v1/jobs/{self.job_ids[index]}?wait={LONG_POLL_SECONDS}"
        try:
            while True:
                async with session.get(url, headers=self.headers) as reply:
                    body = await reply.read()
                    now = time.time()
                    outcome["status"] = reply.status
                    if reply.status == 429:
                        await asyncio.sleep(float(reply.headers.get("Retry-After", "1")))
                        continue
                    if reply.status != 200:
                        return
                    job = json.loads(body)
                    if job["status"] in ENDED:
                        self.arrivals.append(
                            [index, job["status"], now, job["finished_at"], job["progress"]]
                        )
                        outcome["ended"] = True
                        return
        except Exception as exc:  # every failure is counted, none stops the others
            outcome["error"] = type(exc).__name__
        finally:
            outcome["closed_at"] = time.time()

    async def run(self, kind: str, seconds: float) -> None:
        import aiohttp

        # SIGTERM: stop now, keeping what was read (the benchmark gave up waiting).
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            one = self.stream if kind == "stream" else self.poll
            tasks = [asyncio.ensure_future(one(session, n)) for n in range(len(self.job_ids))]
            announce = asyncio.ensure_future(self._announce())
            stopped: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            everything: asyncio.Future[Any] = asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.wait(
                {everything, stopped}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
            late = [task for task in tasks if not task.done()]
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            announce.cancel()
            stopped.cancel()
        for task in late:
            self.outcomes[tasks.index(task)]["error"] = "stopped"

    async def _announce(self) -> None:
        await self.all_open.wait()
        sys.stdout.write("open\n")
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=("stream", "poll"))
    parser.add_argument("base")
    parser.add_argument("key")
    parser.add_argument("jobs_file")
    parser.add_argument("out_file")
    parser.add_argument("--seconds", type=float, required=True, help="stop after this long")
    args = parser.parse_args()
    raise_file_limit()
    reader = Reader(args.base, args.key, Path(args.jobs_file).read_text().split())
    asyncio.run(reader.run(args.kind, args.seconds))
    times = os.times()
    result = {
        "arrivals": reader.arrivals,
        "outcomes": reader.outcomes,
        "cpu_seconds": times.user + times.system,
    }
    Path(args.out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
