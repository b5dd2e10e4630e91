"""One HTTP attempt: POST the body, never follow a redirect, always time out."""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass

import requests
from urllib3.util import Timeout

from postback import clock


@dataclass(frozen=True, kw_only=True)
class Response:
    """What the receiver did with one attempt."""

    status_code: int | None
    duration_ms: int
    error: str | None = None
    retry_after_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Sender:
    """Posts with one `requests.Session` per thread, so connections are reused."""

    def __init__(self, *, timeout_seconds: float, user_agent: str) -> None:
        self.timeout_seconds = timeout_seconds
        self.user_agent = user_agent
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Proxies or netrc credentials from the environment must not apply.
            session.trust_env = False
            self._local.session = session
        return session

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST `body` to `url`; errors are reported in the result, never raised."""
        all_headers = {
            "content-type": "application/json",
            "user-agent": self.user_agent,
            **headers,
        }
        started = time.monotonic()
        try:
            reply = self._session().post(
                url,
                data=body,
                headers=all_headers,
                # `total` caps connect and read together, not each on its own.
                timeout=Timeout(total=self.timeout_seconds),
                allow_redirects=False,
                stream=True,
            )
            # The answer's body is not needed; read a little so the connection can be reused.
            _drain(reply, deadline=started + self.timeout_seconds)
        except requests.Timeout:
            return Response(status_code=None, duration_ms=_ms(started), error="timeout")
        except requests.ConnectionError as exc:
            return Response(status_code=None, duration_ms=_ms(started), error=_describe(exc))
        except requests.RequestException as exc:
            return Response(status_code=None, duration_ms=_ms(started), error=_describe(exc))
        return Response(
            status_code=reply.status_code,
            duration_ms=_ms(started),
            error=None if 200 <= reply.status_code < 300 else f"HTTP {reply.status_code}",
            retry_after_seconds=parse_retry_after(reply.headers.get("retry-after")),
        )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment is None:
        return None
    return max(0.0, moment.timestamp() - clock.now())


def _drain(reply: requests.Response, *, deadline: float, limit_bytes: int = 64 * 1024) -> None:
    """Read at most `limit_bytes` of the answer's body, and not past `deadline`."""
    read = 0
    try:
        for chunk in reply.iter_content(8192, decode_unicode=False):
            read += len(chunk)
            if read >= limit_bytes or time.monotonic() >= deadline:
                break
    finally:
        reply.close()


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _describe(exc: Exception) -> str:
    """A short error text, e.g. `connection refused`; never the request's headers."""
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "ssl" in text or "certificate" in text:
        return "tls error"
    if "name or service not known" in text or "nodename" in text or "resolve" in text:
        return "dns error"
    return "connection error: " + type(exc).__name__
