"""I/O model benchmark: thread-per-attempt `requests` against asyncio `aiohttp`, for delivery.

    python -m bench.io_model [--quick] [--json FILE]

The delivery engine must keep at least 1,000 attempts in flight in one process
against receivers taking 1 s to answer. One `bench.receiver` process (its own
process, 1,000 ports, `--delay 1`, `--log`) answers 5,000 POSTs of a 600-byte
JSON body spread round-robin over its ports (`--quick`: 300 POSTs over 100
ports answering in 0.2 s), sent by each model in a fresh client process of its own:

- threads: `requests`, one `Session` per thread, a `ThreadPoolExecutor` of 1,000
  workers, `stream=True`, the body read and the response closed;
- asyncio: `aiohttp`, one `ClientSession` on `TCPConnector(limit=0, limit_per_host=0)`,
  an `asyncio.Semaphore(1000)` bounding the attempts in flight, each attempt in
  `asyncio.timeout(15)`.

For each: requests per second (N / wall time from the first attempt's start to
the last one's end; 1 s receivers cap it at 1,000/s), the peak of attempts in
flight actually reached, the client's CPU (user + sys, `getrusage`) per request
over that window, its peak RSS (VmHWM) at the end and its RSS before it
imported the client library; and, to explain them, the TCP connections the
client opened (its `socket.connect` calls), its context switches, the answers
the receiver logged as acknowledged and the receiver's own CPU per request.
The client's import of its library and its interpreter's start are not in the
CPU figure; they are in the RSS one. Nothing is written unless `--json FILE`
is given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TypedDict

MODELS = ("threads", "aiohttp")
IN_FLIGHT = 1000
RECEIVER_DELAY_SECONDS = 1.0
ATTEMPT_TIMEOUT_SECONDS = 15.0
# Every process this benchmark starts is gone after these, whatever happens.
READY_TIMEOUT_SECONDS = 30.0
CLIENT_TIMEOUT_SECONDS = 180.0
RECEIVER_MAX_SECONDS = 900


class Shape(TypedDict):
    """The sizes of a run."""

    requests: int
    ports: int
    receiver_delay_seconds: float


FULL = Shape(requests=5000, ports=1000, receiver_delay_seconds=RECEIVER_DELAY_SECONDS)
QUICK = Shape(requests=300, ports=100, receiver_delay_seconds=0.2)


def payload(number: int) -> bytes:
    """A Standard Webhooks-like JSON event body of about 600 bytes (`number` in it).

    Each model sends the one body of number 0, made before its clock starts.
    """
    event = {
        "type": "job.completed",
        "timestamp": "2026-11-24T12:00:00.000000Z",
        "data": {
            "job_id": f"job_{number:026d}",
            "type": "echo",
            "status": "succeeded",
            "created_at": "2026-11-24T11:59:59.000000Z",
            "finished_at": "2026-11-24T12:00:00.000000Z",
            "result": {"echo": {"order": number, "note": "x" * 330}},
        },
    }
    return json.dumps(event, separators=(",", ":")).encode()


def headers(model: str, number: int) -> dict[str, str]:
    """The headers of attempt `number`: JSON, and a webhook-id the receiver logs."""
    return {
        "content-type": "application/json",
        "webhook-id": f"msg_{model}_{number}",
        "webhook-timestamp": "1795003200",
        "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    }


def vm_kib(field: str) -> int:
    """This process's `field` (VmRSS, VmHWM) from /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


