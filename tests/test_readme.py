"""The README stays the user's manual: its commands and its configuration table are true."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from postback.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_exactly_the_readme_test_command():
    """.ci/run calls the test command the README gives, word for word."""
    blocks = re.findall(r"```sh\n(.*?)\n```", README, flags=re.S)
    test_command = next(b for b in blocks if b.endswith("pytest"))
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_setting_is_in_the_configuration_table():
    """Each setting's environment variable has a row in the README's table."""
    settings = Settings()
    rows = set(re.findall(r"^\| `([A-Z_]+)` \|", README, flags=re.M))
    expected = {settings.env_name(f.name) for f in dataclasses.fields(Settings)}
    assert expected == rows
