"""The `/openai` translator through a running gateway (openai-translator.md §7.5 A1-V13, §1.5,
§5.2): a Deepgram-protocol client on one side, a scripted fake OpenAI Realtime upstream
(tests/support/scripted_openai.py) or the simulator on the other.

Most tests share one gateway per module: it points at a loopback forwarder
(tests/support/portfwd.py) that each test aims at its own fake, so a test costs its own
traffic, not a gateway start. Options that change behaviour (connect timeout, limits, drain)
get their own gateway.

To see that a message produced *nothing*, a test sends a marker after it and reads up to the
marker's answer: both legs are ordered, so anything the message caused would come first.
"""

from __future__ import annotations

import base64
import math
import re
import signal
import socket
import uuid

import numpy as np
import orjson
import pytest
import trio
import trio_websocket as tws

from tests.support.agent_client import WAIT, Client
from tests.support.gateway import Gateway, base_env, start_gateway
from tests.support.keys import OPENAI_KEY
from tests.support.portfwd import Forwarder
from tests.support.scripted_openai import FakeConn, Script, ScriptedOpenAI
from tests.support.settings import (
    BRIEF_SETTINGS,
    CONTEXT,
    MANUAL_SETTINGS,
    MINIMAL_DEEPGRAM_SETTINGS,
    PROMPT,
    SETTINGS,
    settings_message,
)
from voxgate.simulate.common import silence_pcm16, tone_pcm16

CLIENT_TYPES = {
    "Welcome", "SettingsApplied", "PromptUpdated", "InjectionRefused", "ConversationText",
    "AgentStartedSpeaking", "AgentThinking", "AgentDone", "AgentAudioDone", "FunctionCallRequest",
    "UserStartedSpeaking", "UtteranceEnd", "Transcript", "Error",
    "ThinkUpdated", "ListenUpdated", "FunctionCallCancelled", "LatencyReport",
}  # openai-translator §3.3


# --- gateways and upstreams ------------------------------------------------------------------


def fwd_env(fwd: Forwarder, **extra: str) -> dict[str, str]:
    url = f"ws://127.0.0.1:{fwd.port}/v1/realtime"
    return base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=url, **extra)


def check_gateway_output(gw: Gateway) -> None:
    out = gw.output
    assert OPENAI_KEY[3:15] not in out, "a piece of the API key reached the gateway's output"
    assert "Traceback" not in out, out[-4000:]
    assert "translator internal error" not in out, out[-4000:]


@pytest.fixture(scope="module")
def gw(fwd):
    gateway = start_gateway(env=fwd_env(fwd))
    yield gateway
    gateway.stop()
    check_gateway_output(gateway)


@pytest.fixture(scope="module")
def fast_gw(fwd):
    """Connect timeout 0.5 s and a 4 KiB message limit."""
    gateway = start_gateway("--connect-timeout", "0.5", "--max-message-bytes", "4096", env=fwd_env(fwd))
    yield gateway
    gateway.stop()
    check_gateway_output(gateway)


@pytest.fixture
async def fake(nursery, fwd):
    upstream = ScriptedOpenAI()
    upstream.port = await nursery.start(upstream.serve)
    fwd.target = upstream.port
    return upstream


@pytest.fixture
async def sim(openai_sim, fwd):
    fwd.target = openai_sim.port
    return openai_sim


# --- the client ------------------------------------------------------------------------------


@pytest.fixture
async def connect(nursery):
    clients: list[Client] = []

    async def open_client(gateway: Gateway, path: str = "/openai") -> Client:
        ws = await tws.connect_websocket_url(nursery, gateway.url(path), max_message_size=64 << 20)
        client = Client(ws)
        nursery.start_soon(client.reader)
        clients.append(client)
        return client

    yield open_client
    for client in clients:
        with trio.move_on_after(1):
            await client.ws.aclose()


async def upstream_marker(conn: FakeConn, client: Client) -> int:
    """Send a marker event upstream; return the index of its UtteranceEnd on the client."""
    value = round(1000 + len(conn.sent) + 0.25, 2)
    await conn.send({"type": "input_audio_buffer.speech_stopped", "last_word_end": value})
    await client.wait_for(lambda: any(f.get("last_word_end") == value for f in client.of("UtteranceEnd")))
    return client.index(lambda f: isinstance(f, dict) and f.get("last_word_end") == value)


async def client_marker(conn: FakeConn, client: Client) -> int:
    """Send an InjectAgentMessage (it never asks for a response); return the index of its
    conversation.item.create among the upstream events."""
    before = conn.count("conversation.item.create")
    await client.send({"type": "InjectAgentMessage", "message": "marker"})
    await conn.wait_for(lambda c: c.count("conversation.item.create") > before)
    marker = [{"type": "output_text", "text": "marker"}]
    return next(i for i, e in enumerate(conn.events()) if e.get("item", {}).get("content") == marker)


async def ready(gw: Gateway, fake: ScriptedOpenAI, connect, settings: dict = SETTINGS) -> tuple[Client, FakeConn]:
    """A client with Settings applied, and its upstream connection."""
    client = await connect(gw)
    await client.send(settings)
    conn = await fake.next_conn()
    await client.wait_type("SettingsApplied")
    return client, conn


def pcm16(values: np.ndarray) -> bytes:
    return values.astype("<i2").tobytes()


# --- A: session setup ------------------------------------------------------------------------


