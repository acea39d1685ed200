"""The official Deepgram SDK's Voice Agent client (v7, sync) pointed at the OpenAI translator:
the SDK appends `/v1/agent/converse` to its agent base URL, which the gateway routes to
`/openai` (openai-translator, routes). Settings -> SettingsApplied -> InjectUserMessage ->
assistant ConversationText, against the simulated OpenAI Realtime.

The SDK blocks, so it runs in a worker thread while the simulator runs in the test's trio
loop (trio.to_thread, bounded by trio.fail_after; the socket has its own timeout too).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from deepgram import DeepgramClient
from deepgram.agent.v1.types import AgentV1InjectUserMessage, AgentV1Settings
from deepgram.environment import DeepgramClientEnvironment

from tests.conftest import OPENAI_KEY
from tests.support.deepgram_helpers import SETTINGS
from tests.support.gateway import base_env, start_gateway
from tests.support.portfwd import Forwarder

DUMMY = "dg-client-side-dummy-key"


@pytest.fixture
def fwd():
    forwarder = Forwarder()
    forwarder.start()
    yield forwarder
    forwarder.stop()


@pytest.fixture
def gw(fwd):
    url = f"ws://127.0.0.1:{fwd.port}/v1/realtime"
    gateway = start_gateway(env=base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=url))
    yield gateway
    gateway.stop()
    assert OPENAI_KEY[3:15] not in gateway.output and DUMMY not in gateway.output


def converse(port: int) -> list[Any]:
    """One SDK session: every message received until the assistant's ConversationText."""
    http, ws = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    env = DeepgramClientEnvironment(base=http, production=ws, agent=f"{ws}/openai", agent_rest=http)
    client = DeepgramClient(api_key=DUMMY, environment=env)
    received: list[Any] = []
    with client.agent.v1.connect() as agent:
        agent._websocket.socket.settimeout(10)  # noqa: SLF001 - never hang the worker thread
        agent.send_settings(AgentV1Settings(**SETTINGS))
        for message in agent:
            received.append(message)
            kind = getattr(message, "type", None)
            if kind == "SettingsApplied":
                agent.send_inject_user_message(AgentV1InjectUserMessage(type="InjectUserMessage", content="hi sdk"))
            elif kind == "ConversationText" and message.role == "assistant":
                break
    return received


async def test_deepgram_sdk_agent_through_the_translator(gw, fwd, openai_sim):
    fwd.target = openai_sim.port
    with trio.fail_after(15):
        received = await trio.to_thread.run_sync(converse, gw.port, abandon_on_cancel=True)
    # the SDK has no model for AgentDone (the reference's extra done signal): it stays a dict
    assert {"type": "AgentDone"} in received
    typed = [m for m in received if not isinstance(m, bytes | dict)]
    types = [m.type for m in typed]
    assert types[:3] == ["Welcome", "SettingsApplied", "ConversationText"]
    assert typed[2].role == "user" and typed[2].content == "hi sdk"
    assert "AgentStartedSpeaking" in types and "Error" not in types
    assert typed[-1].content == "You said: hi sdk"
    assert any(isinstance(m, bytes) and m for m in received)  # the reply's audio, as binary
    [record] = openai_sim.connections
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert not any(DUMMY in v for _, v in record.headers)
    session = record.received_json()[0]["session"]
    assert session["model"] == "gpt-realtime" and session["instructions"] == "Be brief."
