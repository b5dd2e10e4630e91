"""Where the API's links point: `POSTBACK_PUBLIC_URL`, or the Host of a request, if allowed.

A status URL, a `Location` and the result link stored with a job are built on a
base URL. With `POSTBACK_PUBLIC_URL` set, that is it, and the request's Host is
not used. Without it, the base is the address the request came to, but only if
its Host matches `POSTBACK_ALLOWED_HOSTS`: any other Host is a 400
(`HostNotAllowed`), so a client cannot plant links to a host of its choosing.

Patterns (case-insensitive, as Django's `ALLOWED_HOSTS`): `name` matches that
host on any port, `name:port` only on that port, `.example.com` matches
example.com and every subdomain, `*` any host. IPv6 addresses are bracketed:
`[::1]`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from flask import request

from app.errors import HostNotAllowed
from postback.settings import Settings

# A host name or a bracketed IPv6 address, then an optional port.
_HOST = re.compile(r"(?P<name>[a-z0-9.-]+|\[[a-f0-9:.]+\])(?::(?P<port>[0-9]{1,5}))?")

# The base URL for each (scheme, Host, server, script root) allowed: werkzeug derives it
# anew for every request, a few per cent of a submission's CPU. Hosts are the client's to
# choose, so only the first few are kept.
_BASE_URLS: dict[tuple[object, ...], str] = {}
_MAX_BASE_URLS = 64


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    """Whether the Host header value `host` matches one of `patterns`."""
    match = _HOST.fullmatch(host.lower())
    if match is None:
        return False
    name, port = match["name"], match["port"]
    if name.endswith("."):
        name = name[:-1]
    for pattern in patterns:
        pattern = pattern.strip().lower()
        if pattern == "*":
            return True
        pattern, wanted_port = _split_port(pattern)
        if wanted_port is not None and wanted_port != port:
            continue
        if pattern.startswith("."):
            if name == pattern[1:] or name.endswith(pattern):
                return True
        elif name == pattern:
            return True
    return False


def _split_port(pattern: str) -> tuple[str, str | None]:
    """`name:port` → (name, port); a pattern without a port → (pattern, None)."""
    if pattern.startswith("["):
        name, _, rest = pattern.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    if ":" in pattern:
        name, _, port = pattern.rpartition(":")
        return name, port
    return pattern, None


def base_url(settings: Settings) -> str:
    """The API's public base URL for this request: `POSTBACK_PUBLIC_URL`, or the one the
    request came to if its Host is allowed, else HostNotAllowed."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    environ = request.environ
    key = (
        settings.allowed_hosts,
        *(
            environ.get(name)
            for name in (
                "wsgi.url_scheme",
                "HTTP_HOST",
                "SERVER_NAME",
                "SERVER_PORT",
                "SCRIPT_NAME",
            )
        ),
    )
    found = _BASE_URLS.get(key)
    if found is None:
        if not host_allowed(request.host, settings.allowed_hosts):
            shown = request.host if len(request.host) <= 100 else request.host[:100] + "…"
            raise HostNotAllowed(
                f"the Host {shown!r} is not allowed: set POSTBACK_PUBLIC_URL, or add the host"
                " to POSTBACK_ALLOWED_HOSTS"
            )
        found = request.url_root.rstrip("/")
        if len(_BASE_URLS) < _MAX_BASE_URLS:
            _BASE_URLS[key] = found
    return found