async def test_a1_settings_become_one_session_update(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    assert client.after_welcome() == ["SettingsApplied"]
    [update] = conn.events("session.update")
    session = update["session"]
    assert "turn_detection" not in session
    assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    assert session["instructions"] == "Help." and session["type"] == "realtime"
    # upstream handshake: the gateway's key as a bearer header, the default model
    assert conn.path == "/v1/realtime" and conn.query == [("model", "gpt-realtime")]
    assert conn.headers["authorization"] == f"Bearer {OPENAI_KEY}"


async def test_a2_session_created_is_not_readiness(gw, fake, connect):
    fake.script = Script(session_created=True)
    client, conn = await ready(gw, fake, connect)
    await upstream_marker(conn, client)
    assert client.after_welcome() == ["SettingsApplied", "UtteranceEnd"]


async def test_a3_duplicate_settings_answered_after_the_real_one(gw, fake, connect):
    fake.script = Script(session_updated_delay=0.1)
    client = await connect(gw)
    await client.send(SETTINGS)
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await client.wait_type("SettingsApplied", 2)
    await upstream_marker(conn, client)
    assert client.after_welcome() == ["SettingsApplied", "SettingsApplied", "UtteranceEnd"]
    assert conn.count("session.update") == 1


async def test_a4_greeting_is_text_only(gw, fake, connect):
    client, conn = await ready(gw, fake, connect, settings_message({"greeting": "Hi"}))
    await client.wait_type("AgentAudioDone")
    await client_marker(conn, client)
    assert client.frames[1:5] == [
        {"type": "SettingsApplied"},
        {"type": "ConversationText", "role": "assistant", "content": "Hi"},
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    assert conn.types() == ["session.update", "conversation.item.create"]  # only the marker


async def test_a5_context_suppresses_the_greeting(gw, fake, connect):
    settings = settings_message({"greeting": "Hi", "think": {"prompt": PROMPT}, "context": CONTEXT})
    client, conn = await ready(gw, fake, connect, settings)
    await upstream_marker(conn, client)
    assert client.after_welcome() == ["SettingsApplied", "UtteranceEnd"]
    instructions = conn.events("session.update")[0]["session"]["instructions"]
    assert "Previous conversation:\nuser: Hello\nassistant: Hi there!" in instructions
    assert conn.count("conversation.item.create") == 0


# --- B: text turns ---------------------------------------------------------------------------


async def test_b1_text_turn(gw, fake, connect):
    fake.script = Script(item_added_delay=0.1, reply_text="T")
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    assert client.frames[1:] == [
        {"type": "SettingsApplied"},
        {"type": "ConversationText", "role": "user", "content": "q"},
        {"type": "AgentStartedSpeaking"},
        {"type": "ConversationText", "role": "assistant", "content": "T"},
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    assert conn.types() == ["session.update", "conversation.item.create", "response.create"]
    [created] = conn.times("conversation.item.create")
    [create] = conn.times("response.create")
    assert create - created >= 0.1  # R7: only after the item was confirmed


async def test_b2_inject_before_settings_waits_for_session_updated(gw, fake, connect):
    fake.script = Script(session_updated_delay=0.05)
    client = await connect(gw)
    await client.send({"type": "InjectUserMessage", "content": "early"})
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await client.wait_type("AgentAudioDone")
    types = conn.types()
    assert types.index("session.update") < types.index("conversation.item.create")
    assert conn.times("conversation.item.create")[0] >= conn.sent_times("session.updated")[0]
    assert client.after_welcome()[:2] == ["SettingsApplied", "ConversationText"]


async def test_b3_added_and_done_of_one_item_make_one_create(gw, fake, connect):
    fake.script = Script(item_done=True)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    await client_marker(conn, client)
    assert conn.count("response.create") == 1


async def test_b4_audio_reply_one_binary_frame_before_the_done_pair(gw, fake, connect):
    fake.script = Script(reply_audio=True)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("ConversationText", 2)
    await upstream_marker(conn, client)
    assert client.after_welcome() == [
        "SettingsApplied", "ConversationText", "AgentStartedSpeaking", "<320 B>", "AgentDone",
        "AgentAudioDone", "ConversationText", "UtteranceEnd",
    ]
    assert bytes(320) in client.frames
    assert all(f["type"] in CLIENT_TYPES for f in client.frames if isinstance(f, dict))


# --- C: function calls -----------------------------------------------------------------------

CALL = {"type": "response.function_call_arguments.done", "call_id": "c1", "name": "f", "arguments": "{}"}


async def test_c1_function_call_request(gw, fake, connect):
    fake.script = Script(after_session_updated=[CALL])
    client, conn = await ready(gw, fake, connect)
    request = await client.wait_type("FunctionCallRequest")
    assert client.after_welcome() == ["SettingsApplied", "AgentStartedSpeaking", "FunctionCallRequest"]
    assert request["functions"] == [{"id": "c1", "name": "f", "arguments": "{}", "client_side": True}]


async def test_c2_function_result_then_one_deferred_create(gw, fake, connect):
    fake.script = Script(after_session_updated=[CALL], function_output="item_events")
    client, conn = await ready(gw, fake, connect)
    await client.wait_type("FunctionCallRequest")
    await client.send({"type": "FunctionCallResponse", "id": "c1", "name": "f", "content": '{"t":1}'})
    thinking = await client.wait_type("AgentThinking")
    assert thinking == {"type": "AgentThinking", "content": ""}
    await client.wait_type("ConversationText")
    [output] = conn.events("conversation.item.create")
    assert output["item"] == {"type": "function_call_output", "call_id": "c1", "output": '{"t":1}'}
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    assert conn.times("response.create")[0] >= conn.sent_times("conversation.item.done")[0]
    await client_marker(conn, client)
    assert conn.count("response.create") == 1
    assert client.of("ConversationText")[0] == {"type": "ConversationText", "role": "assistant",
                                                "content": "Hello from mock"}


@pytest.mark.parametrize("variant", ["response_done", "response_done_then_text_done", "audio_done_response_done"])
async def test_c3_each_completion_variant_makes_exactly_one_create(gw, fake, connect, variant):
    fake.script = Script(after_session_updated=[CALL], function_output=variant)
    client, conn = await ready(gw, fake, connect)
    await client.wait_type("FunctionCallRequest")
    await client.send({"type": "FunctionCallResponse", "id": "c1", "content": "ok"})
    await client.wait_type("ConversationText")  # the reply to the deferred create
    if variant == "response_done_then_text_done":
        await conn.wait_for(lambda c: len(c.sent_times("response.output_text.done")) >= 2)
    await upstream_marker(conn, client)
    assert conn.count("response.create") == 1
    assert client.count("ConversationText") == 1
    assert client.count("AgentAudioDone") == 2  # the function-call response, then the reply


@pytest.mark.parametrize(("fields", "output"), [({"result": {"a": 1}}, '{"a":1}'), ({"error": "x"}, '{"error":"x"}')])
async def test_c4_result_and_error_outputs(gw, fake, connect, fields, output):
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "FunctionCallResponse", "id": "c9", **fields})
    await conn.wait_for(lambda c: c.count("conversation.item.create") == 1)
    assert orjson.loads(conn.events("conversation.item.create")[0]["item"]["output"]) == orjson.loads(output)


# --- M: microphone audio ---------------------------------------------------------------------


async def test_m1_audio_before_ready_is_held_then_resampled(gw, fake, connect):
    fake.script = Script(session_updated_delay=0.05)
    client = await connect(gw)
    await client.send(SETTINGS)
    await client.send(bytes(960))
    conn = await fake.next_conn()
    await conn.wait_for(lambda c: c.count("input_audio_buffer.append") == 1)
    assert conn.times("input_audio_buffer.append")[0] >= conn.sent_times("session.updated")[0]
    assert conn.types().index("session.update") < conn.types().index("input_audio_buffer.append")
    assert [len(a) for a in conn.appended_audio()] == [1438]  # 480 samples @16k -> 719 @24k


async def test_m2_manual_commit_after_the_debounce(gw, fake, connect):
    client, conn = await ready(gw, fake, connect, MANUAL_SETTINGS)
    await client.send(bytes(40000))
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    types = conn.types()
    assert types[-2:] == ["input_audio_buffer.commit", "response.create"]
    delay = conn.times("input_audio_buffer.commit")[0] - conn.times("input_audio_buffer.append")[-1]
    assert 0.35 <= delay <= 1.0  # the 400 ms debounce
    assert conn.events("session.update")[0]["session"]["audio"]["input"]["turn_detection"] is None


async def test_m3_manual_mode_no_commit_below_the_threshold(gw, fake, connect):
    client, conn = await ready(gw, fake, connect, MANUAL_SETTINGS)
    await client.send(bytes(500))
    await conn.wait_for(lambda c: c.count("input_audio_buffer.append") == 1)
    await trio.sleep(0.6)  # past the 400 ms debounce: the timer fired and found too little audio
    await client_marker(conn, client)
    assert conn.count("input_audio_buffer.commit") == 0 and conn.count("response.create") == 0


async def test_m4_server_vad_mode_only_appends(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    for _ in range(8):
        await client.send(bytes(8000))
        await trio.sleep(0.1)  # a live microphone's cadence
    await trio.sleep(0.5)  # a manual-mode debounce would have fired by now
    await client_marker(conn, client)
    assert conn.count("input_audio_buffer.append") == 8
    assert conn.count("input_audio_buffer.commit") == 0 and conn.count("response.create") == 0


async def test_m5_manual_mode_continuous_audio_still_commits(gw, fake, connect):
    client, conn = await ready(gw, fake, connect, MANUAL_SETTINGS)
    started = trio.current_time()
    with trio.move_on_after(2.5):
        while conn.count("input_audio_buffer.commit") == 0:
            await client.send(bytes(8000))  # every 100 ms: the debounce never fires
            await trio.sleep(0.1)
    assert conn.count("input_audio_buffer.commit") == 1
    # 1 s threshold after 4 frames (0.4 s), then the 600 ms max-coalesce cap
    assert conn.times("input_audio_buffer.commit")[0] - started < 1.6
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    assert conn.types().index("response.create") == conn.types().index("input_audio_buffer.commit") + 1


# --- E: errors -------------------------------------------------------------------------------


async def test_e1_unknown_client_type(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "Foo"})
    error = await client.wait_type("Error")
    assert error["code"] == "unsupported_client_message" and "Foo" in error["description"]
    assert await client_marker(conn, client) == 1  # nothing between session.update and the marker


async def test_e2_keepalive_never_reaches_upstream(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "KeepAlive"})
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    assert conn.types() == ["session.update", "conversation.item.create", "response.create"]
    assert client.count("Error") == 0


