"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest

from tests.support.upstream import EchoUpstream


@pytest.fixture
async def echo(nursery):
    """An echo upstream (trio-websocket) on a free loopback port that records each connection."""
    up = EchoUpstream()
    up.port = await nursery.start(up.serve)
    return up
