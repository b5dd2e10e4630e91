"""Logging, configured once per process: one JSON object per line, or a readable
console line when stderr is a terminal, with the bound context on every record.

Context (request_id, job_id, partner_id, destination, …) is bound through a
contextvar with `bind(...)`, never threaded by hand through calls. Secrets are
never bound or logged: API keys, signing secrets, tokens and webhook bodies stay
out of log records by construction.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

# Values are replaced, never mutated, so the shared empty default is safe.
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "postback_log_context", default=None
)
_configured = False

# Attributes every LogRecord has; anything else was passed with `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


@contextlib.contextmanager
def bind(**values: Any) -> Iterator[None]:
    """Add `values` to the context of every log line inside the block."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def push(**values: Any) -> contextvars.Token:
    """Add `values` to the context until `pop(token)` (e.g. for one HTTP request)."""
    return _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v}})


def pop(token: contextvars.Token) -> None:
    """Undo a `push`."""
    _context.reset(token)


def add(**values: Any) -> None:
    """Add `values` to the context pushed last (the request's), e.g. once the partner is known."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v}})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.postback_context = _context.get() or {}
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "event", "logger", ...context}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
        }
        entry.update(getattr(record, "postback_context", {}))
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name != "postback_context":
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """`HH:MM:SS level logger: event key=value …` for people at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        bound = getattr(record, "postback_context", {})
        pairs = " ".join(f"{k}={v}" for k, v in bound.items())
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        line = f"{when} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        line = f"{line}  {pairs}" if pairs else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str = "INFO", *, json_lines: bool | None = None) -> None:
    """Send every record to stderr, JSON unless stderr is a terminal; idempotent."""
    global _configured
    if _configured:
        return
    _configured = True
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    root = logging.getLogger()
    root.handlers[:] = [handler(sys.stderr, json_lines=json_lines)]
    root.setLevel(level.upper())
    logging.getLogger("rq.worker").addFilter(_rq_per_job_at_debug)
    atexit.register(_shut_down)


def _shut_down() -> None:
    """Flush and close every handler at exit, then forget them.

    Left to the end of the interpreter, a handler collected while the modules are torn
    down calls back into `logging`, which, under gevent (the API processes), prints
    "Exception ignored in: _removeHandlerRef" and a traceback outside the log format.
    """
    logging.shutdown()
    # The weak references whose callbacks would run then; logging's own exit hook, which
    # runs after this one, finds nothing left to do.
    logging._handlerList.clear()  # type: ignore[attr-defined]


# RQ's lines about each job (taken, done, how long its result is kept): debug, not info,
# beside Postback's own record of the job.
_RQ_PER_JOB = frozenset(
    {
        "Worker %s: %s: %s",
        "Worker %s: %s: %s (%s)",
        "Successfully completed job %s in %ss on worker %s",
        "Successfully completed %s job in %ss on worker %s",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result is kept for %s seconds",
        "Worker %s: job %s result will never expire, clean up result key manually",
    }
)


def _rq_per_job_at_debug(record: logging.LogRecord) -> bool:
    """A filter of RQ's worker logger: its per-job info lines become debug lines, shown only
    if the logger lets debug lines through."""
    if record.levelno == logging.INFO and isinstance(record.msg, str) and record.msg in _RQ_PER_JOB:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
    return True


def format_like_postback(target: logging.Handler) -> None:
    """Give a handler made elsewhere (gunicorn's) Postback's format and bound context: JSON
    lines, or the console format if it writes to a terminal."""
    stream = getattr(target, "stream", None)
    isatty = getattr(stream, "isatty", None)
    json_lines = not (callable(isatty) and isatty())
    target.addFilter(_ContextFilter())
    target.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())


def handler(stream: Any, *, json_lines: bool = True) -> logging.Handler:
    """A handler writing Postback's format, with the bound context, to `stream`."""
    made = logging.StreamHandler(stream)
    made.addFilter(_ContextFilter())
    made.setFormatter(JsonFormatter() if json_lines else ConsoleFormatter())
    return made
