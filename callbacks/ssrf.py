"""Which callback URLs may be called: only http(s) URLs whose host is a public address.

A URL is checked when it is submitted and again at every delivery attempt, and the
attempt then connects to the address that was checked (see `callbacks.sender`), so
a DNS answer that changes between the check and the connection cannot redirect it.

Host notations that a URL parser or libc accept as an IPv4 address (decimal
`2130706433`, hex `0x7f000001`, octal `0177.0.0.1`, short `127.1`) are read as
`inet_aton` reads them, never sent to DNS; IPv6 addresses that embed an IPv4
address (mapped, compatible, NAT64, 6to4, Teredo) are judged by the IPv4 address.

A refusal says why in terms the partner already knows: the category of a
literal address they wrote, with the address; for a name, only the category of
what it resolves to, never the address (which would let a partner map internal
DNS). The resolved address is logged at debug level, for operators.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from urllib.parse import SplitResult, urlsplit

from callbacks.errors import UnsafeUrl
from callbacks.model import destination

log = logging.getLogger(__name__)

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# (host, port) -> the IP addresses, as strings, the host name stands for.
Resolver = Callable[[str, int], list[str]]

DEFAULT_PORTS = {"http": 80, "https": 443}

# The authority, once userinfo and percent-encoding are ruled out: a name made of
# DNS characters, or a bracketed IPv6 address without a zone; then an optional port.
# Anything else (backslashes, stray brackets, empty ports) is refused rather than
# left to parsers that might disagree about where the host ends.
_AUTHORITY = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(?P<port>[0-9]{1,5}))?")


@dataclass(frozen=True, kw_only=True)
class UrlPolicy:
    """Which callback URLs are acceptable beyond the fixed rules.

    `allow_cidrs` lets addresses inside these networks through even though they are
    not public (e.g. `10.0.0.0/8` for an internal deployment, `127.0.0.0/8` in tests).
    """

    allow_cidrs: tuple[IPNetwork, ...] = ()
    require_https: bool = False
    max_length: int = 2048

    @classmethod
    def from_settings(cls, allow_cidrs: Sequence[str], require_https: bool) -> UrlPolicy:
        """The policy from CIDR strings (blank ones skipped); ValueError names a bad one."""
        networks: list[IPNetwork] = []
        for text in allow_cidrs:
            if not text.strip():
                continue
            try:
                networks.append(ipaddress.ip_network(text.strip(), strict=False))
            except ValueError:
                raise ValueError(f"not a CIDR network: {text!r}") from None
        return cls(allow_cidrs=tuple(networks), require_https=require_https)

    def allows(self, address: IPAddress) -> bool:
        """Whether `address` lies inside one of `allow_cidrs`."""
        return any(address in network for network in self.allow_cidrs)


DEFAULT_URL_POLICY = UrlPolicy()


def system_resolver(host: str, port: int) -> list[str]:
    """The addresses `getaddrinfo` gives for `host`; UnsafeUrl if it gives none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeUrl(host, "the host name does not resolve") from None
    return [str(info[4][0]) for info in infos]


def check_syntax(url: str, policy: UrlPolicy = DEFAULT_URL_POLICY) -> None:
    """Raise UnsafeUrl unless `url` is an absolute http(s) URL with a plain host.

    Refused: over `policy.max_length` characters, whitespace or control characters,
    other schemes, http when `policy.require_https`, userinfo, no host, a
    percent-encoded or non-ASCII host, a malformed authority or port.
    """
    _split(url, policy)


def checked_destination(url: str) -> str:
    """`scheme://host:port` of `url` once it passes `check_syntax` (so a full URL reduces to
    its destination), else UnsafeUrl: for filters and commands that name a destination."""
    check_syntax(url)
    return destination(url)


