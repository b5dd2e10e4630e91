"""The handler registry: job types and the functions that run them.

Deployments add job types with `@handler("name")` in a module named in
`POSTBACK_HANDLER_MODULES`, or exposed through the `postback.handlers`
entry-point group.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from postback.errors import Misconfigured

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "postback.handlers"
DEFAULT_TIMEOUT_SECONDS = 600


class HandlerError(Misconfigured):
    """A handler could not be registered or loaded."""


@dataclass(frozen=True, kw_only=True)
class Handler:
    name: str
    fn: Callable[..., Any]
    # A marshmallow schema instance checked against `input` at submission, or None.
    input_schema: Any = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS


_handlers: dict[str, Handler] = {}


def handler(
    name: str, *, input_schema: Any = None, timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated `fn(ctx)` as the handler of job type `name`.

    The function gets a `JobContext` and returns a JSON-serialisable result. An
    exception fails the job: `error.code` is the exception's class name and
    `error.message` its text.
    """
    if not name or not isinstance(name, str):
        raise HandlerError("a handler needs a non-empty name")

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        existing = _handlers.get(name)
        if existing is not None and existing.fn is not fn:
            qualified = f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            if qualified != f"{fn.__module__}.{fn.__qualname__}":
                raise HandlerError(f"job type {name!r} is already handled by {qualified}")
        _handlers[name] = Handler(
            name=name, fn=fn, input_schema=input_schema, timeout_seconds=timeout_seconds
        )
        return fn

    return register


def get(name: str) -> Handler | None:
    """The handler of job type `name`, or None."""
    return _handlers.get(name)


def names() -> list[str]:
    """Every registered job type, sorted."""
    return sorted(_handlers)


def load(modules: Iterable[str] = ()) -> None:
    """Import the handler modules: the entry-point group, then `modules`."""
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception as exc:
            raise HandlerError(f"entry point {entry_point.name!r} failed to load: {exc}") from exc
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            raise HandlerError(f"handler module {module!r} failed to import: {exc}") from exc
    # The built-ins are always there, even when the package metadata is missing.
    importlib.import_module("worker.builtin")