async def test_e3_upstream_errors_pass_through(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "error", "error": {"type": "x", "code": "rate_limit_exceeded", "message": "m"}})
    await conn.send({"type": "error", "error": {"message": "no code here"}})
    await client.wait_type("Error", 2)
    assert client.of("Error") == [
        {"type": "Error", "description": "m", "code": "rate_limit_exceeded"},
        {"type": "Error", "description": "no code here", "code": "unknown"},
    ]


async def test_e4_active_response_error_is_swallowed(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "error", "error": {"code": "conversation_already_has_active_response", "message": "busy"}})
    await upstream_marker(conn, client)
    assert client.after_welcome() == ["SettingsApplied", "UtteranceEnd"]


@pytest.mark.parametrize("error_first", [False, True])
async def test_e5_idle_timeout_error_after_the_assistant_text(gw, fake, connect, error_first):
    fake.script = Script(respond=False)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    idle = {"type": "error", "error": {"code": "idle_timeout", "message": "idle"}}
    text = {"type": "response.output_text.done", "text": "T"}
    await conn.send(*([idle, text] if error_first else [text, idle]))
    await client.wait_type("Error")
    types = client.types()
    assert types.index("ConversationText", types.index("ConversationText") + 1) < types.index("Error")
    assert client.of("Error") == [{"type": "Error", "description": "idle", "code": "idle_timeout"}]


async def test_e6_upstream_closing_before_session_updated(gw, fake, connect):
    fake.script = Script(session_updated=False)
    client = await connect(gw)
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await conn.wait_for(lambda c: c.count("session.update") == 1)
    await conn.close(1000)
    close = await client.wait_closed()
    assert client.after_welcome() == ["Error"]
    assert client.frames[1]["code"] == "upstream_closed_before_session_ready"
    assert close.code == 1000


async def test_e7_non_json_upstream_frame(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send("this is not JSON {")
    error = await client.wait_type("Error")
    assert error["code"] == "unmapped_upstream_event"
    assert not client.closed.is_set()


async def test_e8_ignored_upstream_events(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "conversation.created"}, {"type": "rate_limits.updated", "rate_limits": []},
                    {"type": "some.future.event", "x": 1})
    await upstream_marker(conn, client)
    assert client.after_welcome() == ["SettingsApplied", "UtteranceEnd"]


# --- F: speech events, transcripts, item text ------------------------------------------------


