"""Shared plumbing for the three Postback packages: settings, Redis, ids, clock.

`app`, `worker` and `callbacks` import from here; this package imports none of them.
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("postback")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    __version__ = "0.0.0"

# What every webhook Postback sends (a delivery, a portal's test webhook) says it is.
WEBHOOK_USER_AGENT = f"Postback/{__version__}"
