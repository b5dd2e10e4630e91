"""Redis CPU per job through the whole pipeline, read on the primary (P10's sizing figure).

`measure` runs jobs through a caller's pipeline (submitted through the API, run,
webhook delivered) and reads the primary's `INFO cpu` (used_cpu_sys +
used_cpu_user: every thread of the server) and `INFO commandstats` around the run,
and around an idle spell just before it with the same processes running, whose
rate it takes off. A second run with every command in the SLOWLOG splits the
time spent executing commands by script, each named by the constant of
Postback's source it was made from, and by command. (`INFO commandstats` cannot:
it counts every script as `evalsha`, and a command a script runs under its own
name as well as in the script's time.)
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, cast

import redis

from bench.common import ROOT

# Where Postback's Lua scripts are (to name the scripts the SLOWLOG shows).
SOURCE_PACKAGES = ("app", "worker", "callbacks", "postback")
# The rows of each breakdown in the report.
TOP = 8


def measure(
    primary: redis.Redis,
    replicas: list[redis.Redis],
    run: Callable[[int], object],
    *,
    jobs: int,
    attributed_jobs: int,
    idle_seconds: float,
) -> dict:
    """The primary's CPU and commands per job, net of idle, over `run(jobs)`, which takes
    that many jobs through the pipeline; then each script's share over
    `run(attributed_jobs)` with the SLOWLOG on. The replicas' CPU per job beside it."""
    with window(primary, replicas) as idle:
        time.sleep(idle_seconds)
    with window(primary, replicas) as measured:
        run(jobs)
    return {
        "jobs": jobs,
        "idle": idle,
        "run": measured,
        "per_job": _per_job(idle, measured, jobs),
        "scripts": _attributed(primary, run, attributed_jobs),
    }


def _cpu_seconds(client: redis.Redis) -> float:
    info = cast(dict, client.info("cpu"))
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _commands(client: redis.Redis) -> dict[str, dict[str, int]]:
    """`INFO commandstats` as {command: {calls, usec}}."""
    stats = cast(dict, client.info("commandstats"))
    return {
        name.removeprefix("cmdstat_"): {"calls": int(row["calls"]), "usec": int(row["usec"])}
        for name, row in stats.items()
    }


@contextlib.contextmanager
def window(primary: redis.Redis, replicas: list[redis.Redis]) -> Iterator[dict]:
    """What the primary (and each replica) spent while the block ran: filled in on exit."""
    spent: dict[str, Any] = {}
    primary.config_resetstat()
    before = [_cpu_seconds(client) for client in (primary, *replicas)]
    started = time.monotonic()
    yield spent
    spent["seconds"] = time.monotonic() - started
    after = [_cpu_seconds(client) for client in (primary, *replicas)]
    spent["commands"] = _commands(primary)
    spent["cpu_seconds"] = after[0] - before[0]
    spent["replica_cpu_seconds"] = [a - b for a, b in zip(after[1:], before[1:], strict=True)]


def _per_job(idle: dict, run: dict, jobs: int) -> dict:
    """CPU and each command's calls and time per job, the idle rate taken off."""
    scale = run["seconds"] / idle["seconds"]
    cpu = run["cpu_seconds"] - idle["cpu_seconds"] * scale
    commands = {}
    for name, row in run["commands"].items():
        quiet = idle["commands"].get(name, {"calls": 0, "usec": 0})
        commands[name] = {
            "calls": (row["calls"] - quiet["calls"] * scale) / jobs,
            "usec": (row["usec"] - quiet["usec"] * scale) / jobs,
            "usec_per_call": row["usec"] / row["calls"] if row["calls"] else 0.0,
        }
    return {
        "cpu_usec": cpu / jobs * 1e6,
        "cpu_usec_gross": run["cpu_seconds"] / jobs * 1e6,
        "idle_cores": idle["cpu_seconds"] / idle["seconds"],
        "jobs_per_core_second": jobs / cpu if cpu > 0 else float("inf"),
        "replica_cpu_usec": [
            (spent - quiet * scale) / jobs * 1e6
            for spent, quiet in zip(
                run["replica_cpu_seconds"], idle["replica_cpu_seconds"], strict=True
            )
        ],
        "commands": dict(sorted(commands.items(), key=lambda item: -item[1]["usec"])),
    }