def normalise_host(host: str) -> str:
    """`host` as it is checked: lower-case, without brackets or one trailing dot."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        return host[1:-1]
    return host[:-1] if host.endswith(".") else host


def resolve_and_check(
    url: str,
    policy: UrlPolicy = DEFAULT_URL_POLICY,
    resolver: Resolver = system_resolver,
) -> list[IPAddress]:
    """The addresses `url`'s host stands for, each one allowed; else UnsafeUrl.

    An IP literal (in any notation `inet_aton` accepts, or bracketed IPv6) is used
    as it is, without calling `resolver`; a name is resolved once. If any address
    is forbidden the whole URL is refused. The result keeps the resolver's order,
    without duplicates; a caller that connects must use one of these addresses.
    """
    parts = _split(url, policy)
    host = normalise_host(parts.hostname or "")
    literal = literal_address(host)
    if literal is not None:
        reason = forbidden_reason(literal, policy)
        if reason is not None:
            raise UnsafeUrl(url, literal_refusal(reason), address=literal)
        return [literal]
    return resolve_name(host, parts.port or DEFAULT_PORTS[parts.scheme], policy, resolver, url=url)


def resolve_name(
    host: str,
    port: int,
    policy: UrlPolicy = DEFAULT_URL_POLICY,
    resolver: Resolver = system_resolver,
    *,
    url: str | None = None,
) -> list[IPAddress]:
    """The addresses the name `host` resolves to, each one allowed; else UnsafeUrl
    (for `url`, default the host itself). The resolver's order, without duplicates."""
    addresses = _resolve(url or host, host, port, resolver)
    for address in addresses:
        judged = _judge(address, policy)
        if judged is not None:
            category, detail = judged
            log.debug("callback host %s refused: it resolves to %s %s", host, category, detail)
            raise UnsafeUrl(
                url or host,
                f"the host resolves to {category}, which is not allowed",
                address=address,
            )
    return addresses


def literal_refusal(reason: str) -> str:
    """The refusal of a literal address the partner wrote, `reason` from `forbidden_reason`."""
    return f"the host is {reason}, which is not allowed"


def forbidden_reason(address: IPAddress, policy: UrlPolicy = DEFAULT_URL_POLICY) -> str | None:
    """None if `address` may be called, else why not, e.g. "a loopback address (127.0.0.1)".

    `policy.allow_cidrs` is consulted first, on the address and on the IPv4
    addresses it embeds (all of which must be allowed).
    """
    judged = _judge(address, policy)
    return None if judged is None else f"{judged[0]} {judged[1]}"


def _judge(address: IPAddress, policy: UrlPolicy) -> tuple[str, str] | None:
    """None if `address` may be called, else its category and the address in parentheses:
    ("a loopback address", "(127.0.0.1)")."""
    embedded = _embedded_ipv4(address)
    if policy.allows(address) or (embedded and all(policy.allows(v4) for v4 in embedded)):
        return None
    if isinstance(address, IPv6Address) and address in _V6_BEFORE_EMBEDDED:
        return _V6_BEFORE_EMBEDDED[address], f"({address})"
    if embedded:
        for v4 in embedded:
            category = _category(v4)
            if category is not None:
                return category, f"({v4}, embedded in {address})"
        return None
    category = _category(address)
    return None if category is None else (category, f"({address})")


