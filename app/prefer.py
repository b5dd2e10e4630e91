"""The `Prefer` request header (RFC 7240), as `POST /v1/jobs` honours it.

A client states preferences; the server honours those it can and names them
in `Preference-Applied`. One it cannot honour (an unknown name, a malformed
or out-of-range value) is ignored, never an error (RFC 7240 §2). Submission
honours two:

- `respond-async`: answer `202` at once (which is what submission does anyway);
- `wait=N` (1 to `max_wait_seconds`): wait up to N seconds for the job to end and
  answer `200` with the job if it does.

`respond-async` wins when both are given: the client asked for an answer at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

HEADER = "Prefer"
APPLIED_HEADER = "Preference-Applied"
RESPOND_ASYNC = "respond-async"
WAIT = "wait"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
# One preference: a token, an optional `= word`; its `;` parameters are read past.
_PREFERENCE = re.compile(rf"\s*({_TOKEN})(?:\s*=\s*({_TOKEN}|{_QUOTED}))?\s*")
# A list element runs to the next comma outside a quoted string (an unclosed one runs on).
_ELEMENT = re.compile(r'(?:"(?:[^"\\]|\\.)*(?:"|\Z)|[^,"])*')
_PARAMETERS = re.compile(rf'\s*(?:;(?:{_QUOTED}|[^;"])*)*')
_SECONDS = re.compile(r"0*([0-9]{1,9})")


def parse(values: Iterable[str]) -> dict[str, str]:
    """The preferences of one or more `Prefer` field values: each value by its name,
    lower-cased (`""` when it has none), the first of a name given twice; parameters
    after `;` dropped and malformed elements skipped."""
    found: dict[str, str] = {}
    for value in values:
        for element in _ELEMENT.findall(value):
            match = _PREFERENCE.match(element)
            if match is None or not _PARAMETERS.fullmatch(element, match.end()):
                continue
            name, word = match.group(1).lower(), match.group(2) or ""
            if word.startswith('"'):
                word = re.sub(r"\\(.)", r"\1", word[1:-1])
            found.setdefault(name, word)
    return found


@dataclass(frozen=True)
class Asked:
    """What a submission's `Prefer` asks for, of what the API honours."""

    respond_async: bool = False
    wait_seconds: int | None = None

    def applied(self) -> str | None:
        """The `Preference-Applied` value for these, or None when nothing is honoured."""
        if self.respond_async:
            return RESPOND_ASYNC
        if self.wait_seconds is not None:
            return f"{WAIT}={self.wait_seconds}"
        return None


def for_submission(values: Iterable[str], *, max_wait_seconds: int) -> Asked:
    """The preferences of `values` that submission honours (see the module's docstring)."""
    preferences = parse(values)
    if RESPOND_ASYNC in preferences:
        return Asked(respond_async=True)
    digits = _SECONDS.fullmatch(preferences.get(WAIT, ""))
    seconds = int(digits.group(1)) if digits else 0
    return Asked(wait_seconds=seconds if 1 <= seconds <= max_wait_seconds else None)
