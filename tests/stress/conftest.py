"""Fixtures shared by the stress tests."""

from __future__ import annotations

import pytest

from tests.support.slow_upstream import SlowUpstream


@pytest.fixture
async def echo(nursery):
    """A conforming echo upstream (wsproto) on a free loopback port."""
    up = SlowUpstream("echo")
    up.port = await nursery.start(up.serve)
    return up