async def test_f1_speech_events(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "input_audio_buffer.speech_started"}, {"type": "input_audio_buffer.speech_stopped"},
                    {"type": "input_audio_buffer.speech_stopped", "channel": [0], "last_word_end": 1.5})
    await client.wait_type("UtteranceEnd", 2)
    assert client.frames[2:] == [
        {"type": "UserStartedSpeaking"},
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0},
        {"type": "UtteranceEnd", "channel": [0], "last_word_end": 1.5},
    ]


async def test_f2_transcripts_accumulate_then_final(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    delta = "conversation.item.input_audio_transcription.delta"
    await conn.send(*[{"type": delta, "item_id": "i1", "delta": d} for d in ("Hel", "lo ", "world")])
    await conn.send({"type": "conversation.item.input_audio_transcription.completed", "item_id": "i1",
                     "transcript": "Hello world", "start": 1.5, "duration": 2.25, "channel": 1, "channel_index": [1]})
    await client.wait_type("Transcript", 4)
    transcripts = client.of("Transcript")
    assert [(t["transcript"], t["is_final"]) for t in transcripts] == [
        ("Hel", False), ("Hello ", False), ("Hello world", False), ("Hello world", True)]
    final = transcripts[-1]
    assert (final["start"], final["duration"], final["channel"], final["channel_index"]) == (1.5, 2.25, 1, [1])
    assert final["speech_final"] is True


async def test_f3_assistant_function_call_item_text(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "conversation.item.added", "item": {
        "id": "it1", "type": "message", "role": "assistant",
        "content": [{"type": "function_call", "name": "f", "arguments": "{}"}]}})
    await client.wait_type("ConversationText")
    assert client.frames[2:] == [
        {"type": "AgentStartedSpeaking"},
        {"type": "ConversationText", "role": "assistant", "content": "Function call: f({})"},
    ]


# --- G: Settings during a response -----------------------------------------------------------


async def test_g1_settings_mid_response_get_a_synthetic_ack(gw, fake, connect):
    fake.script = Script(respond=False)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    audio = {"type": "response.output_audio.delta", "delta": "AAAAAA=="}
    await conn.send(audio, {"type": "response.output_audio.done"})
    await client.wait_type("AgentAudioDone")
    await client.send(SETTINGS)
    await client.wait_type("SettingsApplied", 2)
    await conn.send({"type": "response.output_text.done", "text": "T"})
    await client.wait_type("ConversationText", 2)
    await client_marker(conn, client)
    assert conn.count("session.update") == 1


# --- V: voxgate decisions --------------------------------------------------------------------


async def test_v1_welcome_before_the_upstream_answers(gw, fake, connect):
    fake.script = Script(hang=True)
    client = await connect(gw)
    await client.wait_for(lambda: len(client.frames) == 1)
    welcome = client.frames[0]
    assert welcome["type"] == "Welcome" and uuid.UUID(welcome["request_id"]).version == 4
    conn = await fake.next_conn()
    assert not conn.accepted


async def test_v2_minimal_deepgram_settings(gw, fake, connect):
    client, conn = await ready(gw, fake, connect, MINIMAL_DEEPGRAM_SETTINGS)
    session = conn.events("session.update")[0]["session"]
    assert session["model"] == "gpt-realtime" and session["instructions"] == ""
    await client.send(bytes(range(240)) * 4)
    await conn.wait_for(lambda c: c.count("input_audio_buffer.append") == 1)
    assert conn.appended_audio() == [bytes(range(240)) * 4]  # 24 kHz in: passed through


async def test_v3_inject_without_content(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage"})
    error = await client.wait_type("Error")
    assert error["code"] == "invalid_client_message"
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    assert conn.types() == ["session.update", "conversation.item.create", "response.create"]


async def test_v4_bad_frames_are_dropped_and_the_session_goes_on(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.send("hello")
    await client.send(b"\x01\x02\x03")
    await client.wait_type("Error", 2)
    assert [e["code"] for e in client.of("Error")] == ["unparsable_client_message", "invalid_audio_frame"]
    assert await client_marker(conn, client) == 1
    assert not client.closed.is_set()


async def test_v5_unsupported_input_rate(gw, fake, connect):
    client = await connect(gw)
    await client.send(settings_message(audio={"input": {"encoding": "linear16", "sample_rate": 11025}}))
    conn = await fake.next_conn()
    error = await client.wait_type("Error")
    assert error["code"] == "unsupported_audio_format"
    await client.send(SETTINGS)  # a good one still goes through
    await client.wait_type("SettingsApplied")
    assert conn.count("session.update") == 1


async def test_v6_upstream_rejects_with_401(gw, fake, connect):
    fake.script = Script(reject_status=401)
    client = await connect(gw)
    close = await client.wait_closed()
    assert client.after_welcome() == ["Error"]
    assert client.frames[1]["code"] == "upstream_auth_failed"
    assert close.code == 1008
    assert OPENAI_KEY[3:15] not in client.frames[1]["description"]


async def test_v6_upstream_never_answers(fast_gw, fake, connect):
    fake.script = Script(hang=True)
    client = await connect(fast_gw)
    started = trio.current_time()
    close = await client.wait_closed()
    assert 0.4 <= trio.current_time() - started < 3
    assert client.after_welcome() == ["Error"]
    assert client.frames[1]["code"] == "upstream_unavailable" and close.code == 1011


async def test_v6_upstream_refuses_tcp(gateway_factory, connect):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway = await gateway_factory(env=base_env(
        OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=f"ws://127.0.0.1:{port}/v1/realtime"))
    client = await connect(gateway)
    await client.send(SETTINGS)  # queued, then discarded
    close = await client.wait_closed()
    assert client.after_welcome() == ["Error"]
    assert client.frames[1]["code"] == "upstream_unavailable" and close.code == 1011


@pytest.mark.parametrize(("how", "expected"), [(4001, 4001), (1001, 1001), ("drop", 1011)])
async def test_v7_upstream_close_codes_reach_the_client(gw, fake, connect, how, expected):
    client, conn = await ready(gw, fake, connect)
    if how == "drop":
        await conn.drop()
    else:
        await conn.close(how, "secret upstream detail sk-abc")
    close = await client.wait_closed()
    assert close.code == expected
    assert "secret" not in (close.reason or "") and "sk-" not in (close.reason or "")
    assert client.after_welcome() == ["SettingsApplied"]


async def test_v8_inject_during_an_active_response_waits_for_its_end(gw, fake, connect):
    fake.script = Script(reply_text="T2")
    client, conn = await ready(gw, fake, connect)
    await conn.send({"type": "response.created", "response": {"id": "r_vad"}})
    await upstream_marker(conn, client)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await conn.wait_for(lambda c: c.count("conversation.item.create") == 1)
    await conn.wait_for(lambda c: len(c.sent_times("conversation.item.added")) == 1)
    await conn.send({"type": "response.output_text.delta", "response_id": "r_vad", "delta": "T1"})
    await trio.sleep(0.3)  # the VAD response is still going
    assert conn.count("response.create") == 0
    await conn.send({"type": "response.done", "response": {"id": "r_vad", "output": []}})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    assert conn.times("response.create")[0] >= conn.sent_times("response.done")[0]
    await client.wait_for(lambda: client.count("ConversationText") == 3)
    texts = [(t["role"], t["content"]) for t in client.of("ConversationText")]
    assert texts == [("user", "q"), ("assistant", "T1"), ("assistant", "T2")]


async def test_v9_two_injects_back_to_back(gw, fake, connect):
    fake.script = Script(reply_delay=0.1)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "one"})
    await client.send({"type": "InjectUserMessage", "content": "two"})
    await client.wait_type("AgentAudioDone", 2)
    creates = conn.times("response.create")
    assert len(creates) == 2
    first_reply_end = conn.sent_times("response.output_text.done")[0]
    assert creates[1] >= first_reply_end  # never two creates while one is active
    texts = [(t["role"], t["content"]) for t in client.of("ConversationText")]
    assert texts[:2] == [("user", "one"), ("user", "two")]
    assert [t for t in texts if t[0] == "assistant"] == [("assistant", "Hello from mock")] * 2