def _split(url: str, policy: UrlPolicy) -> SplitResult:
    """`url` split into its parts, or UnsafeUrl if it breaks a syntax rule."""

    def refuse(reason: str) -> UnsafeUrl:
        return UnsafeUrl(url, reason)

    if not isinstance(url, str) or not url:
        raise refuse("the URL is empty")
    if len(url) > policy.max_length:
        raise refuse(f"the URL is longer than {policy.max_length} characters")
    if any(ch.isspace() or ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 for ch in url):
        raise refuse("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise refuse("the URL is malformed") from None
    if not parts.scheme:
        raise refuse("the URL is not absolute (it must start with http:// or https://)")
    if parts.scheme not in DEFAULT_PORTS:
        raise refuse("only http and https are allowed")
    if policy.require_https and parts.scheme != "https":
        raise refuse("only https is allowed")
    authority = parts.netloc
    if not url[len(parts.scheme) :].startswith("://"):
        raise refuse("the URL has no host")
    if "@" in authority:
        raise refuse("userinfo is not allowed")
    if "%" in authority:
        raise refuse("percent-encoding in the host is not allowed")
    if not authority or authority.startswith(":") or authority == "[]":
        raise refuse("the URL has no host")
    if not authority.isascii():
        raise refuse("the host must be ASCII (write a non-ASCII name in its xn-- form)")
    match = _AUTHORITY.fullmatch(authority)
    if match is None:
        raise refuse("the host is malformed")
    host, port = match["host"], match["port"]
    if normalise_host(host) in ("", "."):
        raise refuse("the URL has no host")
    if host.startswith("["):
        try:
            IPv6Address(host[1:-1])
        except ValueError:
            raise refuse("the host is malformed") from None
    if port is not None and not 0 < int(port) <= 65535:
        raise refuse("the port is out of range")
    return parts


def literal_address(host: str) -> IPAddress | None:
    """The address `host` spells, read as libc would read it, or None for a name."""
    if ":" in host:
        return IPv6Address(host)
    try:
        # inet_aton is the permissive parser getaddrinfo and many URL libraries use:
        # it reads 2130706433, 0x7f000001, 0177.0.0.1, 127.1 and 0x7f.1 as 127.0.0.1.
        return IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _resolve(url: str, host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    """The distinct addresses `resolver` gives for `host`, or UnsafeUrl."""
    try:
        answers = resolver(host, port)
    except (UnsafeUrl, OSError):
        answers = []
    addresses: list[IPAddress] = []
    for answer in answers:
        # getaddrinfo may append a zone to link-local IPv6 answers (fe80::1%eth0).
        address = ipaddress.ip_address(answer.split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeUrl(url, "the host name does not resolve")
    return addresses


def _embedded_ipv4(address: IPAddress) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, where traffic to it reaches them."""
    if isinstance(address, IPv4Address) or address in _V6_BEFORE_EMBEDDED:
        return []
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address.teredo is not None:
        return list(address.teredo)
    if address.sixtofour is not None:
        return [address.sixtofour]
    packed = address.packed
    if address in _NAT64_WELL_KNOWN or int(address) >> 32 == 0:
        # NAT64 /96, or IPv4-compatible (::a.b.c.d): the last 32 bits.
        return [IPv4Address(packed[12:])]
    if address in _NAT64_LOCAL:
        # RFC 6052 layouts for the prefix lengths a local-use /48 may be cut to
        # (/96, /64, /56, /48; bits 64-71 are skipped): any of them may be in use.
        layouts = (
            packed[12:],
            packed[9:13],
            packed[7:8] + packed[9:12],
            packed[6:8] + packed[9:11],
        )
        return [IPv4Address(layout) for layout in layouts]
    return []


def _category(address: IPAddress) -> str | None:
    """The first forbidden category `address` falls in, as a noun phrase, or None."""
    table = _V4_CATEGORIES if isinstance(address, IPv4Address) else _V6_CATEGORIES
    for network, category in table:
        if address in network:
            return category
    if address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return "a non-global address"
    return None


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), category) for cidr, category in rows)


# Checked in order; the first match names the category.
_V4_CATEGORIES = _table(
    ("0.0.0.0/8", "an unspecified address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.169.254/32", "a link-local cloud metadata address"),
    ("169.254.0.0/16", "a link-local address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("192.0.0.0/24", "an IETF protocol assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "a broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_V6_CATEGORIES = _table(
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("fc00::/7", "a private (unique local) address"),
    ("ff00::/8", "a multicast address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
)
# Inside ::/96, so they would otherwise be read as IPv4-compatible 0.0.0.0 and 0.0.0.1.
_V6_BEFORE_EMBEDDED = {
    IPv6Address("::"): "an unspecified address",
    IPv6Address("::1"): "a loopback address",
}
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
