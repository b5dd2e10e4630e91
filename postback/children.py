"""Child processes that are started together, restarted when they die, and stopped together.

`postback up` keeps the API and the workers running this way; each worker
keeps its delivery process and its scheduler process running the same way.

Nothing a process starts may outlive it:

- a child started by a worker calls `die_with_parent` first thing (the kernel
  sends it SIGTERM when the worker dies, SIGKILL included) and exits at once if
  the worker is already gone (`orphaned`);
- `postback up` is a subreaper (`become_subreaper`): a process whose parent
  dies is handed to it rather than to init, and it stops every such stray
  (`Strays`) before it exits;
- children start with an isolated import path (`python_command`): a folder
  named like one of Postback's packages in the working directory is never run.
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
from pathlib import Path

RESTART_MAX_SECONDS = 30.0
# A child that stayed up this long starts its restart pauses from the shortest again.
STABLE_SECONDS = 60.0

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

# Loaded once, here: a child forked from a threaded process must not dlopen (a lock
# another thread held at the fork stays held in the child for ever).
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _libc = None


def python_command(module: str, *args: str) -> list[str]:
    """The command that runs `python -m module args` with an isolated import path.

    `-P` keeps the working directory off `sys.path`, so a folder named `app`,
    `worker`, `callbacks` or `postback` there cannot shadow the installed package;
    unlike `-I`, it keeps `PYTHONPATH`, through which an operator may provide
    handler modules.
    """
    return [sys.executable, "-P", "-m", module, *args]


def _prctl(option: int, value: int) -> bool:
    if _libc is None:
        return False
    return _libc.prctl(option, value, 0, 0, 0) == 0


def die_with_parent() -> None:
    """Get SIGTERM when the parent process dies, even by SIGKILL (Linux; elsewhere nothing).

    Strictly, when the parent *thread* that started this process ends: start
    children from threads that live as long as the parent process does.
    """
    with contextlib.suppress(Exception):
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def become_subreaper() -> bool:
    """Be handed this process's orphaned descendants instead of init (Linux). Whether it took."""
    try:
        return _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except Exception:
        return False


# The pid of the process that is forking, as `os.fork` runs (see `forks_die_with_parent`).
_forking_pid: list[int] = []


def _before_fork() -> None:
    _forking_pid[:] = [os.getpid()]


def _after_fork_in_child() -> None:
    die_with_parent()
    if _forking_pid and orphaned(_forking_pid[0]):
        # The parent died between the fork and the line above: no signal will come.
        os._exit(1)


def forks_die_with_parent() -> None:
    """From now on, every process this one forks (`os.fork`, multiprocessing) dies with it."""
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


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

    def pids(self) -> set[int]:
        """Pids of the children started (live or not yet reaped)."""
        return {c.process.pid for c in self.children if c.process is not None}

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


def child_pids() -> list[int]:
    """Pids of this process's live children (zombies are reaped if they are strays' or not)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            found.append(int(entry.name))
    return found


def strays(keep: Callable[[int], bool]) -> list[int]:
    """This process's live children that `keep` does not claim (orphans handed to a subreaper).

    The exited ones are reaped on the way: they are no one else's to wait for.
    """
    found = []
    for pid in child_pids():
        if keep(pid):
            continue
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                continue
        except ChildProcessError:
            continue
        found.append(pid)
    return found


class Strays:
    """Stops a subreaper's strays (see `strays`): SIGTERM, then SIGKILL after `grace_seconds`."""

    def __init__(self, keep: Callable[[int], bool], *, grace_seconds: float) -> None:
        self.keep = keep
        self.grace_seconds = grace_seconds
        self.signalled: dict[int, float] = {}

    def sweep(self) -> list[int]:
        """One pass: signal the strays found now. Returns those still alive."""
        found = strays(self.keep)
        now = time.monotonic()
        for pid in found:
            if pid not in self.signalled:
                self.signalled[pid] = now
                _signal(pid, signal.SIGTERM)
            elif now - self.signalled[pid] >= self.grace_seconds:
                _signal(pid, signal.SIGKILL)
        for pid in set(self.signalled) - set(found):
            del self.signalled[pid]
        return found

    def stop_all(self) -> None:
        """Sweep until no stray is left (a stray that dies hands its children to this process)."""
        while self.sweep():
            time.sleep(0.05)


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