async def test_v10_parallel_calls_one_create_after_the_last_output(gw, fake, connect):
    call2 = {**CALL, "call_id": "c2"}
    fake.script = Script(after_session_updated=[CALL, call2], function_output="item_events")
    client, conn = await ready(gw, fake, connect)
    await client.wait_type("FunctionCallRequest", 2)
    await client.send({"type": "FunctionCallResponse", "id": "c1", "content": "one"})
    await conn.wait_for(lambda c: len(c.sent_times("conversation.item.done")) == 1)
    await trio.sleep(0.3)
    assert conn.count("response.create") == 0
    await client.send({"type": "FunctionCallResponse", "id": "c2", "content": "two"})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    outputs = conn.events("conversation.item.create")
    assert [o["item"]["call_id"] for o in outputs] == ["c1", "c2"]
    assert conn.times("response.create")[0] > conn.times("conversation.item.create")[1]


async def test_v11_one_done_pair_and_a_held_idle_error(gw, fake, connect):
    fake.script = Script(respond=False)
    client, conn = await ready(gw, fake, connect)
    # a text turn ending with output_text.done and then response.done of the same response
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    reply = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "T"}]}
    await conn.send({"type": "response.created", "response": {"id": "r1"}},
                    {"type": "response.output_text.done", "response_id": "r1", "text": "T"},
                    {"type": "response.done", "response": {"id": "r1", "output": [reply]}})
    await client.wait_type("AgentAudioDone")
    # an audio turn: an idle_timeout error mid-response is held until response.done
    await client.send({"type": "InjectUserMessage", "content": "q2"})
    await conn.wait_for(lambda c: c.count("response.create") == 2)
    await conn.send({"type": "response.created", "response": {"id": "r2"}},
                    {"type": "response.output_audio.delta", "response_id": "r2", "delta": "AAAA"},
                    {"type": "error", "error": {"code": "idle_timeout", "message": "idle"}},
                    {"type": "response.output_audio.done", "response_id": "r2"},
                    {"type": "response.done", "response": {"id": "r2", "output": [
                        {**reply, "content": [{"type": "output_audio", "transcript": "A"}]}]}})
    await client.wait_type("Error")
    await upstream_marker(conn, client)
    assert client.after_welcome() == [
        "SettingsApplied",
        "ConversationText", "AgentStartedSpeaking", "ConversationText", "AgentDone", "AgentAudioDone",
        "ConversationText", "AgentStartedSpeaking", "<3 B>", "AgentDone", "AgentAudioDone",
        "ConversationText", "Error", "UtteranceEnd",
    ]


async def test_v12_update_prompt(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "UpdatePrompt", "prompt": "Be brief."})
    await client.wait_type("PromptUpdated")
    updates = conn.events("session.update")
    assert len(updates) == 2
    assert updates[1]["session"] == {"type": "realtime", "instructions": "Help.\n\nBe brief."}
    assert client.count("SettingsApplied") == 1


