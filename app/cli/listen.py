"""`postback listen`: relay a partner's webhook events to a URL on the developer's machine.

It follows the partner's feed (`GET /v1/events?signed=true`, long-polled) and POSTs each
event to `--forward-to` as the very request a delivery sends: the feed signs each item
when it is read (`webhook`: the body and the Standard Webhooks headers), so the receiver
verifies it with the partner's signing secret, which never leaves the server. The target
may be on loopback (the server's SSRF rules are for the server's own requests).

A development relay, like `stripe listen`: what the receiver answers (or the error) is
printed and the relay moves on; it never retries (the server still delivers, and retries,
the jobs' own callbacks). Its place is a state file (`app.cli.listen_state`) saved after
each event, so a restart forwards none twice and skips none. An API that is unreachable
or failing is retried with a capped backoff; SIGINT or SIGTERM stops the relay between two
events, exit status 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from app.cli.common import FAILED, REFUSED, Refused, say, validated
from postback import __version__
from postback.errors import LimitExceeded, Unavailable
from postback.settings import Settings

if TYPE_CHECKING:
    import requests

DEFAULT_API_URL = "http://127.0.0.1:8000"
USER_AGENT = f"postback-listen/{__version__} (postback listen)"


@dataclass(frozen=True, kw_only=True)
class ListenPolicy:
    """How the relay polls the feed, forwards an event and waits for an API that is down."""

    # Each poll waits this long on the server for the next event (the API's most is 30).
    wait_seconds: int = 30
    page_limit: int = 100
    connect_timeout_seconds: float = 5.0
    # A poll's read timeout is its wait plus this.
    read_slack_seconds: float = 15.0
    forward_timeout_seconds: float = 10.0
    # Receivers refuse a timestamp five minutes old: a page being forwarded longer than this
    # is read (and so signed) again from the cursor.
    resign_after_seconds: float = 60.0
    backoff_first_seconds: float = 0.5
    backoff_max_seconds: float = 5.0


DEFAULT_LISTEN_POLICY = ListenPolicy()


@dataclass(frozen=True)
class SignedEvent:
    """One item of the feed read with `signed=true`: its cursor, and the request to send."""

    cursor: str
    webhook_id: str
    type: str
    # The webhook's body, exactly as signed, and its Standard Webhooks headers.
    body: str
    headers: dict[str, str]

    @classmethod
    def from_item(cls, item: Any) -> SignedEvent:
        """The feed's `item`; KeyError or TypeError if it is not a signed event."""
        webhook = item["webhook"]
        return cls(
            cursor=str(item["id"]),
            webhook_id=str(item["webhook_id"]),
            type=str(item["type"]),
            body=str(webhook["body"]),
            headers={str(name): str(value) for name, value in webhook["headers"].items()},
        )


def add(commands: Any) -> None:
    """Add `listen` to the `postback` parser's subcommands."""
    listen = commands.add_parser(
        "listen", help="forward a partner's webhook events, signed, to a local URL"
    )
    listen.add_argument(
        "--forward-to", required=True, metavar="URL", help="where to POST each event (http/https)"
    )
    listen.add_argument(
        "--api-url", metavar="URL", help=f"the API (default $POSTBACK_API_URL or {DEFAULT_API_URL})"
    )
    listen.add_argument(
        "--api-key", metavar="KEY", help="the partner's API key (default $POSTBACK_API_KEY)"
    )
    listen.add_argument(
        "--after", metavar="CURSOR", help="start after this feed cursor, not the saved one"
    )
    listen.add_argument(
        "--state-file",
        type=Path,
        metavar="PATH",
        help="where the cursor is kept (default: one per API, key and URL under "
        "$XDG_STATE_HOME/postback)",
    )
    listen.set_defaults(run=_run)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli import listen_state

    relay = Relay.from_args(args, os.environ)
    print(f"Forwarding the events of {relay.api_url} to {relay.forward_to}")
    print(f"State file: {relay.state_file}")
    print(f"Starting after {relay.after}" if relay.after else "Starting at the oldest event")
    if args.after is not None:
        listen_state.save(
            relay.state_file, relay.after, api_url=relay.api_url, forward_to=relay.forward_to
        )
    sys.stdout.flush()
    return relay.run()


