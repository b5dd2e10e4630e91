"""A real browser on the console: Chromium driven by Playwright, and the app served over HTTP.

The browser is Debian's `chromium` (`apt-get install -y chromium`), found on the PATH
or as /usr/bin/chromium; without it, or without Playwright, the browser tests skip
with one line saying why. Every page a test visits can be kept as a screenshot in
`POSTBACK_TEST_ARTIFACTS` (default `test-artifacts/` in the working directory, which
git ignores). Each page also records what would show that something went wrong in
the browser: console errors (a Content-Security-Policy violation is one), uncaught
exceptions and dialogs (an `alert` an injected script would open).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.serving import make_server

from bench.receiver import Server

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium_path() -> str | None:
    """Debian's Chromium, if installed."""
    for candidate in ("chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def artifacts_dir() -> Path:
    path = Path(os.environ.get("POSTBACK_TEST_ARTIFACTS", "test-artifacts")) / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


class LiveServer:
    """`app` served on 127.0.0.1 by a threaded WSGI server, until `stop`."""

    def __init__(self, app: Flask) -> None:
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class Watched:
    """What went wrong in a page: console errors, uncaught errors, dialogs opened."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)

    def attach(self, page: Any) -> None:
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

        def dismiss(dialog: Any) -> None:
            # A page's own confirmation question is answered yes; any other dialog (an
            # `alert` an injected script opened) is a failure.
            if dialog.type == "confirm":
                self.confirmed.append(dialog.message)
                dialog.accept()
                return
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", dismiss)

    def clean(self) -> None:
        """Assert nothing went wrong (a page answered with an error status excepted)."""
        errors = [e for e in self.console_errors if not _EXPECTED_CONSOLE.search(e)]
        assert errors == [], errors
        assert self.page_errors == [], self.page_errors
        assert self.dialogs == [], self.dialogs


# A page answered with an error status logs "Failed to load resource"; the tests that ask
# for one say so themselves.
_EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status")


class Shots:
    """Screenshots named after the test, numbered in order."""

    def __init__(self, test_name: str) -> None:
        self.prefix = re.sub(r"[^A-Za-z0-9_-]+", "_", test_name)
        self.count = 0

    def take(self, page: Any, name: str) -> Path:
        self.count += 1
        path = artifacts_dir() / f"{self.prefix}-{self.count:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


class Answering:
    """A receiver on 127.0.0.1 that answers every POST with `status` and `body` and counts them."""

    def __init__(self, status: int, body: bytes, content_type: str = "text/html") -> None:
        self.status, self.body, self.content_type = status, body, content_type
        self.received: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer.received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
                self.send_response(outer.status)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Answering:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def served(app: Flask) -> Iterator[LiveServer]:
    live = LiveServer(app)
    try:
        yield live
    finally:
        live.stop()
