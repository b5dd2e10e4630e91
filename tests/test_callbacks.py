"""The delivery building blocks: signatures, the retry policy, one HTTP attempt."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import random
import socket
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from callbacks.errors import SecretError
from callbacks.policy import DEFAULT_RETRY_POLICY, RetryPolicy
from callbacks.sender import Sender, parse_retry_after
from callbacks.signing import generate_secret, headers, sign
from callbacks.ssrf import UrlPolicy
from tests.receiver import Reply

BODY = b'{"type":"job.completed"}'
LOOPBACK_ALLOWED = UrlPolicy.from_settings(["127.0.0.0/8"], require_https=False)


def test_generated_secrets_are_whsec_with_32_random_bytes():
    """A new secret is `whsec_` + base64 of 32 bytes, different each time."""
    one, two = generate_secret(), generate_secret()
    assert one.startswith("whsec_") and one != two
    assert len(base64.b64decode(one[6:])) == 32


def test_signatures_verify_with_the_standard_webhooks_library():
    """Our headers verify with the independent standardwebhooks implementation."""
    secret = generate_secret()
    sent = headers([secret], "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, sent) == {"type": "job.completed"}


def test_a_tampered_body_does_not_verify():
    """Changing one byte of the body breaks the signature."""
    secret = generate_secret()
    sent = headers([secret], "msg_1", int(time.time()), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"completed", b"failed"), sent)


def test_several_secrets_give_space_separated_signatures_each_valid():
    """With two secrets (a rotation), either one verifies the message."""
    old, new = generate_secret(), generate_secret()
    now = int(time.time())
    value = sign([old, new], "msg_1", now, BODY)
    assert len(value.split(" ")) == 2
    sent = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": value}
    for secret in (old, new):
        Webhook(secret).verify(BODY, sent)


@pytest.mark.parametrize("secret", ["abc", "whsec_", "whsec_!!notbase64", "sk_AAAA"])
def test_malformed_secrets_are_refused(secret):
    """A secret that is not `whsec_<base64>` raises SecretError."""
    with pytest.raises(SecretError):
        sign([secret], "msg_1", 1, BODY)


def test_backoff_stays_within_jittered_exponential_bounds():
    """Each delay lies in [0.5, 1] x min(max, base x 2^(n-1))."""
    policy = RetryPolicy(base_seconds=2, max_seconds=100)
    rng = random.Random(7)
    for attempts in range(1, 30):
        ceiling = min(100, 2 * 2 ** (attempts - 1))
        for _ in range(20):
            delay = policy.delay_seconds(attempts, rng=rng)
            assert 0.5 * ceiling <= delay <= ceiling


def test_retry_after_is_honoured_within_bounds():
    """Retry-After replaces the delay, clamped to [computed delay, max_seconds]."""
    policy = RetryPolicy(base_seconds=10, max_seconds=60)
    rng = random.Random(1)
    assert policy.delay_seconds(1, retry_after_seconds=30, rng=rng) == 30
    assert policy.delay_seconds(1, retry_after_seconds=600, rng=rng) == 60
    assert policy.delay_seconds(1, retry_after_seconds=0, rng=rng) >= 5


def test_the_policy_gives_up_on_attempts_or_age():
    """No attempt after max_attempts, nor once the event is older than the window."""
    policy = RetryPolicy(max_attempts=3, window_seconds=100)
    assert not policy.gives_up(2, 10)
    assert policy.gives_up(3, 10)
    assert policy.gives_up(1, 100)


def test_the_default_schedule_spans_about_three_days():
    """The default policy's expected schedule (mean jitter 0.75) lasts about three days."""
    upper = sum(
        DEFAULT_RETRY_POLICY.backoff_seconds(n) for n in range(1, DEFAULT_RETRY_POLICY.max_attempts)
    )
    assert 2.5 * 86400 <= 0.75 * upper <= 3.5 * 86400
    assert DEFAULT_RETRY_POLICY.window_seconds == 3 * 86400


def test_retry_after_parses_seconds_and_http_dates():
    """Retry-After as ASCII delta-seconds or as an IMF-fixdate; anything else is ignored."""
    assert parse_retry_after("120") == 120
    assert parse_retry_after(" 7 ") == 7
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(later) <= 61
    for junk in ("soon", "²", "١٢٠", "1.5", "-3", "+3", "1e3", "Sunday, 06-Nov-94 08:49:37 GMT"):
        assert parse_retry_after(junk) is None, junk
    assert parse_retry_after(None) is None


def post(sender, url, headers):
    async def run():
        try:
            return await sender.post(url, BODY, headers)
        finally:
            await sender.close()

    return asyncio.run(run())


def test_a_post_carries_the_headers_and_does_not_follow_redirects(receiver):
    """The attempt sends JSON with our user agent and reports a 302 as a failure."""
    receiver.reply(Reply(302, headers=(("Location", "https://elsewhere.example.com/"),)))
    sender = Sender(timeout_seconds=5, user_agent="Postback/test", url_policy=LOOPBACK_ALLOWED)
    result = post(sender, receiver.url, {"webhook-id": "msg_1"})
    assert result.status_code == 302 and not result.ok
    (call,) = receiver.wait_for(1)
    assert call.headers["content-type"] == "application/json"
    assert call.headers["user-agent"] == "Postback/test"
    assert call.headers["webhook-id"] == "msg_1"
    assert call.body == BODY


def test_connection_errors_are_reported_not_raised():
    """A refused connection becomes an attempt result with an error."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sender = Sender(timeout_seconds=5, user_agent="Postback/test", url_policy=LOOPBACK_ALLOWED)
    result = post(sender, f"http://127.0.0.1:{port}/", {})
    assert result.error == "connection refused" and result.status_code is None


def test_retry_after_is_read_from_the_answer(receiver):
    """A 429 answer's Retry-After is passed on to the policy."""
    receiver.reply(Reply(429, headers=(("Retry-After", "42"),)))
    sender = Sender(timeout_seconds=5, user_agent="Postback/test", url_policy=LOOPBACK_ALLOWED)
    assert post(sender, receiver.url, {}).retry_after_seconds == 42
