"""One HTTP attempt, bounded by a hard deadline: check the destination, POST, never redirect.

The whole exchange — name lookup, connect, TLS, sending, the status line,
the headers, the body — runs inside one `asyncio.timeout`: at the deadline
the connection is closed and the attempt is a failure with error `timeout`,
whatever the receiver sends or withholds (a trickled status line, endless
`100 Continue`, a body that never ends). At most `MAX_BODY_BYTES` of the
answer are read; a connection with more left unread is closed, not reused.

SSRF: the URL's syntax and any IP literal are checked before anything is
sent; a name is resolved by `CheckedResolver`, which refuses the attempt if
any address it resolves to is forbidden and otherwise hands exactly those
addresses to the connector, so the connection goes to an address that was
checked (a second DNS answer cannot redirect it). The `Host` header, TLS SNI
and the certificate check use the URL's host name. Redirects are never followed.

`post` never raises: every failure is a `Response` with its reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import socket
import ssl
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from callbacks.errors import UnsafeUrl
from callbacks.ssrf import (
    DEFAULT_URL_POLICY,
    IPAddress,
    Resolver,
    UrlPolicy,
    check_syntax,
    forbidden_reason,
    literal_address,
    literal_refusal,
    normalise_host,
    resolve_name,
    system_resolver,
)
from postback import clock

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
LOOKUP_THREADS = 32
# Status codes that ask the sender to slow down (Standard Webhooks' throttle signals).
THROTTLE_STATUSES = frozenset({429, 502, 503, 504})

_DIGITS = re.compile(r"[0-9]{1,10}")
# RFC 9110's IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
_IMF_FIXDATE = re.compile(
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-9]{2}:[0-9]{2}:[0-9]{2} GMT"
)


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

    @property
    def throttled(self) -> bool:
        """No answer, or an answer that asks to slow down: the destination's share shrinks."""
        return self.status_code is None or self.status_code in THROTTLE_STATUSES


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header: ASCII delta-seconds or an IMF-fixdate; else None."""
    if not value:
        return None
    value = value.strip(" \t")
    if _DIGITS.fullmatch(value):
        return float(value)
    if _IMF_FIXDATE.fullmatch(value):
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, moment.timestamp() - clock.now())
    return None


class CheckedResolver(AbstractResolver):
    """Resolves a name with `resolver` and refuses it unless every address is allowed.

    Lookups run on threads of their own, so that names that are slow to resolve hold
    up neither the event loop nor other lookups beyond `LOOKUP_THREADS` at a time
    (each attempt's deadline still ends its wait).
    """

    def __init__(self, policy: UrlPolicy, resolver: Resolver) -> None:
        self.policy = policy
        self.resolver = resolver
        self._threads = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="dns")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        addresses = await loop.run_in_executor(
            self._threads, resolve_name, normalise_host(host), port, self.policy, self.resolver
        )
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class Sender:
    """Posts with one aiohttp session per event loop: connections are reused per host."""

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
        self._session: aiohttp.ClientSession | None = None
        self._resolver: CheckedResolver | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._resolver = CheckedResolver(self.url_policy, self.resolver)
            connector = aiohttp.TCPConnector(
                limit=0,
                limit_per_host=0,
                use_dns_cache=False,
                resolver=self._resolver,
                ssl=ssl.create_default_context(),
                keepalive_timeout=15,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                # The deadline is ours (asyncio.timeout around the exchange), not aiohttp's.
                timeout=aiohttp.ClientTimeout(total=None),
                # Proxies or netrc credentials from the environment must not apply.
                trust_env=False,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("Accept", "Accept-Encoding"),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Response:
        """POST `body` to `url` within the deadline; errors are reported, never raised."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_seconds):
                return await self._exchange(url, body, headers, started)
        except TimeoutError:
            return _failure(started, "timeout")
        except UnsafeUrl as exc:
            return _failure(started, f"unsafe destination: {exc.reason}")
        except aiohttp.ClientConnectorCertificateError:
            return _failure(started, "tls error: certificate")
        except aiohttp.ClientSSLError:
            return _failure(started, "tls error")
        except aiohttp.ClientConnectorDNSError:
            return _failure(started, "dns error")
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            return _failure(started, "connection refused" if refused else "connection error")
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError):
            return _failure(started, "connection closed")
        except aiohttp.ClientResponseError as exc:
            return _failure(started, f"invalid response: {type(exc).__name__}")
        except (aiohttp.ClientError, OSError) as exc:
            return _failure(started, f"connection error: {type(exc).__name__}")
        except Exception as exc:
            # Whatever it was, the attempt is recorded with its reason, never lost.
            log.exception("delivery attempt to %s failed unexpectedly", urlsplit(url).netloc)
            return _failure(started, f"internal error: {type(exc).__name__}")

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str], started: float
    ) -> Response:
        refusal = _refusal(url, self.url_policy)
        if refusal is not None:
            reason, address = refusal
            raise UnsafeUrl(url, reason, address=address)
        all_headers = request_headers(self.user_agent, headers)
        async with self._client().post(
            _parsed(url), data=body, headers=all_headers, allow_redirects=False
        ) as reply:
            read = 0
            while read < MAX_BODY_BYTES:
                chunk = await reply.content.read(MAX_BODY_BYTES - read)
                if not chunk:
                    break
                read += len(chunk)
            if not reply.content.at_eof():
                # More than we read is coming: drop the connection rather than drain it.
                reply.close()
            return replace(
                answered(reply.status, started),
                retry_after_seconds=parse_retry_after(reply.headers.get("retry-after")),
            )


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> yarl.URL | str:
    """`url` parsed once: aiohttp parses text at every request, and a URL is attempted
    many times. Text that does not parse is passed on for aiohttp to refuse as before."""
    try:
        return yarl.URL(url)
    except ValueError:
        return url


@functools.lru_cache(maxsize=4096)
def _refusal(url: str, policy: UrlPolicy) -> tuple[str, IPAddress | None] | None:
    """Why `url` must not be called whatever its name resolves to (syntax, or a literal
    address that is not allowed), else None. The same URL is asked about at every
    attempt: the verdicts of the last few thousand are kept."""
    try:
        check_syntax(url, policy)
    except UnsafeUrl as exc:
        return exc.reason, exc.address
    literal = literal_address(normalise_host(urlsplit(url).hostname or ""))
    if literal is not None:
        reason = forbidden_reason(literal, policy)
        if reason is not None:
            return literal_refusal(reason), literal
    return None


def request_headers(user_agent: str, headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of an attempt besides `Host` and `Content-Length`: a JSON body, the user
    agent, then `headers` (the signature's among them)."""
    return {"content-type": "application/json", "user-agent": user_agent, **headers}


def answered(status: int, started: float) -> Response:
    """An attempt the receiver answered with `status`: an error unless it is a 2xx."""
    return Response(
        status_code=status,
        duration_ms=elapsed_ms(started),
        error=None if 200 <= status < 300 else f"HTTP {status}",
    )


def _failure(started: float, error: str) -> Response:
    return Response(status_code=None, duration_ms=elapsed_ms(started), error=error)


def elapsed_ms(started: float) -> int:
    """Whole milliseconds since `started` (on the monotonic clock)."""
    return int((time.monotonic() - started) * 1000)
