"""Where `postback listen` keeps its place: the cursor of the last event it forwarded.

One small JSON file per feed and destination, `{"after": CURSOR, "api_url", "forward_to"}`,
replaced atomically (a temporary file renamed over it) after each event, so a run that is
stopped or killed resumes after the last event it forwarded: none twice, none skipped.
The API key is never written; it only picks the file's name, through a digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from app.cli.common import FAILED, Refused


def default_path(
    environ: Mapping[str, str], *, api_url: str, api_key: str, forward_to: str
) -> Path:
    """The state file of this API, key and destination: under `$XDG_STATE_HOME/postback`
    (default `~/.local/state/postback`), named by a digest, so no two of them share one."""
    base = environ.get("XDG_STATE_HOME", "")
    home = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    key_digest = hashlib.sha256(api_key.encode()).hexdigest()
    name = hashlib.sha256(f"{api_url}\n{key_digest}\n{forward_to}".encode()).hexdigest()[:16]
    return home / "postback" / f"listen-{name}.json"


def load(path: Path) -> str | None:
    """The cursor saved in `path`, or None if there is no file; `Refused` if it is not one."""
    from worker.feed import CURSOR

    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Refused(f"cannot read the state file {path}: {exc.strerror}") from None
    try:
        after = json.loads(text).get("after")
    except (ValueError, AttributeError):
        after = ""
    if after is None or (isinstance(after, str) and CURSOR.match(after)):
        return after
    raise Refused(
        f"the state file {path} holds no cursor (like 1765000000000-0): "
        "remove it to start from the oldest event, or pass --after"
    )


def save(path: Path, after: str | None, *, api_url: str, forward_to: str) -> None:
    """Replace `path` with the cursor `after`, atomically: a reader sees the old or the new;
    `Refused` (exit status 1) if it cannot be written."""
    try:
        _replace(path, json.dumps({"after": after, "api_url": api_url, "forward_to": forward_to}))
    except OSError as exc:
        raise Refused(
            f"cannot write the state file {path}: {exc.strerror}", status=FAILED
        ) from None


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as file:
        file.write(text + "\n")
        file.flush()
        # On disk before the rename: a power cut leaves the old cursor, never an empty file.
        os.fsync(file.fileno())
    try:
        os.replace(file.name, path)
    except OSError:
        os.unlink(file.name)
        raise
