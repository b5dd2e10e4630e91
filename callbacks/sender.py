"""One HTTP attempt: check the destination, POST the body, never follow a redirect, time out.

Each attempt checks the URL with `callbacks.ssrf` and connects to the address that
passed the check: the connection is pinned to it, so a second DNS answer (DNS
rebinding) cannot send the attempt elsewhere. The `Host` header, TLS SNI and the
certificate check still use the URL's host name.
"""

from __future__ import annotations

import email.utils
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Timeout

from callbacks.errors import UnsafeUrl
from callbacks.ssrf import (
    DEFAULT_URL_POLICY,
    IPAddress,
    Resolver,
    UrlPolicy,
    normalise_host,
    resolve_and_check,
    system_resolver,
)
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


@dataclass(frozen=True, kw_only=True)
class Pin:
    """Where requests for the host `name` must connect: the checked `address`."""

    name: str
    address: IPAddress


class PinnedAdapter(HTTPAdapter):
    """An adapter that connects only to its current `pin`, never to a DNS answer of its own.

    Confined to one thread (one per `Session`, one `Session` per thread): the caller
    sets `pin` just before a request and clears it after. Connection pools are keyed
    by the address and the host name, so no pool serves another address or name.
    A request whose host is not the pinned name is refused (`InvalidURL`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.pin: Pin | None = None

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        pin = self.pin
        if pin is None or normalise_host(host_params["host"] or "") != pin.name:
            # requests turns a ValueError here into InvalidURL.
            raise ValueError(f"no checked address for {host_params['host']!r}")
        host_params["host"] = str(pin.address)
        # TLS: SNI and the certificate's name are the URL's host, not the address.
        # For http, urllib3 drops these before making the pool but keys the pool by them.
        pool_kwargs["server_hostname"] = pin.name
        pool_kwargs["assert_hostname"] = pin.name
        return host_params, pool_kwargs


class Sender:
    """Posts with one `requests.Session` per thread, so connections are reused.

    Every attempt first checks `url` against `url_policy`, resolving its host with
    `resolver`; a refused URL is reported as an error without any connection.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float,
        user_agent: str,
        url_policy: UrlPolicy = DEFAULT_URL_POLICY,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.timeout_seconds = timeout_seconds
        self.user_agent = user_agent
        self.url_policy = url_policy
        self.resolver = resolver
        self._local = threading.local()

    def _session(self) -> tuple[requests.Session, PinnedAdapter]:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # Proxies or netrc credentials from the environment must not apply.
            session.trust_env = False
            adapter = PinnedAdapter()
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            self._local.session = session
            self._local.adapter = adapter
        return session, self._local.adapter

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST `body` to `url`; errors are reported in the result, never raised."""
        started = time.monotonic()
        try:
            addresses = resolve_and_check(url, self.url_policy, self.resolver)
        except UnsafeUrl as exc:
            return Response(
                status_code=None,
                duration_ms=_ms(started),
                error=f"unsafe destination: {exc.reason}",
            )
        parts = urlsplit(url)
        all_headers = {
            "content-type": "application/json",
            "user-agent": self.user_agent,
            **headers,
            # The connection goes to an address; the receiver still sees its name.
            "host": parts.netloc,
        }
        session, adapter = self._session()
        adapter.pin = Pin(name=normalise_host(parts.hostname or ""), address=addresses[0])
        try:
            reply = session.post(
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
        finally:
            adapter.pin = None
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
