"""Shared fixtures: in-process simulators, and the real gateway as a subprocess."""

from __future__ import annotations

import pytest
import trio

from tests.support.gateway import Gateway, base_env, start_gateway

OPENAI_KEY = "sk-test-openai-key-0123456789abcdefXYZ"
DEEPGRAM_KEY = "test-key-at-least-40-characters-long-for-deepgram"


async def astart_gateway(*args: str, env: dict[str, str] | None = None, **kw) -> Gateway:
    """Start the gateway without blocking the trio loop (simulators run in it)."""
    return await trio.to_thread.run_sync(lambda: start_gateway(*args, env=env, **kw))


async def astop(gw: Gateway) -> int:
    return await trio.to_thread.run_sync(gw.stop)


@pytest.fixture
async def openai_sim(nursery):
    from voxgate.simulate.openai.server import OpenAISimulator

    sim = OpenAISimulator(api_key=OPENAI_KEY)
    sim.port = await nursery.start(sim.serve)
    return sim


@pytest.fixture
async def deepgram_sim(nursery):
    from voxgate.simulate.deepgram.server import DeepgramSimulator

    sim = DeepgramSimulator(api_key=DEEPGRAM_KEY, listen_idle_timeout=5.0)
    sim.port = await nursery.start(sim.serve)
    return sim


def gateway_env(openai_sim=None, deepgram_sim=None, **extra) -> dict[str, str]:
    """Environment pointing the gateway at the given simulators (and only their keys)."""
    env = base_env(**extra)
    if openai_sim is not None:
        env["OPENAI_API_KEY"] = OPENAI_KEY
        env["OPENAI_REALTIME_URL"] = f"ws://127.0.0.1:{openai_sim.port}/v1/realtime"
    if deepgram_sim is not None:
        env["DEEPGRAM_API_KEY"] = DEEPGRAM_KEY
        env["DEEPGRAM_AGENT_URL"] = f"ws://127.0.0.1:{deepgram_sim.port}"
        env["DEEPGRAM_API_URL"] = f"ws://127.0.0.1:{deepgram_sim.port}"
    return env


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
