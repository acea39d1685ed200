"""The official Deepgram SDK's Voice Agent client (v7, sync), configured by base URL only, on
both of the gateway's agent paths: `PROXY_PATH/v1/agent/converse` (relayed to the simulated
Deepgram) and `/openai/v1/agent/converse` (the SDK appends `/v1/agent/converse` to `/openai`;
the OpenAI translator answers in Deepgram's dialect there). Every message the SDK yields must
be one of its typed models: a plain dict means the gateway sent something the Voice Agent API
does not have (the reference dialect's AgentDone, Transcript, UtteranceEnd).

The SDK blocks, so it runs in a worker thread while the simulators run in the test's trio
loop (trio.to_thread, bounded by trio.fail_after; the socket has its own timeout too).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio
import trio_websocket as tws

from tests.support.deepgram_sdk import sdk_client
from tests.support.gateway import gateway_env
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY
from tests.support.settings import FULL_SETTINGS
from voxgate.simulate.common import silence_pcm16, tone_pcm16

DUMMY = "dg-client-side-dummy-key"
PATHS = {"deepgram": "/deepgram-proxy", "openai": "/openai"}


@pytest.fixture
async def gw(gateway_factory, openai_sim, deepgram_sim):
    gateway = await gateway_factory(env=gateway_env(openai_sim, deepgram_sim))
    yield gateway
    assert OPENAI_KEY[3:15] not in gateway.output and DEEPGRAM_KEY[:12] not in gateway.output
    assert DUMMY not in gateway.output


def _until(agent: Any, seen: list[Any], done: Any, limit: int = 80) -> None:
    for _ in range(limit):
        seen.append(agent.recv())
        if done(seen[-1]):
            return
    raise AssertionError(f"no end of turn within {limit} messages: {seen!r}")


def _is(kind: str, role: str | None = None) -> Any:
    def check(message: Any) -> bool:
        return getattr(message, "type", None) == kind and (role is None or message.role == role)

    return check


def dialogue(port: int, path: str, *, speak: bool) -> list[Any]:
    """Settings, a typed user message (and, with `speak`, a spoken one), each turn read to its
    AgentAudioDone, then a text frame that is not JSON; everything the SDK yielded."""
    from deepgram.agent.v1.types import AgentV1InjectUserMessage, AgentV1Settings

    seen: list[Any] = []
    with sdk_client(port, DUMMY, path=path).agent.v1.connect() as agent:
        agent._websocket.socket.settimeout(10)  # noqa: SLF001 - never hang the worker thread
        agent.send_settings(AgentV1Settings(**FULL_SETTINGS))
        _until(agent, seen, _is("SettingsApplied"))
        agent.send_inject_user_message(AgentV1InjectUserMessage(content="hi sdk"))
        _until(agent, seen, _is("AgentAudioDone"))
        if speak:
            for _ in range(10):  # 600 ms of "speech", then silence ends the turn
                agent.send_media(tone_pcm16(60, rate=16000))
            agent.send_media(silence_pcm16(600, rate=16000))
            _until(agent, seen, _is("AgentAudioDone"))
        agent.send_raw("this is not JSON")
        _until(agent, seen, _is("Error"))
    return seen


def check_typed_turns(seen: list[Any]) -> tuple[list[Any], list[str]]:
    """Every message the SDK yielded is typed (or audio bytes), each turn's assistant text
    comes before its AgentAudioDone, and the non-JSON frame ends in an Error; returns the
    typed messages and their types."""
    untyped = [m for m in seen if isinstance(m, dict)]
    assert untyped == []
    typed = [m for m in seen if not isinstance(m, bytes)]
    types = [m.type for m in typed]
    assert types[:2] == ["Welcome", "SettingsApplied"]
    assert any(isinstance(m, bytes) and m for m in seen)  # the reply's audio, as binary
    # the assistant's text of each turn comes before that turn's AgentAudioDone
    texts = [i for i, m in enumerate(typed) if _is("ConversationText", "assistant")(m)]
    dones = [i for i, t in enumerate(types) if t == "AgentAudioDone"]
    assert len(texts) == len(dones) >= 1 and all(t < d for t, d in zip(texts, dones, strict=True))
    assert typed[-1].type == "Error" and typed[-1].code == "UNPARSABLE_CLIENT_MESSAGE"
    return typed, types


def check_openai_upstream(typed: list[Any], types: list[str], openai_sim: Any) -> None:
    """On /openai: the spoken turn was transcribed, and upstream saw the gateway's key only."""
    users = [m.content for m in typed if _is("ConversationText", "user")(m)]
    assert users == ["hi sdk", "audio of 0.6 seconds"]  # the spoken turn's final transcript
    assert "LatencyReport" in types and "AgentStartedSpeaking" in types
    [record] = openai_sim.connections
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert not any(DUMMY in v for _, v in record.headers)
    session = record.received_json()[0]["session"]
    assert session["model"] == "gpt-realtime" and session["instructions"] == "Be brief."


@pytest.mark.parametrize("provider", ["deepgram", "openai"])
async def test_sdk_yields_only_typed_messages_on_both_agent_paths(gw, provider, openai_sim):
    speak = provider == "openai"
    with trio.fail_after(30):
        seen = await trio.to_thread.run_sync(
            lambda: dialogue(gw.port, PATHS[provider], speak=speak), abandon_on_cancel=True
        )
    typed, types = check_typed_turns(seen)
    if provider == "openai":
        check_openai_upstream(typed, types, openai_sim)


async def test_bare_openai_path_keeps_the_reference_dialect(gw, openai_sim):
    """dg_react_agent connects to bare `/openai` and expects the reference's message set."""
    async with tws.open_websocket_url(f"ws://127.0.0.1:{gw.port}/openai") as ws:
        assert orjson.loads(await ws.get_message())["type"] == "Welcome"
        await ws.send_message(orjson.dumps(FULL_SETTINGS).decode())
        kinds: list[str] = []
        with trio.fail_after(10):
            while "SettingsApplied" not in kinds:
                kinds.append(orjson.loads(await ws.get_message())["type"])
            await ws.send_message('{"type":"InjectUserMessage","content":"hi"}')
            while "AgentAudioDone" not in kinds:
                message = await ws.get_message()
                if isinstance(message, str):
                    kinds.append(orjson.loads(message)["type"])
            await ws.send_message("this is not JSON")
            while kinds[-1] != "Error":
                message = await ws.get_message()
                if isinstance(message, str):
                    kinds.append(orjson.loads(message)["type"])
    assert "AgentDone" in kinds and kinds.index("AgentDone") < kinds.index("AgentAudioDone")
    assert "LatencyReport" not in kinds
    assert orjson.loads(message)["code"] == "unparsable_client_message"
