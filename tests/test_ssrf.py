"""Callback URLs: only public http(s) destinations, checked at submission and at each attempt."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from urllib.parse import urlsplit

import pytest

from callbacks.errors import CallbacksError, UnsafeUrl
from callbacks.sender import CheckedResolver, Sender
from callbacks.ssrf import (
    DEFAULT_URL_POLICY,
    UrlPolicy,
    check_syntax,
    forbidden_reason,
    resolve_and_check,
    system_resolver,
)
from tests.receiver import Receiver, Reply

BODY = b'{"type":"job.completed"}'
LOOPBACK_ALLOWED = UrlPolicy.from_settings(["127.0.0.0/8"], require_https=False)


def no_dns(host: str, port: int) -> list[str]:
    raise AssertionError(f"the resolver was called for {host!r}")


def answers(*addresses: str):
    """A fake resolver giving `addresses` for any name, counting its calls."""

    def resolve(host: str, port: int) -> list[str]:
        resolve.calls.append((host, port))
        return list(addresses)

    resolve.calls = []
    return resolve


def rebinding(first: str, then: str):
    """A fake resolver giving `first` on its first call and `then` afterwards."""

    def resolve(host: str, port: int) -> list[str]:
        resolve.calls += 1
        return [first if resolve.calls == 1 else then]

    resolve.calls = 0
    return resolve


def refusal(url: str, policy: UrlPolicy = DEFAULT_URL_POLICY, resolver=no_dns) -> UnsafeUrl:
    with pytest.raises(UnsafeUrl) as caught:
        resolve_and_check(url, policy, resolver)
    assert caught.value.url == url
    return caught.value


@pytest.mark.parametrize(
    ("url", "category"),
    [
        ("http://2130706433/", "loopback"),
        ("http://0x7f000001/", "loopback"),
        ("http://0177.0.0.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://0x7f.1/", "loopback"),
        ("http://127.0.0.1./", "loopback"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("HTTP://127.0.0.1/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://[0:0:0:0:0:ffff:7f00:1]/", "loopback"),
        ("http://0/", "unspecified"),
        ("http://0xa9fea9fe/", "cloud metadata"),
        ("http://%31%32%37.0.0.1/", "percent-encoding"),
        ("http://[fe80::1%25eth0]/", "percent-encoding"),
        ("http://example.com\\@127.0.0.1/", "userinfo"),
        # Fullwidth digits, which IDNA would fold to 127.0.0.1.
        ("http://\uff11\uff12\uff17.0.0.1/", "ASCII"),
    ],
)
def test_numeric_and_encoded_host_notations_are_refused_without_dns(url, category):
    """Every notation libc or a URL parser reads as a forbidden address is refused, DNS unasked."""
    assert category in refusal(url).reason


def test_localhost_is_refused_as_loopback():
    """`localhost`, resolved by the system resolver, is refused as a loopback address."""
    reason = refusal("http://localhost:8080/hook", resolver=system_resolver).reason
    assert reason.startswith("the host resolves to a loopback address")


@pytest.mark.parametrize(
    ("address", "category"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("0.0.0.0", "unspecified"),
        ("255.255.255.255", "broadcast"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.1", "documentation"),
        ("198.51.100.1", "documentation"),
        ("203.0.113.1", "documentation"),
        ("198.18.0.1", "benchmarking"),
        ("192.0.0.1", "IETF protocol assignment"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fc00::1", "private"),
        ("fe80::1", "link-local"),
        ("fec0::1", "site-local"),
        ("ff02::1", "multicast"),
        ("2001:db8::1", "documentation"),
        ("::ffff:10.0.0.1", "private"),
        ("::10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("64:ff9b:1::a00:1", "private"),
        ("2002:7f00:1::1", "loopback"),
        # Teredo: server 65.54.227.120 (public), client 127.0.0.1 (obfuscated as 80ff:fffe).
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", "loopback"),
        ("2001:0:c000:201::1", "documentation"),
        ("100::1", "reserved"),
    ],
)
def test_each_forbidden_range_is_refused_literal_or_resolved(address, category):
    """One address per forbidden range is refused, as a literal and as a DNS answer."""
    ip = ipaddress.ip_address(address)
    assert category in forbidden_reason(ip)
    literal = f"http://[{ip}]/" if ip.version == 6 else f"http://{ip}/"
    refused = refusal(literal)
    assert category in refused.reason and str(ip) in refused.reason
    assert refused.reason.endswith(", which is not allowed")
    resolved = refusal("http://hooks.example.test/", resolver=answers(address))
    assert resolved.reason.startswith("the host resolves to") and resolved.address == ip
    assert category in resolved.reason and resolved.reason.endswith(", which is not allowed")
    for shown in {str(ip), *re.findall(r"[0-9a-f]*[.:][0-9a-f.:]+", forbidden_reason(ip))}:
        assert shown not in resolved.reason


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34", "2002:5db8:d822::1"],
)
def test_public_addresses_are_accepted_literal_or_resolved(address):
    """A public address (or one embedding a public IPv4) passes, as a literal or a DNS answer."""
    ip = ipaddress.ip_address(address)
    assert forbidden_reason(ip) is None
    literal = f"https://[{ip}]:8443/in" if ip.version == 6 else f"https://{ip}:8443/in"
    assert resolve_and_check(literal, resolver=no_dns) == [ip]
    resolver = answers(address)
    assert resolve_and_check("https://hooks.example.com/in", resolver=resolver) == [ip]
    assert resolver.calls == [("hooks.example.com", 443)]


@pytest.mark.parametrize(
    ("url", "policy", "reason"),
    [
        ("ftp://hooks.example.com/in", DEFAULT_URL_POLICY, "only http and https"),
        ("/hooks/in", DEFAULT_URL_POLICY, "not absolute"),
        ("//hooks.example.com/in", DEFAULT_URL_POLICY, "not absolute"),
        ("https://user:pass@hooks.example.com/in", DEFAULT_URL_POLICY, "userinfo"),
        ("https://user@hooks.example.com/in", DEFAULT_URL_POLICY, "userinfo"),
        ("https://hooks.example.com/" + "a" * 2030, DEFAULT_URL_POLICY, "longer than 2048"),
        ("https:///in", DEFAULT_URL_POLICY, "no host"),
        ("https://:443/in", DEFAULT_URL_POLICY, "no host"),
        ("https:hooks.example.com/in", DEFAULT_URL_POLICY, "no host"),
        ("https://hooks.example.com/a b", DEFAULT_URL_POLICY, "whitespace"),
        ("https://hooks.example.com\t/in", DEFAULT_URL_POLICY, "whitespace"),
        ("https://hooks.example.com:99999/in", DEFAULT_URL_POLICY, "port"),
        ("https://[::1/in", DEFAULT_URL_POLICY, "malformed"),
        ("https://[nothex]/in", DEFAULT_URL_POLICY, "malformed"),
        ("http://hooks.example.com/in", UrlPolicy(require_https=True), "only https"),
    ],
)
def test_syntax_rules_refuse_bad_urls(url, policy, reason):
    """Wrong scheme, relative, userinfo, too long, no host, bad characters or port: refused."""
    with pytest.raises(UnsafeUrl) as caught:
        check_syntax(url, policy)
    assert reason in caught.value.reason
    assert isinstance(caught.value, CallbacksError) and isinstance(caught.value, ValueError)


def test_a_url_of_exactly_max_length_is_accepted():
    """The length limit is inclusive: 2048 characters pass, 2049 do not."""
    url = "https://hooks.example.com/"
    url += "a" * (2048 - len(url))
    check_syntax(url)
    with pytest.raises(UnsafeUrl):
        check_syntax(url + "a")


def test_one_private_answer_among_public_ones_refuses_the_url():
    """If any resolved address is forbidden, the whole URL is refused."""
    reason = refusal(
        "https://hooks.example.com/in", resolver=answers("93.184.216.34", "10.1.2.3")
    ).reason
    assert reason == "the host resolves to a private address, which is not allowed"


def test_the_resolved_address_is_logged_at_debug_only(caplog):
    """The address a refused name resolves to reaches the debug log, for operators, not the
    refusal."""
    caplog.set_level("DEBUG", logger="callbacks.ssrf")
    reason = refusal("https://intranet.example.com/in", resolver=answers("10.0.0.5")).reason
    assert "10.0.0.5" not in reason
    (record,) = [r for r in caplog.records if "10.0.0.5" in r.getMessage()]
    assert record.levelname == "DEBUG" and "intranet.example.com" in record.getMessage()


def test_a_name_that_does_not_resolve_is_refused():
    """A `.invalid` name (never resolvable) is refused with "does not resolve"."""
    reason = refusal("https://nothing-here.invalid/in", resolver=system_resolver).reason
    assert reason == "the host name does not resolve"


def test_allow_cidrs_let_through_that_network_and_only_it():
    """An allow-list of 127.0.0.0/8 admits loopback IPv4 (also IPv4-mapped), nothing else."""
    assert resolve_and_check("http://127.0.0.1:9/", LOOPBACK_ALLOWED, no_dns)
    assert resolve_and_check("http://[::ffff:127.0.0.2]:9/", LOOPBACK_ALLOWED, no_dns)
    assert resolve_and_check("http://hooks.test/", LOOPBACK_ALLOWED, answers("127.0.0.1"))
    for address in ("::1", "10.0.0.1", "169.254.169.254", "192.168.0.1"):
        assert forbidden_reason(ipaddress.ip_address(address), LOOPBACK_ALLOWED) is not None


def test_policy_from_settings_parses_cidrs_and_names_a_bad_one():
    """CIDR strings become networks; a malformed one raises ValueError naming it."""
    policy = UrlPolicy.from_settings([" 10.0.0.0/8", "fd00::/8", ""], require_https=True)
    assert policy.allow_cidrs == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    assert policy.require_https
    with pytest.raises(ValueError, match=re.escape("10.0.0.0/33")):
        UrlPolicy.from_settings(["10.0.0.0/8", "10.0.0.0/33"], require_https=False)


def post(sender: Sender, *requests_: tuple[str, dict[str, str]]) -> list:
    """The sender's answers to `requests_` (url, headers), made in turn on one event loop."""

    async def run() -> list:
        try:
            return [await sender.post(url, BODY, headers) for url, headers in requests_]
        finally:
            await sender.close()

    return asyncio.run(run())


