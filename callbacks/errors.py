"""The exceptions of the delivery subsystem (tree drawn in the package docstring).

They sit under `postback.errors.InvalidInput`: everything the library refuses is
something it was given (a secret, a URL).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postback.errors import InvalidInput

if TYPE_CHECKING:
    from ipaddress import IPv4Address, IPv6Address


class CallbacksError(InvalidInput):
    """Root of every error raised by `callbacks`."""


class SecretError(CallbacksError):
    """A signing secret is not of the form `whsec_<base64>`."""


class UnsafeUrl(CallbacksError):
    """A callback URL that must not be called: malformed, or aimed at a non-public address.

    `reason` is a short human sentence fit for an API error body, e.g. "the host
    resolves to a loopback address (127.0.0.1)"; `address` is the offending
    address when the refusal is about one, else None. `str(exc)` is `reason`.
    """

    def __init__(
        self,
        url: str,
        reason: str,
        *,
        address: IPv4Address | IPv6Address | None = None,
    ) -> None:
        super().__init__(reason)
        self.url = url
        self.reason = reason
        self.address = address
