"""What every `postback` command shares: its services, the API's validation, its output.

A command is `run(args, settings) -> exit status`. It builds its services once
(`Command.services`, through the same factory as the API, over one Redis
client), validates what it was given with the API's schemas (`validated`), and
reports a refusal as the API words it: `Refused` is one line on stderr and exit
status 2 (a missing thing is exit status 1), changing nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postback.settings import Settings

if TYPE_CHECKING:
    from marshmallow import Schema

    from app.errors import ApiError
    from app.services import Services

# Exit statuses: a refused request (bad input, as the API's 4xx), and something missing
# or a step that did not happen (as the API's 404, or an unconfirmed purge).
REFUSED = 2
FAILED = 1

Run = Callable[[argparse.Namespace, Settings], int]


class Refused(Exception):
    """A command's input is refused: `message` is printed, the exit status is `status`."""

    def __init__(self, message: str, *, status: int = REFUSED) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    @classmethod
    def from_api(cls, error: ApiError) -> Refused:
        """The API's refusal `error`, worded as the API words it (detail, then each field)."""
        from app.errors import problem_for

        fields = [
            f"{name}: {' '.join(_flat(messages))}"
            for name, messages in (getattr(error, "errors", None) or {}).items()
        ]
        text = error.detail
        if fields and not all(part.split(": ", 1)[1] in text for part in fields):
            text = f"{text}: " + "; ".join(fields)
        problem = problem_for(type(error))
        return cls(text, status=FAILED if problem and problem.status == 404 else REFUSED)


def _flat(messages: Any) -> list[str]:
    if isinstance(messages, dict):
        return [m for value in messages.values() for m in _flat(value)]
    if isinstance(messages, list):
        return [m for value in messages for m in _flat(value)]
    return [str(messages)]


def data_dir_option() -> argparse.ArgumentParser:
    """The `--data-dir` every command that finds the system through its data dir takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir", type=Path, help="the data dir (default $POSTBACK_DATA_DIR or ./.postback)"
    )
    return parent


def validated(kind: type[Schema], data: dict[str, Any]) -> dict[str, Any]:
    """`data` loaded by the API's schema `kind` (unset values left out), or `Refused`
    with the API's message."""
    from app.errors import ApiError
    from app.schemas import load

    try:
        return load(kind, {name: value for name, value in data.items() if value is not None})
    except ApiError as exc:
        raise Refused.from_api(exc) from None


def missing(what: str) -> Refused:
    """The API's 404 (`no dead letter X`) as a command's: exit status 1."""
    return Refused(what, status=FAILED)


class Command:
    """The services of one command, built at first use over one Redis client."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._services: Services | None = None

    @property
    def services(self) -> Services:
        if self._services is None:
            from app.services import Services

            self._services = Services.connect(self.settings)
        return self._services


def emit(value: object) -> None:
    """`value` as indented JSON on stdout (every command's output)."""
    print(json.dumps(value, indent=2))


def say(message: str) -> None:
    """One line on stderr, prefixed with the command's name."""
    print(f"postback: {message}", file=sys.stderr)