def test_a_sender_refuses_a_forbidden_destination_without_connecting():
    """Under the default policy, an attempt to a loopback receiver never reaches it."""
    with Receiver() as receiver:
        (response,) = post(
            Sender(timeout_seconds=2, user_agent="Postback/test"), (receiver.url, {})
        )
        assert response.status_code is None and not response.ok
        assert response.error == (
            "unsafe destination: the host is a loopback address (127.0.0.1), which is not allowed"
        )
        assert receiver.received == []


def test_dns_rebinding_after_submission_is_refused_at_delivery():
    """A name public at submission but loopback at delivery is refused; nothing is sent."""
    resolver = rebinding("93.184.216.34", "127.0.0.1")
    with Receiver() as receiver:
        port = urlsplit(receiver.url).port
        url = f"http://rebind.example.test:{port}/hook"
        assert resolve_and_check(url, resolver=resolver)  # at submission
        sender = Sender(timeout_seconds=2, user_agent="Postback/test", resolver=resolver)
        (response,) = post(sender, (url, {}))
        assert response.error.startswith("unsafe destination")
        assert "loopback" in response.error and "127.0.0.1" not in response.error
        assert receiver.received == []


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host():
    """The attempt connects to the address checked and sends the URL's Host; a second attempt
    reuses that connection (made to a checked address) instead of resolving again."""
    resolver = answers("127.0.0.1")
    sender = Sender(
        timeout_seconds=5,
        user_agent="Postback/test",
        url_policy=LOOPBACK_ALLOWED,
        resolver=resolver,
    )
    with Receiver() as receiver:
        port = urlsplit(receiver.url).port
        url = f"http://hooks.example.test:{port}/hook"
        first_answer, second_answer = post(
            sender, (url, {"webhook-id": "msg_1"}), (url, {"webhook-id": "msg_2"})
        )
        assert first_answer.ok and second_answer.ok
        assert resolver.calls == [("hooks.example.test", port)]
        first, second = receiver.wait_for(2)
    assert first.headers["host"] == f"hooks.example.test:{port}"
    assert first.path == "/hook" and first.body == BODY
    assert second.headers["webhook-id"] == "msg_2"


