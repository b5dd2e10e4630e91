"""The exceptions of the delivery subsystem (tree drawn in the package docstring)."""

from __future__ import annotations


class CallbacksError(Exception):
    """Root of every error raised by `callbacks`."""


class SecretError(CallbacksError, ValueError):
    """A signing secret is not of the form `whsec_<base64>`."""