def _attributed(primary: redis.Redis, run: Callable[[int], object], jobs: int) -> dict:
    """The same pipeline with every command in the SLOWLOG: the time per job of each script
    and of the other commands, and each script's calls.

    The SLOWLOG holds the commands a script runs too (before it, with a duration of 0:
    their time is the script's), so its durations add up to the commands' own time
    without counting any twice, but a command's calls there include those from scripts.
    """
    saved = cast(dict, primary.config_get("slowlog-*"))
    primary.config_set("slowlog-max-len", jobs * 200 + 10_000)
    primary.config_set("slowlog-log-slower-than", 0)
    primary.slowlog_reset()
    try:
        run(jobs)
        entries = cast(list, primary.slowlog_get(-1))
    finally:
        for name, value in saved.items():
            primary.config_set(name, value)
        primary.slowlog_reset()
    scripts: dict[str, dict[str, float]] = {}
    commands: Counter[str] = Counter()
    for entry in entries:
        words = entry["command"].split()
        command = words[0].decode().upper()
        if command in ("EVALSHA", "EVAL"):
            sha = words[1].decode().lower() if command == "EVALSHA" else command
            row = scripts.setdefault(sha, {"calls": 0, "usec": 0})
            row["calls"] += 1
            row["usec"] += entry["duration"]
        elif command not in ("SLOWLOG", "CONFIG"):
            commands[command] += entry["duration"]
    names = _script_names(primary, [sha for sha in scripts if sha != "EVAL"])
    named = {
        names.get(sha, sha): {
            "calls": row["calls"] / jobs,
            "usec": row["usec"] / jobs,
            "usec_per_call": row["usec"] / row["calls"],
        }
        for sha, row in scripts.items()
    }
    return {
        "jobs": jobs,
        "scripts_usec": sum(row["usec"] for row in named.values()),
        "commands_usec": sum(commands.values()) / jobs,
        "scripts": dict(sorted(named.items(), key=lambda item: -item[1]["usec"])),
        "commands": {name: usec / jobs for name, usec in commands.most_common()},
    }


def _script_names(client: redis.Redis, shas: list[str]) -> dict[str, str]:
    """Each script's name: the `module.NAME` of Postback's source whose text is the
    script's (SCRIPT SHOW), else the longest such text the script holds (a transition's
    body), else the script's first line."""
    known = _source_scripts()
    names = {}
    for sha in shas:
        try:
            text = cast(bytes, client.execute_command("SCRIPT", "SHOW", sha)).decode()
        except redis.ResponseError:
            names[sha] = sha[:8]
            continue
        exact = [name for name, source in known.items() if source.strip() == text.strip()]
        held = [(len(source), name) for name, source in known.items() if source in text]
        first = next((line for line in text.splitlines() if line and line != "#!lua"), "")
        name = exact[0] if exact else max(held)[1] if held else first.strip()[:40]
        names[sha] = name
    return names


def _source_scripts() -> dict[str, str]:
    """Postback's Lua by `module.NAME`: the strings and scripts assigned at the top of
    each module of `SOURCE_PACKAGES` that calls Redis from Lua."""
    found = {}
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            source = path.read_text()
            if not _calls_redis(source):
                continue
            module = vars(importlib.import_module(f"{package}.{path.stem}"))
            for node in ast.parse(source).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    name = node.targets[0].id
                    # A `postback.lua.Script` keeps its text as `source`, redis-py's as `script`.
                    value = module[name]
                    text = getattr(value, "source", getattr(value, "script", value))
                    if isinstance(text, str) and _calls_redis(text):
                        found[f"{package}.{path.stem}.{name}"] = text
    return found


def _calls_redis(text: str) -> bool:
    return "redis.call" in text or "redis.pcall" in text


def report_lines(cost: dict) -> list[str]:
    """The report's lines for the figures of `measure`."""
    per_job, split = cost["per_job"], cost["scripts"]
    executed = split["scripts_usec"] + split["commands_usec"]
    return [
        f"   Redis CPU per job through the pipeline ({cost['jobs']} jobs, submit -> echo -> "
        f"webhook delivered): primary {per_job['cpu_usec']:.0f} µs net of idle "
        f"({per_job['cpu_usec_gross']:.0f} µs gross, idle {per_job['idle_cores'] * 100:.1f} % "
        f"of a core): {per_job['jobs_per_core_second']:.0f} jobs/s per primary core; "
        "replicas "
        + ", ".join(f"{usec:.0f}" for usec in per_job["replica_cpu_usec"])
        + " µs per job",
        f"   in commands (SLOWLOG, {split['jobs']} jobs): {executed:.0f} µs per job, scripts "
        f"{split['scripts_usec']:.0f}: "
        + "; ".join(
            f"{name} {row['calls']:.2f} x {row['usec_per_call']:.0f} = {row['usec']:.0f}"
            for name, row in list(split["scripts"].items())[:TOP]
        )
        + f"; other commands {split['commands_usec']:.0f}: "
        + "; ".join(f"{name} {usec:.0f}" for name, usec in list(split["commands"].items())[:TOP]),
        "   commandstats per job (calls x µs; a script's commands are in its evalsha too): "
        + "; ".join(
            f"{name} {row['calls']:.1f} x {row['usec_per_call']:.1f} = {row['usec']:.0f}"
            for name, row in list(per_job["commands"].items())[:TOP]
        ),
    ]
