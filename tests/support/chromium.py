"""Headless Chromium for the browser tests (the HTML report, the status page): one place that
finds it, and that fails instead of skipping in CI, where `.ci/run` installs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")  # Debian's `chromium` package


def require_chromium() -> Path:
    """The browser's path; without it the calling test skips, or fails when CI=true."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"headless Chromium not installed at {CHROMIUM} (Debian package 'chromium')"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}: in CI .ci/run installs it, so a browser test must not skip", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """require_chromium() for a test that needs the browser from its first line."""
    return require_chromium()