class InFlight:
    """A thread-safe count of attempts in flight and the peak it reached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def run_threads(urls: list[str], count: int) -> tuple[list[int | str], int]:
    """POST `count` bodies round-robin over `urls` from 1,000 threads; (outcomes, peak in flight).

    An outcome is the status code, or the exception's class name.
    """
    from concurrent.futures import ThreadPoolExecutor

    import requests

    local = threading.local()
    flight = InFlight()
    body = payload(0)

    def attempt(number: int) -> int | str:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        flight.enter()
        try:
            answer = session.post(
                urls[number % len(urls)],
                data=body,
                headers=headers("threads", number),
                stream=True,
                timeout=(5.0, ATTEMPT_TIMEOUT_SECONDS),
            )
            try:
                answer.content  # noqa: B018 - reads the body, so close() keeps the connection
                return answer.status_code
            finally:
                answer.close()
        except Exception as error:
            return type(error).__name__
        finally:
            flight.leave()

    with ThreadPoolExecutor(max_workers=IN_FLIGHT) as pool:
        outcomes = list(pool.map(attempt, range(count)))
    return outcomes, flight.peak


def run_aiohttp(urls: list[str], count: int) -> tuple[list[int | str], int]:
    """POST `count` bodies round-robin over `urls`, at most 1,000 at once; as `run_threads`."""
    import asyncio

    import aiohttp

    flight = InFlight()
    body = payload(0)

    async def everything() -> list[int | str]:
        bound = asyncio.Semaphore(IN_FLIGHT)
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def attempt(number: int) -> int | str:
                async with bound:
                    flight.enter()
                    try:
                        async with asyncio.timeout(ATTEMPT_TIMEOUT_SECONDS):
                            async with session.post(
                                urls[number % len(urls)],
                                data=body,
                                headers=headers("aiohttp", number),
                            ) as answer:
                                await answer.read()
                                return answer.status
                    except Exception as error:
                        return type(error).__name__
                    finally:
                        flight.leave()

            return await asyncio.gather(*(attempt(number) for number in range(count)))

    return asyncio.run(everything()), flight.peak


def count_connects() -> list[int]:
    """Count every `socket.connect` of this process from now on (both models' libraries use it).

    Returns a one-element list holding the count, updated in place.
    """
    import socket

    opened = [0]
    connect = socket.socket.connect

    def counted(self: socket.socket, address: object) -> None:
        opened[0] += 1  # under the GIL; a lost increment or two would not matter here
        connect(self, address)

    socket.socket.connect = counted  # type: ignore[method-assign]
    return opened


def child(model: str, ports: list[int], count: int) -> dict:
    """One model's measurement in this (fresh) process; its figures."""
    start_rss = vm_kib("VmRSS")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    urls = [f"http://127.0.0.1:{port}/hook" for port in ports]
    run = run_threads if model == "threads" else run_aiohttp
    opened = count_connects()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    outcomes, peak = run(urls, count)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    user = after.ru_utime - before.ru_utime
    system = after.ru_stime - before.ru_stime
    failures: dict[str, int] = {}
    for outcome in outcomes:
        if not (isinstance(outcome, int) and 200 <= outcome < 300):
            failures[str(outcome)] = failures.get(str(outcome), 0) + 1
    return {
        "requests": count,
        "ok": count - sum(failures.values()),
        "failures": failures,
        "seconds": seconds,
        "per_second": count / seconds,
        "peak_in_flight": peak,
        "connections_opened": opened[0],
        "cpu_user_seconds": user,
        "cpu_system_seconds": system,
        "cpu_us_per_request": (user + system) / count * 1e6,
        "context_switches": {
            "voluntary": after.ru_nvcsw - before.ru_nvcsw,
            "involuntary": after.ru_nivcsw - before.ru_nivcsw,
        },
        "rss_start_mib": start_rss / 1024,
        "rss_peak_mib": vm_kib("VmHWM") / 1024,
    }


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 (all bound at once, then released)."""
    import socket

    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return sorted(sock.getsockname()[1] for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_receiver(
    ports: list[int], log: Path, stderr: Path, delay: float = RECEIVER_DELAY_SECONDS
) -> subprocess.Popen:
    """`bench.receiver` on `ports` (`delay` s answers, 2xx logged to `log`), once it is ready.

    Its own process group (for `stop_group`); raises RuntimeError, with the
    receiver stopped, if it is not ready in READY_TIMEOUT_SECONDS.
    """
    from bench.common import ROOT, clean_env, stop_group, tail

    command = [
        sys.executable,
        "-m",
        "bench.receiver",
        "--ports",
        ",".join(map(str, ports)),
        "--delay",
        str(delay),
        "--log",
        str(log),
        "--max-seconds",
        str(RECEIVER_MAX_SECONDS),
    ]
    with stderr.open("wb") as errors:
        process = subprocess.Popen(
            command,
            env=clean_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT_SECONDS)
        line = process.stdout.readline() if readable else b""
        if line.strip() != b"ready":
            raise RuntimeError(f"the receiver is not ready ({line!r}):\n{tail(stderr)}")
    except BaseException:
        stop_group(process)
        raise
    return process


def measure(model: str, ports: list[int], count: int, stderr: Path) -> dict:
    """Run `model` in a fresh client process (bounded by CLIENT_TIMEOUT_SECONDS); its figures."""
    from bench.common import ROOT, clean_env, stop_group, tail

    command = [
        sys.executable,
        "-m",
        "bench.io_model",
        "--child",
        model,
        "--ports",
        ",".join(map(str, ports)),
        "--count",
        str(count),
    ]
    with stderr.open("wb") as errors:
        process = subprocess.Popen(
            command,
            env=clean_env(),
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,
        )
    try:
        out, _ = process.communicate(timeout=CLIENT_TIMEOUT_SECONDS)
    finally:
        stop_group(process)
    if process.returncode != 0:
        raise RuntimeError(f"{model} client exited {process.returncode}:\n{tail(stderr)}")
    return json.loads(out.decode().strip().splitlines()[-1])


def acknowledged(log: Path, model: str) -> int:
    """How many distinct webhook-ids of `model` the receiver logged as answered 2xx."""
    prefix = f"msg_{model}_"
    ids = set()
    for line in log.read_text().splitlines():
        webhook_id = line.rpartition(" ")[2]
        if webhook_id.startswith(prefix):
            ids.add(webhook_id)
    return len(ids)


def main(quick: bool = False) -> dict:
    """Measure both models against one receiver; {"shape": ..., "threads": ..., "aiohttp": ...}.

    Every process it starts is stopped before it returns or raises.
    """
    import tempfile

    from bench.common import stop_group

    shape = QUICK if quick else FULL
    results: dict = {
        "shape": {
            **shape,
            "in_flight": IN_FLIGHT,
            "body_bytes": len(payload(0)),
        }
    }
    with tempfile.TemporaryDirectory(prefix="postback-io-model-") as scratch:
        work = Path(scratch)
        ports = free_ports(shape["ports"])
        receiver = start_receiver(
            ports, work / "received.log", work / "receiver.err", shape["receiver_delay_seconds"]
        )
        try:
            for model in MODELS:
                cpu_before = process_cpu_seconds(receiver.pid)
                figures = measure(model, ports, shape["requests"], work / f"{model}.err")
                receiver_cpu = process_cpu_seconds(receiver.pid) - cpu_before
                figures["receiver_acknowledged"] = acknowledged(work / "received.log", model)
                figures["receiver_cpu_us_per_request"] = receiver_cpu / shape["requests"] * 1e6
                results[model] = figures
        finally:
            stop_group(receiver)
    return results


def report(results: dict) -> str:
    """The figures of `main` as lines of text."""
    shape = results["shape"]
    ceiling = shape["in_flight"] / shape["receiver_delay_seconds"]
    lines = [
        f"I/O model: {shape['requests']:,} POSTs ({shape['body_bytes']}-byte JSON) round-robin "
        f"over {shape['ports']:,} ports, receiver answering in {shape['receiver_delay_seconds']:g}"
        f" s, at most {shape['in_flight']:,} in flight (ceiling {ceiling:,.0f}/s)",
    ]
    names = {"threads": "threads + requests", "aiohttp": "asyncio + aiohttp "}
    for model in MODELS:
        if model not in results:
            continue
        r = results[model]
        failed = f", failures {r['failures']}" if r["failures"] else ""
        lines.append(
            f"  {names[model]}: {r['per_second']:,.0f} req/s, peak in flight "
            f"{r['peak_in_flight']:,}, client CPU {r['cpu_us_per_request']:,.0f} us/req, "
            f"client peak RSS {r['rss_peak_mib']:.1f} MiB (at start {r['rss_start_mib']:.1f})"
        )
        lines.append(
            f"      {r['ok']:,} ok, {r['receiver_acknowledged']:,} logged by the receiver, "
            f"{r['connections_opened']:,} connections opened, CPU user/sys "
            f"{r['cpu_user_seconds']:.2f}/{r['cpu_system_seconds']:.2f} s, receiver CPU "
            f"{r['receiver_cpu_us_per_request']:,.0f} us/req{failed}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.io_model", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 POSTs over 100 ports")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    # A client process of one model (started by `measure`): prints its figures as JSON.
    parser.add_argument("--child", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--ports", default="", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ports = [int(port) for port in args.ports.split(",")]
        print(json.dumps(child(args.child, ports, args.count)), flush=True)
    else:
        outcome = main(args.quick)
        print(report(outcome))
        if args.json:
            args.json.write_text(json.dumps({"io_model": outcome}, indent=2))
