"""Real parts (Redis, HAProxy, Chromium, promtool) that tests start for real."""

from __future__ import annotations

import os

import pytest


def missing_part(why: str) -> None:
    """A real part a test needs is not installed: skipped on a developer's machine, a
    failure in CI (.ci/run installs every part; none of their tests may be skipped there)."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
