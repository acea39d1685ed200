"""The official Deepgram Python SDK (deepgram-sdk 7, synchronous websockets client) against
the gateway, configured only with the gateway's base URL and a dummy key: the gateway must
inject its own key and be indistinguishable from Deepgram for agent, listen (v1 and
Flux v2) and speak v2 sessions.

The SDK blocks, so it runs in a worker thread (abandoned if the test times out); the
simulator and a recording TCP relay in front of the gateway run in the test's trio loop.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.support import deepgram_sdk
from tests.support.deepgram_helpers import KEY, TcpTap, key_leaks
from tests.support.gateway import Gateway, base_env
from voxgate.simulate.audio import silence_pcm16, tone_pcm16
from voxgate.simulate.deepgram.server import DeepgramSimulator

SDK_KEY = "unused-client-key"


@pytest.fixture
async def sim(nursery):
    simulator = DeepgramSimulator(api_key=KEY)
    simulator.port = await nursery.start(simulator.serve)
    return simulator


@pytest.fixture
async def gateway(gateway_factory, sim) -> Gateway:
    url = f"ws://127.0.0.1:{sim.port}"
    return await gateway_factory(
        env=base_env(DEEPGRAM_API_KEY=KEY, DEEPGRAM_AGENT_URL=url, DEEPGRAM_API_URL=url)
    )


@pytest.fixture
async def tap(nursery, gateway) -> TcpTap:
    """What the SDK received, byte for byte (the SDK talks to the gateway through it)."""
    relay = TcpTap()
    relay.port = await nursery.start(relay.serve, gateway.port)
    return relay


def sdk_client(port: int) -> Any:
    return deepgram_sdk.sdk_client(port, SDK_KEY, path="/deepgram-proxy")


def agent_exchange(port: int) -> list[Any]:
    return deepgram_sdk.agent_exchange(sdk_client(port), "hi through voxgate")


def listen_exchange(port: int) -> list[Any]:
    seen: list[Any] = []
    audio = tone_pcm16(600, rate=16000) + silence_pcm16(100, rate=16000)
    with sdk_client(port).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000
    ) as listen:
        listen.send_media(audio)
        for _ in range(20):
            seen.append(listen.recv())
            if getattr(seen[-1], "type", None) == "Results":
                break
        listen.send_close_stream()
        for _ in range(20):
            seen.append(listen.recv())
            if getattr(seen[-1], "type", None) == "Metadata":
                break
    return seen


def assert_no_key_reached_the_client(gateway: Gateway, tap: TcpTap, seen: list[Any]) -> None:
    assert tap.downstream, "the SDK received nothing through the tap"
    assert not key_leaks(KEY, bytes(tap.downstream), repr(seen), gateway.output)


async def test_sdk_agent_through_the_gateway(gateway, tap, sim):
    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(agent_exchange, tap.port, abandon_on_cancel=True)
    kinds = [getattr(m, "type", None) for m in seen]
    assert kinds[:2] == ["Welcome", "SettingsApplied"]
    assert seen[-1].role == "assistant" and seen[-1].content == "You said: hi through voxgate"
    [record] = sim.connections
    assert record.path == "/v1/agent/converse"
    assert record.header("authorization") == f"Token {KEY}"  # the gateway's key, not the SDK's
    assert record.subprotocols == []
    assert [m["type"] for m in record.received_json()[:2]] == ["Settings", "InjectUserMessage"]
    assert_no_key_reached_the_client(gateway, tap, seen)


async def test_sdk_listen_through_the_gateway(gateway, tap, sim):
    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(listen_exchange, tap.port, abandon_on_cancel=True)
    results = [m for m in seen if getattr(m, "type", None) == "Results"]
    assert results[0].is_final
    assert results[0].channel.alternatives[0].transcript == "tone 0.6 seconds"
    assert getattr(seen[-1], "type", None) == "Metadata"
    [record] = sim.connections
    assert record.path == "/v1/listen"
    assert record.header("authorization") == f"Token {KEY}"
    assert ("model", "nova-3") in record.query and ("sample_rate", "16000") in record.query
    assert_no_key_reached_the_client(gateway, tap, seen)


async def test_sdk_listen_v2_flux_through_the_gateway(gateway, tap, sim):
    from deepgram.listen.v2.types import ListenV2Connected, ListenV2TurnInfo

    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(
            deepgram_sdk.flux_exchange, sdk_client(tap.port), abandon_on_cancel=True
        )
    assert isinstance(seen[0], ListenV2Connected)
    turns = seen[1:]
    assert all(isinstance(m, ListenV2TurnInfo) for m in turns), seen
    assert [t.event for t in turns if t.event != "Update"] == ["StartOfTurn", "EagerEndOfTurn", "EndOfTurn"]
    assert turns[-1].transcript == "tone 0.7 seconds" and turns[-1].turn_index == 0
    record = await sim.wait_connection()
    await record.closed.wait()
    assert record.path == "/v2/listen"
    assert record.header("authorization") == f"Token {KEY}"
    assert ("model", "flux-general-en") in record.query and ("eager_eot_threshold", "0.4") in record.query
    assert record.received_json() == [{"type": "CloseStream"}]
    assert_no_key_reached_the_client(gateway, tap, seen)


async def test_sdk_speak_v2_through_the_gateway(gateway, tap, sim):
    from deepgram.speak.v2.types import (
        SpeakV2Connected,
        SpeakV2Flushed,
        SpeakV2SessionMetadata,
        SpeakV2SpeechMetadata,
        SpeakV2SpeechStarted,
    )

    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(
            deepgram_sdk.speak_v2_exchange, sdk_client(tap.port), "Hi there.", abandon_on_cancel=True
        )
    assert isinstance(seen[0], SpeakV2Connected) and isinstance(seen[1], SpeakV2SpeechStarted)
    assert all(isinstance(m, bytes) for m in seen[2:-3])
    assert [type(m) for m in seen[-3:]] == [SpeakV2SpeechMetadata, SpeakV2Flushed, SpeakV2SessionMetadata]
    assert seen[-3].input_character_count == len("Hi there.")
    record = await sim.wait_connection()
    assert record.path == "/v2/speak" and record.header("authorization") == f"Token {KEY}"
    assert_no_key_reached_the_client(gateway, tap, seen)
