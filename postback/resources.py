"""Process resource limits: servers that hold thousands of sockets need as many files."""

from __future__ import annotations

import contextlib
import resource


def raise_file_limit() -> None:
    """Lift the soft limit on open files to the hard one (every socket is a file)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