def test_the_connector_resolves_names_only_through_the_checked_resolver():
    """Every name the connection pool resolves goes through the SSRF check, which refuses a
    name with any forbidden address and otherwise gives exactly the checked addresses."""
    sender = Sender(timeout_seconds=5, user_agent="Postback/test", resolver=answers("10.0.0.7"))

    async def run():
        try:
            connector = sender._client().connector
            resolver = connector._resolver
            assert isinstance(resolver, CheckedResolver)
            with pytest.raises(UnsafeUrl, match="private address"):
                await resolver.resolve("hooks.example.com", 443)
            resolver.resolver = answers("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946")
            found = await resolver.resolve("hooks.example.com", 443)
            assert [(r["host"], r["hostname"], r["port"]) for r in found] == [
                ("93.184.216.34", "hooks.example.com", 443),
                ("2606:2800:220:1:248:1893:25c8:1946", "hooks.example.com", 443),
            ]
        finally:
            await sender.close()

    asyncio.run(run())


def test_redirects_are_not_followed():
    """A 302 to another receiver is reported as such; the second receiver gets nothing."""
    sender = Sender(timeout_seconds=5, user_agent="Postback/test", url_policy=LOOPBACK_ALLOWED)
    with Receiver() as target, Receiver() as first:
        first.reply(Reply(status=302, headers=(("Location", target.url),)))
        (response,) = post(sender, (first.url, {}))
        assert response.status_code == 302 and response.error == "HTTP 302"
        assert len(first.wait_for(1)) == 1
        assert target.received == []