async def test_v13_inject_agent_message_and_update_speak(gw, fake, connect):
    fake.script = Script(echo_assistant_items=True)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectAgentMessage", "message": "Still there?"})
    await conn.wait_for(lambda c: len(c.sent_times("conversation.item.added")) == 1)
    await upstream_marker(conn, client)  # the echo came before the marker
    assert client.after_welcome() == ["SettingsApplied", "ConversationText", "AgentDone", "AgentAudioDone",
                                      "UtteranceEnd"]
    assert client.frames[2] == {"type": "ConversationText", "role": "assistant", "content": "Still there?"}
    await conn.send({"type": "response.created", "response": {"id": "r_vad"}})  # a VAD response starts
    await upstream_marker(conn, client)
    await client.send({"type": "InjectAgentMessage", "message": "Hello?"})
    await client.wait_type("InjectionRefused")
    await client.send({"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}})
    error = await client.wait_type("Error")
    assert error["code"] == "unsupported_client_message"
    assert conn.count("response.create") == 0
    assert conn.count("conversation.item.create") == 1


# --- the I/O wrapper: queueing, limits, closes, backpressure ---------------------------------


async def test_frames_sent_before_the_upstream_opens_are_kept_in_order(gw, fake, connect):
    gate = trio.Event()
    fake.script = Script(accept_gate=gate)
    client = await connect(gw)
    conn = await fake.next_conn()
    await client.send({"type": "InjectUserMessage", "content": "first"})
    await client.send(bytes(640))
    await client.send(SETTINGS)
    await client.send({"type": "InjectUserMessage", "content": "second"})
    await client.send(bytes(320))
    await client.wait_for(lambda: len(client.frames) == 1)  # Welcome
    assert not conn.accepted and conn.received == []
    gate.set()
    await client.wait_type("AgentAudioDone", 2)
    assert conn.types()[:5] == ["session.update", "conversation.item.create", "conversation.item.create",
                                "input_audio_buffer.append", "input_audio_buffer.append"]
    assert [len(a) for a in conn.appended_audio()] == [958, 480]
    users = [t["content"] for t in client.of("ConversationText") if t["role"] == "user"]
    assert users == ["first", "second"]


async def test_client_gone_before_the_upstream_opened(gw, fake, connect):
    gate = trio.Event()
    fake.script = Script(accept_gate=gate)
    client = await connect(gw)
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await client.ws.aclose(1000)
    gate.set()  # the upstream answers late: the gateway has abandoned that connection
    assert await conn.wait_closed(timeout=1.0) in (1000, 1006)
    assert conn.received == []


@pytest.mark.parametrize("code", [1000, 4000])
async def test_client_close_mid_turn_closes_upstream_promptly(gw, fake, connect, code):
    fake.script = Script(respond=False)
    client, conn = await ready(gw, fake, connect)
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await conn.wait_for(lambda c: c.count("response.create") == 1)
    await client.ws.aclose(code)
    assert await conn.wait_closed(timeout=1.0) == code


async def test_client_tcp_drop_closes_upstream_with_1000(gw, fake, connect):
    client, conn = await ready(gw, fake, connect)
    await client.ws._stream.aclose()  # noqa: SLF001 - no close frame at all
    assert await conn.wait_closed(timeout=1.0) == 1000


async def test_message_too_large(fast_gw, fake, connect):
    client, conn = await ready(fast_gw, fake, connect)
    await client.send(bytes(5000))
    close = await client.wait_closed()
    assert client.of("Error")[-1]["code"] == "message_too_large"
    assert close.code == 1009
    assert await conn.wait_closed() == 1000
    assert conn.count("input_audio_buffer.append") == 0


async def test_message_far_too_large_still_gets_the_error_first(fast_gw, fake, connect):
    client, conn = await ready(fast_gw, fake, connect)
    await client.send(bytes(64 * 1024))
    close = await client.wait_closed()
    assert client.of("Error")[-1]["code"] == "message_too_large"
    assert close.code == 1009
    assert await conn.wait_closed() == 1000


@pytest.fixture(scope="module")
def limits_gw(fwd):
    """Idle timeout 0.5 s, sessions of at most 1 s, strict mode (D15)."""
    gateway = start_gateway("--idle-timeout", "0.5", "--max-session-seconds", "1", "--translator-strict",
                            env=fwd_env(fwd))
    yield gateway
    gateway.stop()
    check_gateway_output(gateway)


async def test_idle_timeout(limits_gw, fake, connect):
    client, conn = await ready(limits_gw, fake, connect)
    started = trio.current_time()
    close = await client.wait_closed()
    assert 0.3 <= trio.current_time() - started < 1.5
    assert client.after_welcome() == ["SettingsApplied", "Error"]
    assert client.frames[-1]["code"] == "idle_timeout"
    assert close.code == 1000
    assert await conn.wait_closed() == 1000


async def test_max_session_duration(limits_gw, fake, connect):
    client, conn = await ready(limits_gw, fake, connect)
    with trio.fail_after(3):
        while not client.closed.is_set():  # stay active: the idle timeout never fires
            await client.send({"type": "KeepAlive"})
            with trio.move_on_after(0.1):
                await client.closed.wait()
    close = await client.wait_closed()
    assert client.after_welcome() == ["SettingsApplied", "Error"]
    assert client.frames[-1]["code"] == "session_max_duration"
    assert close.code == 1000
    assert await conn.wait_closed() == 1000


async def test_strict_mode_allows_only_the_reference_types(limits_gw, fake, connect):
    client, conn = await ready(limits_gw, fake, connect)
    await client.send({"type": "KeepAlive"})
    await client.send({"type": "Foo"})
    await client.send({"type": "UpdatePrompt", "prompt": "x"})
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    errors = client.of("Error")
    assert [e["code"] for e in errors] == ["disallowed_client_message_type"] * 2
    assert errors[0]["description"].startswith('Disallowed client message type "Foo" for OpenAI proxy (Issue #533).')
    assert '"UpdatePrompt"' in errors[1]["description"]
    assert conn.types() == ["session.update", "conversation.item.create", "response.create"]


async def test_trace_id_is_logged_and_no_client_query_goes_upstream(gw, fake, connect):
    client = await connect(gw, "/openai?traceId=trace-v36&model=gpt-realtime-mini&debug=1")
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await client.wait_type("SettingsApplied")
    assert conn.query == [("model", "gpt-realtime")]
    assert re.search(r"session accepted .*trace=trace-v36", gw.output)


async def test_sigterm_drain(gateway_factory, fwd, fake, connect):
    gateway = await gateway_factory("--grace", "0.5", env=fwd_env(fwd))
    client, conn = await ready(gateway, fake, connect)
    gateway.signal(signal.SIGTERM)
    # the session keeps working during the grace period
    await client.send({"type": "InjectUserMessage", "content": "q"})
    await client.wait_type("AgentAudioDone")
    close = await client.wait_closed(timeout=5)
    assert client.frames[-1] == {"type": "Error", "code": "shutting_down",
                                 "description": client.frames[-1]["description"]}
    assert close.code == 1001
    assert await conn.wait_closed() == 1001
    assert await trio.to_thread.run_sync(gateway.proc.wait, 10) == 0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(re.search(r"VmRSS:\s+(\d+) kB", fh.read()).group(1)) * 1024


async def test_audio_flood_before_ready_is_bounded_and_kept(gw, fake, connect):
    """D30: while session.updated is withheld, a client flooding audio is not read beyond the
    pending cap (4 x the message limit); once ready, every frame goes up, in order."""
    gate = trio.Event()
    fake.script = Script(session_updated_gate=gate)
    [worker] = await trio.to_thread.run_sync(gw.workers, "openai")
    client = await connect(gw)
    await client.send(SETTINGS)
    conn = await fake.next_conn()
    await conn.wait_for(lambda c: c.count("session.update") == 1)
    before = rss_bytes(worker["pid"])
    frame_samples, frames = 96_000, 64  # 64 frames of 192 KB = 12 MiB of 16 kHz PCM16
    progress = {"sent": 0, "at": trio.current_time()}
    done = trio.Event()

    async def flood() -> None:
        for i in range(frames):
            await client.send(pcm16(np.full(frame_samples, i * 100)))
            progress["sent"] += 1
            progress["at"] = trio.current_time()
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        with trio.fail_after(10):  # wait until the sender has stalled or finished
            while not done.is_set() and trio.current_time() - progress["at"] < 0.4:
                await trio.sleep(0.05)
        await trio.sleep(0.2)
        grown = rss_bytes(worker["pid"]) - before
        assert grown < 8 * 1024 * 1024, f"worker grew by {grown} bytes while the upstream was not ready"
        gate.set()
        with trio.fail_after(20):
            await done.wait()
    await client.wait_type("SettingsApplied", timeout=10)
    expected = math.floor((frames * frame_samples - 1) * 3 / 2) + 1
    await conn.wait_for(lambda c: c.count("input_audio_buffer.append") == frames, timeout=20)
    assert sum(len(a) for a in conn.appended_audio()) == expected * 2
    samples = np.frombuffer(b"".join(conn.appended_audio()), "<i2")
    assert np.all(np.diff(samples) >= 0), "audio reordered"
    assert set(range(0, frames * 100, 100)) <= set(np.unique(samples).tolist()), "audio dropped"


# --- full conversations with the simulator ---------------------------------------------------


async def test_sim_text_turn(gw, sim, connect):
    client = await connect(gw)
    await client.send(BRIEF_SETTINGS)
    await client.wait_type("SettingsApplied")
    await client.send({"type": "InjectUserMessage", "content": "hello there"})
    await client.wait_for(lambda: client.count("ConversationText") == 2)
    await client.wait_type("AgentAudioDone")
    types = [t for t in client.after_welcome() if not t.startswith("<")]
    assert types == ["SettingsApplied", "ConversationText", "AgentStartedSpeaking", "AgentDone",
                     "AgentAudioDone", "ConversationText"]
    assert client.of("ConversationText")[1]["content"] == "You said: hello there"
    audio = b"".join(f for f in client.frames if isinstance(f, bytes))
    assert len(audio) == 24000 * 2 * 3 // 10  # the simulator's 300 ms of 24 kHz PCM16
    [record] = sim.connections
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"


async def test_sim_voice_turn_with_server_vad(gw, sim, connect):
    client = await connect(gw)
    await client.send(BRIEF_SETTINGS)
    await client.wait_type("SettingsApplied")
    tone = tone_pcm16(600, rate=16000)
    quiet = silence_pcm16(500, rate=16000)
    audio = tone + quiet
    for i in range(0, len(audio), 640):  # 20 ms frames
        await client.send(audio[i : i + 640])
    await client.wait_type("AgentAudioDone", timeout=10)
    await client.wait_for(lambda: any(t["role"] == "assistant" for t in client.of("ConversationText")))
    types = client.types()
    assert types.index("UserStartedSpeaking") < types.index("UtteranceEnd") < types.index("AgentStartedSpeaking")
    finals = [t for t in client.of("Transcript") if t["is_final"]]
    assert [t["transcript"] for t in finals] == ["audio of 0.6 seconds"]
    [reply] = [t for t in client.of("ConversationText") if t["role"] == "assistant"]
    assert reply["content"] == "You said: audio of 0.6 seconds"
    assert any(isinstance(f, bytes) for f in client.frames)
    assert types.index("AgentStartedSpeaking") < next(i for i, f in enumerate(client.frames) if isinstance(f, bytes))
    assert client.count("ConversationText") == 1  # voice turns give Transcripts, not user text


async def test_sim_function_call_round_trip(gw, sim, connect):
    client = await connect(gw)
    functions = [{"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}]
    await client.send(settings_message({"think": {"prompt": "", "functions": functions}}))
    await client.wait_type("SettingsApplied")
    await client.send({"type": "InjectUserMessage", "content": "please get time"})
    request = await client.wait_type("FunctionCallRequest")
    [call] = request["functions"]
    assert call["name"] == "get_time" and call["arguments"] == "{}" and call["client_side"] is True
    await client.send({"type": "FunctionCallResponse", "id": call["id"], "name": "get_time", "content": "12:00"})
    await client.wait_type("AgentThinking")
    await client.wait_for(lambda: any(t["role"] == "assistant" for t in client.of("ConversationText")), 10)
    [reply] = [t for t in client.of("ConversationText") if t["role"] == "assistant"]
    assert reply["content"] == "The function returned: 12:00"
    await client.wait_type("AgentAudioDone", 2)
    assert client.count("Error") == 0
    events = sim.connections[0].received_json()
    assert [e["type"] for e in events if e["type"] == "response.create"] == ["response.create"] * 2


async def test_sim_greeting(gw, sim, connect):
    client = await connect(gw)
    await client.send(settings_message({"greeting": "Welcome aboard!"}))
    await client.wait_type("AgentAudioDone")
    assert client.after_welcome() == ["SettingsApplied", "ConversationText", "AgentDone", "AgentAudioDone"]
    assert client.frames[2]["content"] == "Welcome aboard!"
    await client.send({"type": "InjectUserMessage", "content": "hi"})
    await client.wait_type("AgentAudioDone", 2)
    received = [e["type"] for e in sim.connections[0].received_json()]
    assert received == ["session.update", "conversation.item.create", "response.create"]


@pytest.fixture
async def paced_sim(nursery, fwd):
    """The simulator with its reply audio paced (0.3 s between 100 ms chunks), so a response
    is still playing when the client acts on its first audio."""
    from voxgate.simulate.openai import OpenAISimulator

    sim = OpenAISimulator(api_key=OPENAI_KEY, audio_pace=0.3)
    sim.port = await nursery.start(sim.serve)
    fwd.target = sim.port
    return sim


async def test_sim_update_think_and_listen(gw, sim, connect):
    client = await connect(gw)
    await client.send(BRIEF_SETTINGS)
    await client.wait_type("SettingsApplied")
    functions = [{"name": "get_time", "description": "Time", "parameters": {"type": "object"}}]
    await client.send({"type": "UpdateThink", "think": {"provider": {"type": "open_ai", "model": "gpt-realtime"},
                                                        "prompt": "Be terse.", "functions": functions}})
    await client.send({"type": "UpdateListen", "listen": {"provider": {"version": "v2", "type": "deepgram",
                                                                       "model": "flux-general-en", "eot_threshold": 0.8}}})
    await client.wait_type("ListenUpdated")
    assert client.after_welcome() == ["SettingsApplied", "ThinkUpdated", "ListenUpdated"]
    updates = [e["session"] for e in sim.connections[0].received_json() if e["type"] == "session.update"]
    assert updates[1]["instructions"].startswith("Be terse.") and updates[1]["tools"][0]["name"] == "get_time"
    assert updates[2]["audio"]["input"]["turn_detection"]["eagerness"] == "low"
    await client.send({"type": "InjectUserMessage", "content": "please get time"})
    await client.wait_type("FunctionCallRequest")  # the new tools are live upstream
    assert client.count("Error") == 0


async def test_sim_inject_agent_message_interrupt(gw, paced_sim, connect):
    """On the SDK path: the live reply is cancelled and cut at the audio the client received;
    nothing of it plays after the interrupt; the agent's message is the turn's text."""
    client = await connect(gw, "/openai/v1/agent/converse")
    await client.send(BRIEF_SETTINGS)
    await client.wait_type("SettingsApplied")
    await client.send({"type": "InjectUserMessage", "content": "tell me a story"})
    await client.wait_for(lambda: any(isinstance(f, bytes) for f in client.frames))
    await client.send({"type": "InjectAgentMessage", "message": "Sorry, one thing.", "behavior": "interrupt"})
    await client.wait_for(lambda: client.count("AgentAudioDone") == 2)
    record = paced_sim.connections[0]
    with trio.fail_after(WAIT):
        await record.wait_until(lambda r: {"conversation.item.truncated", "error"} & {e["type"] for e in r.sent_json()})
    received = {e["type"]: e for e in record.received_json()}
    played = sum(len(f) for f in client.frames if isinstance(f, bytes))
    assert played == 4800  # the first 100 ms chunk only
    assert received["conversation.item.truncate"]["audio_end_ms"] == 100
    assert "response_id" in received["response.cancel"]
    sent = [e["type"] for e in record.sent_json()]
    assert "conversation.item.truncated" in sent and "error" not in sent
    assert [e["response"]["status"] for e in record.sent_json() if e["type"] == "response.done"] == ["cancelled"]
    texts = [(t["role"], t["content"]) for t in client.of("ConversationText")]
    assert texts == [("user", "tell me a story"), ("assistant", "Sorry, one thing.")]
    assert client.count("Error") == 0 and client.count("AgentDone") == 0


async def test_sim_upstream_error(gw, sim, connect):
    client = await connect(gw)
    await client.send(settings_message({"think": {"prompt": "", "toolChoice": "sometimes"}}))
    error = await client.wait_type("Error")
    assert error["code"] == "invalid_value" and "'sometimes'" in error["description"]
    assert client.count("SettingsApplied") == 0
    assert not client.closed.is_set()


@pytest.mark.parametrize(("audio", "formats", "sent", "appended", "reply_bytes"), [
    ({"input": {"encoding": "mulaw", "sample_rate": 8000}, "output": {"encoding": "mulaw", "sample_rate": 8000}},
     ("audio/pcmu", "audio/pcmu"), bytes(range(256)) * 4, bytes(range(256)) * 4, 2400),
    ({"input": {"encoding": "alaw"}, "output": {"encoding": "alaw", "sample_rate": 8000}},
     ("audio/pcma", "audio/pcma"), b"\xd5" * 800, b"\xd5" * 800, 2400),
    ({"input": {"encoding": "linear16", "sample_rate": 48000}, "output": {"encoding": "linear16", "sample_rate": 16000}},
     ("audio/pcm", None), bytes(1920), bytes(960), 9600),
])
async def test_sim_audio_formats(gw, sim, connect, audio, formats, sent, appended, reply_bytes):
    """D4/D5: G.711 travels natively both ways; other linear16 rates are resampled."""
    client = await connect(gw)
    await client.send(settings_message({"think": {"prompt": ""}}, audio))
    await client.wait_type("SettingsApplied")
    await client.send(sent)
    await client.send({"type": "InjectUserMessage", "content": "hi"})
    await client.wait_type("AgentAudioDone")
    session = sim.connections[0].received_json()[0]["session"]["audio"]
    assert session["input"]["format"]["type"] == formats[0]
    assert session.get("output", {}).get("format", {}).get("type") == formats[1]
    appends = [e for e in sim.connections[0].received_json() if e["type"] == "input_audio_buffer.append"]
    assert [base64.b64decode(e["audio"]) for e in appends] == [appended]
    assert sum(len(f) for f in client.frames if isinstance(f, bytes)) == reply_bytes


async def test_repeated_upstream_warnings_are_rate_limited(gw, fake, connect):
    """Issue 16 §5: 2,000 invalid audio deltas write a handful of warning lines, and the
    session's closing line counts the rest."""
    client, conn = await ready(gw, fake, connect)
    bad = {"type": "response.output_audio.delta", "response_id": "r1", "item_id": "i1", "delta": "!!not base64!!"}
    await conn.send(*([bad] * 2000))
    await upstream_marker(conn, client)  # every bad delta was handled before this marker
    await client.ws.aclose()
    name = "upstream audio delta is not base64"
    with trio.fail_after(5):
        while not re.search(rf"session closed .*suppressed=.*{name}", gw.output):
            await trio.sleep(0.02)
    lines = [line for line in gw.output.splitlines() if f" warning worker.openai {name}" in line]
    closing = [line for line in gw.output.splitlines() if "session closed" in line and name in line][-1]
    assert 1 <= len(lines) <= 10, len(lines)
    shown = sum(int(m) for line in lines for m in re.findall(r"suppressed=(\d+)", line))
    hidden = int(re.search(r"upstream audio delta is not base64[^0-9]+(\d+)", closing).group(1))
    assert len(lines) + shown + hidden == 2000, (len(lines), shown, hidden, closing)
