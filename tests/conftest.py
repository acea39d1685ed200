"""Shared fixtures: in-process simulators, and the real gateway as a subprocess."""

from __future__ import annotations

import pytest

from tests.support.gateway import Gateway, astart_gateway, astop
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY
from tests.support.portfwd import Forwarder


@pytest.fixture
async def openai_sim(nursery):
    from voxgate.simulate.openai import OpenAISimulator

    sim = OpenAISimulator(api_key=OPENAI_KEY)
    sim.port = await nursery.start(sim.serve)
    return sim


@pytest.fixture
async def deepgram_sim(nursery):
    from voxgate.simulate.deepgram import DeepgramSimulator

    sim = DeepgramSimulator(api_key=DEEPGRAM_KEY, listen_idle_timeout=5.0)
    sim.port = await nursery.start(sim.serve)
    return sim


@pytest.fixture(scope="module")
def fwd():
    """A loopback forwarder a module's shared gateway points at; each test aims it at its own upstream."""
    forwarder = Forwarder()
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture
async def gateway_factory():
    """Start gateways on demand; every one is stopped (by PID) at teardown."""
    started: list[Gateway] = []

    async def start(*args: str, env: dict[str, str] | None = None, **kw) -> Gateway:
        gw = await astart_gateway(*args, env=env, **kw)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        await astop(gw)
