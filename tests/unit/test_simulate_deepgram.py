"""The Deepgram simulator, driven over real WebSockets (trio-websocket client) and the
official deepgram-sdk, so the gateway's tests can trust what it does on the wire."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import trio
from trio_websocket import (
    ConnectionRejected,
    WebSocketConnection,
)

from tests.support import deepgram_sdk
from tests.support.deepgram_sim_client import (
    AUTH,
    KEY,
    Sim,
    closed_with,
    connect,
    recv,
    send_audio,
    send_json,
    typed,
    types,
    until,
)
from tests.support.settings import FULL_SETTINGS, full_settings, settings_message
from voxgate.simulate.common import silence_pcm16, tone_pcm16
from voxgate.simulate.deepgram import (
    AGENT_AUDIO_MS,
    GARBAGE_FRAME,
    NET0001_REASON,
    SPEAK_MS_PER_CHAR,
    DeepgramSimulator,
    decode_audio,
    encode_pcm16,
)

UPGRADE = (
    "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    "Authorization: Token {key}\r\n\r\n"
)



@pytest.fixture
async def sim(nursery: trio.Nursery) -> Sim:
    simulator = DeepgramSimulator(api_key=KEY, listen_idle_timeout=0.3)
    port = await nursery.start(simulator.serve)
    return Sim(simulator, port)


async def applied_agent(ws: WebSocketConnection, body: dict[str, Any] | None = None) -> None:
    assert (await recv(ws))["type"] == "Welcome"
    await send_json(ws, body or FULL_SETTINGS)
    assert (await recv(ws)) == {"type": "SettingsApplied"}


# ---------------------------------------------------------------------------------------
# Handshake: routes, auth, socket hygiene


async def test_unknown_path_is_404(sim: Sim) -> None:
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v1/nope"):
            pass
    assert info.value.status_code == 404


async def test_missing_or_wrong_key_is_401_without_upgrade(sim: Sim) -> None:
    for headers in ([], [("Authorization", "Token wrong")], [("Authorization", f"Bearer {KEY}")]):
        with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
            async with connect(sim, "/v1/listen", headers=headers):
                pass
        assert info.value.status_code == 401
        assert b"INVALID_AUTH" in (info.value.body or b"")
        assert KEY.encode() not in (info.value.body or b"")
    assert [r.status for r in sim.sim.connections] == [401, 401, 401]


async def test_server_closes_tcp_after_401(sim: Sim) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    await stream.send_all(UPGRADE.format(target="/v1/agent/converse", key="nope").encode())
    data = b""
    with trio.fail_after(3):
        while chunk := await stream.receive_some(65536):  # b"" = the server closed TCP
            data += chunk
    assert data.startswith(b"HTTP/1.1 401")
    assert b"101" not in data.split(b"\r\n")[0]
    await stream.aclose()


async def test_subprotocol_token_pair_authenticates_and_echoes_token(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(
            sim, "/v1/agent/converse", headers=[], subprotocols=["token", KEY]
        ) as ws:
            assert ws.subprotocol == "token"
            assert (await recv(ws))["type"] == "Welcome"
    record = sim.sim.connections[0]
    assert record.status == 101
    assert record.subprotocols == ["token", KEY]
    assert record.header("authorization") is None


async def test_bad_listen_query_is_400(sim: Sim) -> None:
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v1/listen", "sample_rate=fast"):
            pass
    assert info.value.status_code == 400


# ---------------------------------------------------------------------------------------
# Recording


async def test_record_keeps_query_headers_frames_pings_and_client_close(sim: Sim) -> None:
    query = "model=nova-3&keyterm=a&keyterm=b&empty=&language=en"
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", query, headers=[*AUTH, ("X-Trace", "t1")]) as ws:
            record = await sim.sim.wait_connection(0)
            await ws.send_message(b"\x00\x01" * 80)
            await send_json(ws, {"type": "KeepAlive"})
            await ws.ping(b"p1")
            await record.wait_until(lambda r: len(sim.sim.pings(r)) == 1 and len(r.received) == 2)
            await ws.aclose(4001, "client bye")
        await record.closed.wait()
    assert record.path == "/v1/listen"
    assert record.query == [
        ("model", "nova-3"),
        ("keyterm", "a"),
        ("keyterm", "b"),
        ("empty", ""),
        ("language", "en"),
    ]
    assert record.header("x-trace") == "t1"
    assert record.header("authorization") == f"Token {KEY}"
    assert [(f.kind, f.data) for f in record.received] == [
        ("binary", b"\x00\x01" * 80),
        ("text", '{"type":"KeepAlive"}'),
    ]
    assert sim.sim.pings(record) == [b"p1"]
    assert (record.close_code, record.close_reason) == (4001, "client bye")


# ---------------------------------------------------------------------------------------
# Voice Agent


async def test_agent_settings_inject_user_message_full_turn(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            welcome = await recv(ws)
            assert welcome["type"] == "Welcome" and welcome["request_id"]
            await send_json(ws, FULL_SETTINGS)
            assert await recv(ws) == {"type": "SettingsApplied"}
            await send_json(ws, {"type": "InjectUserMessage", "content": "hello there"})
            turn = await until(ws, typed("AgentAudioDone"))
    assert turn[0] == {"type": "ConversationText", "role": "user", "content": "hello there"}
    assert turn[1] == {
        "type": "ConversationText",
        "role": "assistant",
        "content": "You said: hello there",
    }
    assert turn[2]["type"] == "AgentStartedSpeaking"
    assert set(turn[2]) == {"type", "total_latency", "tts_latency", "ttt_latency"}
    audio = [m for m in turn if isinstance(m, bytes)]
    assert types(turn[3:]) == ["<binary>"] * len(audio) + ["AgentAudioDone"]
    assert len(audio) > 1
    pcm = b"".join(audio)
    assert len(pcm) == 24000 * AGENT_AUDIO_MS // 1000 * 2
    assert np.sqrt(np.mean(decode_audio(pcm, "linear16") ** 2)) > 0.1


@pytest.mark.parametrize(
    ("encoding", "rate"), [("mulaw", 8000), ("alaw", 8000), ("linear16", 16000)]
)
async def test_agent_audio_uses_requested_output_format(sim: Sim, encoding: str, rate: int) -> None:
    body = full_settings()
    body["audio"]["output"] = {"encoding": encoding, "sample_rate": rate, "container": "none"}
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws, body)
            await send_json(ws, {"type": "InjectAgentMessage", "message": "Hi!"})
            turn = await until(ws, typed("AgentAudioDone"))
    assert turn[0] == {"type": "ConversationText", "role": "assistant", "content": "Hi!"}
    audio = b"".join(m for m in turn if isinstance(m, bytes))
    per_sample = 2 if encoding == "linear16" else 1
    assert len(audio) == rate * AGENT_AUDIO_MS // 1000 * per_sample
    samples = decode_audio(audio, encoding)
    assert 0.15 < np.sqrt(np.mean(samples**2)) < 0.3  # the 0.3-amplitude tone, not noise


async def test_agent_greeting_follows_settings_applied(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws, full_settings(greeting="Hello, how can I help?"))
            turn = await until(ws, typed("AgentAudioDone"))
    assert turn[0] == {
        "type": "ConversationText",
        "role": "assistant",
        "content": "Hello, how can I help?",
    }
    assert any(isinstance(m, bytes) for m in turn)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (settings_message({}), "audio"),
        (settings_message(audio={}), "agent"),
        (
            settings_message({}, {"input": {"encoding": "linear16"}}),
            "audio.input.sample_rate",
        ),
        (
            settings_message({"think": {"functions": [{}]}}, {}),
            "agent.think.functions",
        ),
        (
            settings_message({"think": {"functions": [{"name": "f", "client_side": True}]}}, {}),
            "agent.think.functions",
        ),
    ],
)
async def test_agent_malformed_settings_is_error(sim: Sim, body: dict, field: str) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            assert (await recv(ws))["type"] == "Welcome"
            await send_json(ws, body)
            error = await recv(ws)
            # Settings were not applied: the next Settings is accepted.
            await send_json(ws, FULL_SETTINGS)
            assert await recv(ws) == {"type": "SettingsApplied"}
    assert error["type"] == "Error" and error["code"] == "UNPARSABLE_CLIENT_MESSAGE"
    assert f"the {field} field" in error["description"]


async def test_agent_rejects_input_before_settings_and_bad_messages(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            assert (await recv(ws))["type"] == "Welcome"
            await ws.send_message(tone_pcm16(100, rate=16000))
            await send_json(ws, {"type": "InjectUserMessage", "content": "hi"})
            await send_json(ws, {"type": "KeepAlive"})  # fine before Settings: no answer
            await ws.send_message("{not json")
            await send_json(ws, {"type": "Bogus"})
            await send_json(ws, FULL_SETTINGS)
            await send_json(ws, FULL_SETTINGS)
            got = [await recv(ws) for _ in range(6)]
    assert [(m["type"], m.get("code")) for m in got] == [
        ("Error", "SETTINGS_REQUIRED"),
        ("Error", "SETTINGS_REQUIRED"),
        ("Error", "UNPARSABLE_CLIENT_MESSAGE"),
        ("Error", "UNPARSABLE_CLIENT_MESSAGE"),
        ("SettingsApplied", None),
        ("Error", "SETTINGS_ALREADY_APPLIED"),
    ]
    assert all(isinstance(m.get("description", ""), str) for m in got)


async def test_agent_updates_and_keepalive(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws)
            await send_json(ws, {"type": "KeepAlive"})
            await send_json(ws, {"type": "UpdatePrompt", "prompt": "Be terse."})
            await send_json(
                ws, {"type": "UpdateSpeak", "speak": {"provider": {"type": "deepgram"}}}
            )
            got = [await recv(ws) for _ in range(2)]
    assert got == [{"type": "PromptUpdated"}, {"type": "SpeakUpdated"}]


async def test_agent_client_side_function_call_round_trip(sim: Sim) -> None:
    fn = {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}
    body = full_settings(think={"provider": {"type": "open_ai"}, "functions": [fn]})
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws, body)
            await send_json(ws, {"type": "InjectUserMessage", "content": "please get_weather now"})
            before = await until(ws, typed("FunctionCallRequest"))
            call = before[-1]["functions"][0]
            await send_json(
                ws,
                {
                    "type": "FunctionCallResponse",
                    "id": call["id"],
                    "name": call["name"],
                    "content": "sunny, 21C",
                },
            )
            turn = await until(ws, typed("AgentAudioDone"))
    assert types(before) == ["ConversationText", "AgentThinking", "FunctionCallRequest"]
    assert set(call) == {"id", "name", "arguments", "client_side"}
    assert call["name"] == "get_weather" and call["client_side"] is True
    assert orjson.loads(call["arguments"]) == {"text": "please get_weather now"}
    assert turn[0]["role"] == "assistant" and "sunny, 21C" in turn[0]["content"]


async def test_agent_server_side_function_is_answered_by_the_agent(sim: Sim) -> None:
    fn = {"name": "get_time", "endpoint": {"url": "https://example.invalid/fn"}}
    body = full_settings(think={"provider": {"type": "open_ai"}, "functions": [fn]})
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws, body)
            await send_json(ws, {"type": "InjectUserMessage", "content": "get_time please"})
            turn = await until(ws, typed("AgentAudioDone"))
    request = next(m for m in turn if isinstance(m, dict) and m["type"] == "FunctionCallRequest")
    assert request["functions"][0]["client_side"] is False
    response = next(m for m in turn if isinstance(m, dict) and m["type"] == "FunctionCallResponse")
    assert response["id"] == request["functions"][0]["id"] and response["name"] == "get_time"


async def test_agent_mic_audio_vad_turn(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws)
            audio = tone_pcm16(1200, rate=16000) + silence_pcm16(800, rate=16000)
            for i in range(0, len(audio), 3200):  # 100 ms frames
                await ws.send_message(audio[i : i + 3200])
            turn = await until(ws, typed("AgentAudioDone"))
    assert turn[0] == {"type": "UserStartedSpeaking"}
    assert turn[1] == {
        "type": "ConversationText",
        "role": "user",
        "content": "audio of 1.2 seconds",
    }
    assert turn[2] == {
        "type": "ConversationText",
        "role": "assistant",
        "content": "You said: audio of 1.2 seconds",
    }


async def test_agent_refuses_injection_while_user_speaks(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse") as ws:
            await applied_agent(ws)
            await ws.send_message(tone_pcm16(200, rate=16000))
            assert await recv(ws) == {"type": "UserStartedSpeaking"}
            await send_json(ws, {"type": "InjectAgentMessage", "message": "Hold on"})
            refused = await recv(ws)
    assert refused["type"] == "InjectionRefused" and isinstance(refused["message"], str)


async def test_json_binary_knob_sends_json_in_binary_frames(sim: Sim) -> None:
    fn = {"name": "lookup", "description": "Look up", "parameters": {"type": "object"}}
    body = full_settings(think={"provider": {"type": "open_ai"}, "functions": [fn]})
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse", "sim_json_binary=1") as ws:
            assert isinstance(await ws.get_message(), str)  # Welcome stays text
            await send_json(ws, body)
            assert isinstance(await ws.get_message(), str)  # SettingsApplied stays text
            await send_json(ws, {"type": "InjectUserMessage", "content": "lookup x"})
            frames = [await ws.get_message() for _ in range(3)]
    user, thinking, call = frames
    assert isinstance(user, bytes) and orjson.loads(user)["type"] == "ConversationText"
    assert isinstance(thinking, str) and orjson.loads(thinking)["type"] == "AgentThinking"
    assert isinstance(call, bytes) and orjson.loads(call)["type"] == "FunctionCallRequest"


# ---------------------------------------------------------------------------------------
# Listen

LISTEN_Q = "model=nova-3&encoding=linear16&sample_rate=16000&interim_results=true&vad_events=true&utterance_end_ms=1000"


async def test_listen_interim_final_speech_started_utterance_end_and_close_stream(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", LISTEN_Q) as ws:
            await send_audio(ws, tone_pcm16(1000, rate=16000) + silence_pcm16(1200, rate=16000))
            live = await until(ws, typed("UtteranceEnd"))
            await send_json(ws, {"type": "CloseStream"})
            tail, code, _ = await closed_with(ws)
    assert types(live) == ["SpeechStarted", "Results", "Results", "Results", "UtteranceEnd"]
    started, interim1, interim2, final, utterance_end = live
    assert started == {"type": "SpeechStarted", "channel": [0, 1], "timestamp": 0.0}
    assert [interim1["is_final"], interim2["is_final"]] == [False, False]
    assert final["is_final"] is True and final["speech_final"] is True
    assert final["from_finalize"] is False
    alt = final["channel"]["alternatives"][0]
    assert alt["transcript"] == "tone 1.0 seconds"
    assert [w["word"] for w in alt["words"]] == ["tone", "1.0", "seconds"]
    assert alt["words"][0]["start"] == 0.0 and alt["words"][-1]["end"] == 1.0
    assert final["metadata"]["request_id"] and final["metadata"]["model_info"]["name"] == "nova-3"
    assert final["channel_index"] == [0, 1] and final["start"] == 0.0
    assert utterance_end == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 1.0}
    assert types(tail) == ["Results", "Metadata"]
    assert tail[0]["is_final"] is True and tail[0]["channel"]["alternatives"][0]["transcript"] == ""
    meta = tail[1]
    assert meta["duration"] == 2.2 and meta["channels"] == 1
    assert meta["transaction_key"] == "deprecated" and len(meta["sha256"]) == 64
    assert meta["models"] and meta["request_id"] == final["metadata"]["request_id"]
    assert code == 1000


async def test_listen_no_interims_without_interim_results(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", "encoding=linear16&sample_rate=16000") as ws:
            await send_audio(ws, tone_pcm16(1000, rate=16000) + silence_pcm16(100, rate=16000))
            got = await until(ws, typed("Results"))
    assert len(got) == 1 and got[0]["is_final"] is True


async def test_listen_endpointing_false_gives_utterance_end_without_final(sim: Sim) -> None:
    query = "encoding=linear16&sample_rate=16000&endpointing=false&utterance_end_ms=500"
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", query) as ws:
            await send_audio(ws, tone_pcm16(400, rate=16000) + silence_pcm16(600, rate=16000))
            got = await until(ws, typed("UtteranceEnd"))
            await send_json(ws, {"type": "Finalize"})
            flushed = await recv(ws)
    assert got == [{"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0.4}]
    assert flushed["channel"]["alternatives"][0]["transcript"] == "tone 0.4 seconds"


async def test_listen_finalize_flushes_with_from_finalize(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", "encoding=mulaw&sample_rate=8000") as ws:
            pcm = tone_pcm16(500, rate=8000)
            await ws.send_message(encode_pcm16(pcm, "mulaw"))
            await send_json(ws, {"type": "Finalize"})
            speech = await recv(ws)
            await ws.send_message(encode_pcm16(silence_pcm16(300, rate=8000), "mulaw"))
            await send_json(ws, {"type": "Finalize"})
            quiet = await recv(ws)
    assert speech["type"] == "Results" and speech["from_finalize"] is True
    assert speech["is_final"] is True
    assert speech["channel"]["alternatives"][0]["transcript"] == "tone 0.5 seconds"
    assert quiet["from_finalize"] is True
    assert quiet["channel"]["alternatives"][0] == {"transcript": "", "confidence": 0.0, "words": []}
    assert quiet["start"] == 0.5 and quiet["duration"] == 0.3


async def test_listen_idle_timeout_is_net0001_1011(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen") as ws:
            messages, code, reason = await closed_with(ws)
    assert types(messages) == ["Metadata"]
    assert messages[0]["duration"] == 0.0 and "models" not in messages[0]
    assert code == 1011 and reason == NET0001_REASON


async def test_listen_keepalive_postpones_idle_timeout(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen") as ws:
            start = trio.current_time()
            for _ in range(5):  # 0.5 s of KeepAlives, spaced under the 0.3 s timeout
                await send_json(ws, {"type": "KeepAlive"})
                await trio.sleep(0.1)
            assert ws.closed is None
            _, code, _ = await closed_with(ws)
    assert code == 1011
    assert trio.current_time() - start >= 0.5


# ---------------------------------------------------------------------------------------
# Speak


async def test_speak_flush_clear_close(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(
            sim, "/v1/speak", "model=aura-2-thalia-en&encoding=linear16&sample_rate=16000"
        ) as ws:
            meta = await recv(ws)
            await send_json(ws, {"type": "Speak", "text": "Hello"})
            await send_json(ws, {"type": "Speak", "text": " world"})
            await send_json(ws, {"type": "Flush"})
            flushed = await until(ws, typed("Flushed"))
            await send_json(ws, {"type": "Speak", "text": "never spoken"})
            await send_json(ws, {"type": "Clear"})
            cleared = await recv(ws)
            await send_json(ws, {"type": "Flush"})
            empty_flush = await recv(ws)
            await send_json(ws, {"type": "Close"})
            rest, code, _ = await closed_with(ws)
    assert meta["type"] == "Metadata" and meta["model_name"] == "aura-2-thalia-en"
    assert {"request_id", "model_version", "model_uuid"} <= set(meta)
    audio = b"".join(m for m in flushed if isinstance(m, bytes))
    assert len(audio) == 16000 * len("Hello world") * SPEAK_MS_PER_CHAR // 1000 * 2
    assert flushed[-1] == {"type": "Flushed", "sequence_id": 0}
    assert cleared == {"type": "Cleared", "sequence_id": 1}
    assert empty_flush == {"type": "Flushed", "sequence_id": 2}
    assert rest == [] and code == 1000


async def test_speak_mulaw_audio_length_and_warning(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/speak", "encoding=mulaw&sample_rate=8000") as ws:
            assert (await recv(ws))["type"] == "Metadata"
            await send_json(ws, {"type": "Bogus"})
            warning = await recv(ws)
            await send_json(ws, {"type": "Speak", "text": "abcd"})
            await send_json(ws, {"type": "Flush"})
            flushed = await until(ws, typed("Flushed"))
    assert warning["type"] == "Warning" and {"description", "code"} <= set(warning)
    audio = b"".join(m for m in flushed if isinstance(m, bytes))
    assert len(audio) == 8000 * 4 * SPEAK_MS_PER_CHAR // 1000


# ---------------------------------------------------------------------------------------
# Faults


async def test_fault_refuse(sim: Sim) -> None:
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v1/agent/converse", "sim_fault=refuse:503"):
            pass
    assert info.value.status_code == 503


async def test_fault_hang_never_answers(sim: Sim) -> None:
    # Raw TCP: trio-websocket's own connect_timeout leaves its reader task waiting forever.
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    await stream.send_all(UPGRADE.format(target="/v1/listen?sim_fault=hang", key=KEY).encode())
    with trio.fail_after(3):
        record = await sim.sim.wait_connection(0)
    with trio.move_on_after(0.3) as waited:
        await stream.receive_some(65536)
    assert waited.cancelled_caught  # no 101, no HTTP answer at all
    assert record.status is None
    await stream.aclose()
    with trio.fail_after(3):
        await record.closed.wait()  # the simulator lets go once the client leaves


async def test_fault_delay_holds_the_101(sim: Sim) -> None:
    start = trio.current_time()
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse", "sim_fault=delay:300") as ws:
            assert trio.current_time() - start >= 0.3
            assert (await recv(ws))["type"] == "Welcome"


async def test_fault_close_after_welcome(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse", "sim_fault=close:4001") as ws:
            messages, code, reason = await closed_with(ws)
    assert types(messages) == ["Welcome"]
    assert code == 4001 and not reason


async def test_fault_close_reason(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(
            sim, "/v1/listen", "sim_fault=close_reason:1011&sim_close_reason=upstream+gone"
        ) as ws:
            messages, code, reason = await closed_with(ws)
    assert messages == []
    assert (code, reason) == (1011, "upstream gone")


async def test_fault_drop_has_no_close_frame(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse", "sim_fault=drop") as ws:
            messages, code, _ = await closed_with(ws)
    assert types(messages) == ["Welcome"]
    assert code == 1006


async def test_fault_garbage_then_normal_service(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/speak", "sim_fault=garbage") as ws:
            first = await ws.get_message()
            second = await ws.get_message()
            await send_json(ws, {"type": "Flush"})
            third = await recv(ws)
    assert orjson.loads(first)["type"] == "Metadata"
    assert second == GARBAGE_FRAME
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(second)
    assert third == {"type": "Flushed", "sequence_id": 0}  # normal service afterwards


async def test_fault_delay_updated_holds_settings_applied(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/agent/converse", "sim_fault=delay_updated:300") as ws:
            assert (await recv(ws))["type"] == "Welcome"
            sent = trio.current_time()
            await send_json(ws, FULL_SETTINGS)
            await send_json(ws, {"type": "UpdatePrompt", "prompt": "x"})
            applied = await recv(ws)
            waited = trio.current_time() - sent
            assert await recv(ws) == {"type": "PromptUpdated"}
    assert applied == {"type": "SettingsApplied"} and waited >= 0.3


async def test_unknown_fault_is_400(sim: Sim) -> None:
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v1/listen", "sim_fault=explode"):
            pass
    assert info.value.status_code == 400


# ---------------------------------------------------------------------------------------
# The official SDK (deepgram-sdk v7, sync websockets client in a worker thread)


def _sdk_client(port: int) -> Any:
    return deepgram_sdk.sdk_client(port, KEY)


def _sdk_agent_exchange(port: int) -> list[Any]:
    return deepgram_sdk.agent_exchange(_sdk_client(port), "hi from the SDK")


def _sdk_listen_exchange(port: int) -> list[Any]:
    seen: list[Any] = []
    audio = tone_pcm16(600, rate=16000) + silence_pcm16(100, rate=16000)
    with _sdk_client(port).listen.v1.connect(
        model="nova-3", encoding="linear16", sample_rate=16000, interim_results="false"
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


async def test_official_sdk_agent_exchange(sim: Sim) -> None:
    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(_sdk_agent_exchange, sim.port, abandon_on_cancel=True)
    kinds = [getattr(m, "type", None) for m in seen]
    assert kinds[:2] == ["Welcome", "SettingsApplied"]
    assert seen[-1].role == "assistant" and seen[-1].content == "You said: hi from the SDK"
    record = sim.sim.connections[0]
    assert record.path == "/v1/agent/converse"
    assert record.header("authorization") == f"Token {KEY}"
    assert record.received_json()[0]["type"] == "Settings"


async def test_official_sdk_listen_exchange(sim: Sim) -> None:
    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(_sdk_listen_exchange, sim.port, abandon_on_cancel=True)
    results = [m for m in seen if getattr(m, "type", None) == "Results"]
    assert (
        results[0].is_final and results[0].channel.alternatives[0].transcript == "tone 0.6 seconds"
    )
    assert getattr(seen[-1], "type", None) == "Metadata"
    record = sim.sim.connections[0]
    assert record.path == "/v1/listen"
    assert ("model", "nova-3") in record.query and ("sample_rate", "16000") in record.query
