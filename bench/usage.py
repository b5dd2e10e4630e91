"""What a server's processes use, read from /proc: memory (PSS) and CPU, and the machine's.

The API is `postback serve`, a gunicorn master whose children are the API
processes; each figure is summed over those children (the master serves nothing).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def api_pss_mib(master_pid: int) -> float:
    """Proportional set size of the master's child processes, in MiB (shared pages split)."""
    return _children_sum(master_pid, _pss_kib) / 1024


def api_cpu_seconds(master_pid: int) -> float:
    """CPU time (user + system) the master's child processes have used so far."""
    return _children_sum(master_pid, _cpu_ticks) / _TICKS_PER_SECOND


def _stat_fields(pid: str) -> list[str]:
    # After the command name in parentheses (which may hold spaces): state, ppid, ...
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _pss_kib(pid: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def _cpu_ticks(pid: str) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12])  # utime, stime


def _children_sum(master_pid: int, measure: Callable[[str], int]) -> int:
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(entry.name)[1]) == master_pid:
                total += measure(entry.name)
        except OSError:  # gone meanwhile
            continue
    return total


def _machine_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class Meter:
    """CPU used from its making to `read`: by the API processes and by the whole machine."""

    def __init__(self, master_pid: int) -> None:
        self.master_pid = master_pid
        self.started = time.monotonic()
        self.api = api_cpu_seconds(master_pid)
        self.machine = _machine_ticks()

    def read(self, changes: int) -> dict:
        """Seconds measured, API cores busy, API CPU ms per change (of `changes`), and the
        share of the machine's CPU time that was busy (every process, not only ours)."""
        seconds = time.monotonic() - self.started
        api = api_cpu_seconds(self.master_pid) - self.api
        busy, total = (now - then for now, then in zip(_machine_ticks(), self.machine, strict=True))
        return {
            "seconds": seconds,
            "api_cores": api / seconds,
            "api_cpu_ms_per_change": api / changes * 1000 if changes else math.nan,
            "machine_busy": busy / total if total else math.nan,
        }