def _url(option: str, text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Refused(f"{option} must be an http or https URL, like http://localhost:3000/hooks")
    return text


class Relay:
    """Reads the feed after `after`, forwards each event to `forward_to`, keeps its place."""

    def __init__(
        self,
        *,
        api_url: str,
        api_key: str,
        forward_to: str,
        state_file: Path,
        after: str | None,
        policy: ListenPolicy = DEFAULT_LISTEN_POLICY,
    ) -> None:
        import requests

        self.api_url = api_url
        self.forward_to = forward_to
        self.state_file = state_file
        self.after = after
        self.policy = policy
        self.forwarded: set[str] = set()
        self._api = requests.Session()
        self._api.headers.update({"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT})
        # The local request carries the webhook's headers and no others (and no proxy of the
        # environment's: the target is on this machine).
        self._local = requests.Session()
        self._local.headers.clear()
        self._local.trust_env = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Relay:
        """The relay the command line and the environment describe; `Refused` if they do not."""
        from app.cli import listen_state
        from app.schemas import FeedQuery

        api_key = args.api_key or environ.get("POSTBACK_API_KEY", "")
        if not api_key:
            raise Refused("no API key: pass --api-key or set POSTBACK_API_KEY")
        api_url = args.api_url or environ.get("POSTBACK_API_URL") or DEFAULT_API_URL
        api_url = _url("--api-url", api_url).rstrip("/")
        forward_to = _url("--forward-to", args.forward_to)
        state_file = args.state_file or listen_state.default_path(
            environ, api_url=api_url, api_key=api_key, forward_to=forward_to
        )
        if args.after is not None:
            after = validated(FeedQuery, {"after": args.after})["after"]
        else:
            after = listen_state.load(state_file)
        return cls(
            api_url=api_url,
            api_key=api_key,
            forward_to=forward_to,
            state_file=state_file,
            after=after,
        )

    def run(self) -> int:
        """Relay until SIGINT or SIGTERM (exit status 0), or until the API refuses the key."""
        try:
            with _Signals() as signals:
                self._relay(signals)
        except _Stopped:
            pass
        finally:
            self._api.close()
            self._local.close()
        print(f"Stopped; the next run starts after {self.after or 'the oldest event'}")
        return 0

    def _relay(self, signals: _Signals) -> NoReturn:
        while True:
            asked_at = time.monotonic()
            events = self._next_page()
            read_at = time.monotonic()
            if not events and read_at - asked_at < self.policy.wait_seconds / 2:
                # The server cut the wait short (it is stopping): not a reason to ask at once.
                time.sleep(self.policy.backoff_first_seconds)
            for event in events:
                with signals.held():
                    self._forward(event)
                if time.monotonic() - read_at > self.policy.resign_after_seconds:
                    break

    def _next_page(self) -> list[SignedEvent]:
        """The next page of the feed, once the API gives one: retried with a capped backoff
        while it cannot, with one line when that starts and one when it ends."""
        policy = self.policy
        backoff, trouble = policy.backoff_first_seconds, False
        while True:
            try:
                events = self._read()
            except (Unavailable, LimitExceeded) as exc:
                if not trouble:
                    waiting = isinstance(exc, LimitExceeded)
                    say(f"{exc.detail}; {'waiting' if waiting else 'reconnecting'}")
                    trouble = True
                time.sleep(exc.retry_after_seconds or backoff)
                backoff = min(backoff * 2, policy.backoff_max_seconds)
                continue
            if trouble:
                say(f"reconnected to {self.api_url}")
            return events

    def _read(self) -> list[SignedEvent]:
        """One long-poll of the feed; `Unavailable` or `LimitExceeded` to try again, `Refused`
        to give up."""
        import requests

        policy = self.policy
        try:
            reply = self._api.get(
                f"{self.api_url}/v1/events",
                params={
                    "after": self.after,
                    "limit": policy.page_limit,
                    "wait": policy.wait_seconds,
                    "signed": "true",
                },
                timeout=(
                    policy.connect_timeout_seconds,
                    policy.wait_seconds + policy.read_slack_seconds,
                ),
            )
        except requests.RequestException as exc:
            raise Unavailable(
                f"the API at {self.api_url} is unreachable ({_failure(exc)})"
            ) from None
        if reply.status_code == 200:
            return _events(reply, self.api_url)
        detail = f"the API at {self.api_url} answered {reply.status_code}: {_detail(reply)}"
        retry_after = _retry_after(reply)
        if reply.status_code == 429:
            raise LimitExceeded(detail, retry_after_seconds=retry_after)
        if reply.status_code >= 500 or reply.status_code == 408:
            raise Unavailable(detail, retry_after_seconds=retry_after)
        raise Refused(detail, status=FAILED if reply.status_code == 404 else REFUSED)

    def _forward(self, event: SignedEvent) -> None:
        """POST `event` to the target unless this run did; then save its cursor."""
        from app.cli import listen_state

        if event.webhook_id in self.forwarded:
            outcome = "skipped: forwarded already in this run"
        else:
            outcome = self._post(event)
            self.forwarded.add(event.webhook_id)
        self.after = event.cursor
        listen_state.save(
            self.state_file, self.after, api_url=self.api_url, forward_to=self.forward_to
        )
        print(f"{datetime.now():%H:%M:%S}  {event.type:<14} {event.webhook_id}  {outcome}")
        sys.stdout.flush()

    def _post(self, event: SignedEvent) -> str:
        """What the target answered `event`'s signed request (or why it did not), and how fast."""
        import requests

        started = time.monotonic()
        try:
            reply = self._local.post(
                self.forward_to,
                data=event.body.encode(),
                headers={**event.headers, "User-Agent": USER_AGENT},
                timeout=(self.policy.connect_timeout_seconds, self.policy.forward_timeout_seconds),
                allow_redirects=False,
            )
            answer = str(reply.status_code)
        except requests.RequestException as exc:
            answer = _failure(exc)
        elapsed_ms = round((time.monotonic() - started) * 1000)
        return f"-> {answer} ({elapsed_ms} ms)"


def _events(reply: requests.Response, api_url: str) -> list[SignedEvent]:
    """The signed events of a feed page; `Refused` if it is not one."""
    try:
        return [SignedEvent.from_item(item) for item in reply.json()["items"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused(
            f"{api_url} did not answer GET /v1/events?signed=true with signed events: "
            "is it a Postback API with the event feed?",
            status=FAILED,
        ) from None


def _detail(reply: requests.Response) -> str:
    """The problem's detail, or the status's reason."""
    with contextlib.suppress(ValueError, AttributeError):
        detail = reply.json().get("detail")
        if isinstance(detail, str) and detail:
            return detail
    return reply.reason or "no reason given"


def _retry_after(reply: requests.Response) -> int | None:
    value = reply.headers.get("Retry-After", "")
    return int(value) if value.isdigit() else None


def _failure(exc: BaseException) -> str:
    """A failed request in a few words: "connection refused", "timed out"."""
    import requests

    if isinstance(exc, requests.Timeout):
        return "timed out"
    found: BaseException | None = exc
    while found is not None:
        if isinstance(found, OSError) and found.strerror:
            return found.strerror.lower()
        reason = getattr(found, "reason", None)
        found = (
            reason if isinstance(reason, BaseException) else found.__cause__ or found.__context__
        )
    return type(exc).__name__


class _Stopped(BaseException):
    """SIGINT or SIGTERM: the relay stops (a BaseException: nothing on the way swallows it)."""


class _Signals:
    """SIGINT and SIGTERM stop the relay: at once while it waits, and after the event in
    hand (forwarded and its cursor saved) while it forwards one."""

    def __init__(self) -> None:
        self.stopping = False
        self._holding = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for number in (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.stopping = True
        if not self._holding:
            raise _Stopped

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A signal inside the block stops the relay at the block's end."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
        if self.stopping:
            raise _Stopped
