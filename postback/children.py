"""Child processes that are started together, restarted when they die, and stopped together.

`postback up` keeps the API and the workers running this way; each worker
keeps its delivery process running the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

RESTART_MAX_SECONDS = 30.0
# A child that stayed up this long starts its restart pauses from the shortest again.
STABLE_SECONDS = 60.0

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies, even by SIGKILL (Linux; elsewhere nothing).

    Strictly, when the parent *thread* that started this process ends: start
    children from threads that live as long as the parent process does.
    """
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float = 0.0
    started_at: float = field(default_factory=time.monotonic)


class Children:
    """A group of child processes, each in its own session (a Ctrl-C reaches the parent only).

    `preexec_fn` runs in each child before it starts; pass one only from a
    process that has no other threads (see `subprocess.Popen`).
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        stop_seconds: float,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.env = env
        self.stop_seconds = stop_seconds
        self.preexec_fn = preexec_fn
        self.children: list[Child] = []

    def add(self, name: str, command: list[str]) -> Child:
        child = Child(name, command)
        self.children.append(child)
        return child

    def start(self) -> None:
        for child in self.children:
            self._start(child)

    def _start(self, child: Child) -> None:
        child.process = subprocess.Popen(
            child.command, env=self.env, start_new_session=True, preexec_fn=self.preexec_fn
        )
        child.started_at = time.monotonic()

    def supervise(self) -> None:
        """Restart any child that died, with a growing pause between restarts (one pass)."""
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.restart_at == 0.0:
                if now - child.started_at > STABLE_SECONDS:
                    child.restarts = 0
                delay = min(RESTART_MAX_SECONDS, 0.5 * 2**child.restarts)
                print(
                    f"postback: {child.name} exited with {child.process.returncode}; "
                    f"restarting in {delay:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
                child.restart_at = now + delay
            elif now >= child.restart_at:
                child.restarts += 1
                child.restart_at = 0.0
                self._start(child)

    def stop(self) -> None:
        """SIGTERM every live child; SIGKILL those still running after `stop_seconds`."""
        live = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_seconds
        for process in live:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def orphaned(parent_pid: int) -> bool:
    """True if the process that started this one is gone (it died before `die_with_parent`)."""
    return os.getppid() != parent_pid
