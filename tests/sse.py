"""A server-sent events client for tests: real sockets, parsed as the HTML standard says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import requests


@dataclass(frozen=True)
class Event:
    event: str
    id: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


class Stream:
    """One open `text/event-stream` response; iterate it for its events."""

    def __init__(self, url: str, *, headers: dict[str, str], timeout_seconds: float = 30.0):
        self.response = requests.get(
            url,
            headers={"Accept": "text/event-stream", **headers},
            stream=True,
            timeout=timeout_seconds,
        )
        self.retry_ms: int | None = None
        self.comments = 0
        self._events = self._parse()

    @property
    def status_code(self) -> int:
        return self.response.status_code

    def __iter__(self) -> Iterator[Event]:
        """The events, one parse of the response however often it is iterated."""
        return self._events

    def _parse(self) -> Iterator[Event]:
        event, last_id, data = "message", "", []
        for raw in self.response.iter_lines(decode_unicode=False):
            line = raw.decode()
            if not line:
                if data:
                    yield Event(event, last_id, "\n".join(data))
                event, data = "message", []
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                last_id = value
            elif name == "retry" and value.isdigit():
                self.retry_ms = int(value)

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_until(stream: Stream, stop: str, *, limit: int = 10_000) -> list[Event]:
    """The events of `stream` up to and including the first named `stop`."""
    seen = []
    for event in stream:
        seen.append(event)
        if event.event == stop or len(seen) >= limit:
            break
    return seen
