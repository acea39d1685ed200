"""The simulated OpenAI Realtime server, driven over real sockets (and once by the SDK)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    open_websocket_url,
)

from tests.support.settings import session_update
from voxgate.simulate.common import rms_pcm16, silence_pcm16, tone_pcm16
from voxgate.simulate.openai import OpenAISimulator, RealtimeSession

API_KEY = "sk-sim-test-key-0123456789"
TIMEOUT = 5


@pytest.fixture
async def sim(nursery: trio.Nursery) -> OpenAISimulator:
    s = OpenAISimulator(api_key=API_KEY)
    await nursery.start(s.serve)
    return s


@pytest.fixture
async def slow_sim(nursery: trio.Nursery) -> OpenAISimulator:
    s = OpenAISimulator(api_key=API_KEY, reply_delay=0.5)
    await nursery.start(s.serve)
    return s


class Client:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_message(json.dumps(event))

    async def recv(self) -> dict[str, Any]:
        with trio.fail_after(TIMEOUT):
            return json.loads(await self.ws.get_message())

    async def until(self, type_: str, limit: int = 200) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``type_``."""
        events = []
        for _ in range(limit):
            events.append(await self.recv())
            if events[-1]["type"] == type_:
                return events
        raise AssertionError(f"no {type_} in {limit} events")

    async def append(self, pcm: bytes, chunk_ms: int = 100) -> None:
        step = chunk_ms * 48
        for i in range(0, len(pcm), step):
            audio = base64.b64encode(pcm[i : i + step]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})


@asynccontextmanager
async def connect(
    sim: OpenAISimulator,
    query: str = "model=gpt-realtime",
    *,
    path: str = "/v1/realtime",
    key: str = API_KEY,
    subprotocols: list[str] | None = None,
) -> AsyncIterator[Client]:
    url = f"ws://127.0.0.1:{sim.port}{path}?{query}"
    headers = [(b"Authorization", f"Bearer {key}".encode())]
    async with open_websocket_url(url, extra_headers=headers, subprotocols=subprotocols) as ws:
        yield Client(ws)


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def raw_http(port: int, request: bytes) -> bytes:
    """Send bytes, read until the server closes the socket (fails if it never does)."""
    with trio.fail_after(TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def upgrade_request(target: str, *headers: str) -> bytes:
    lines = [
        f"GET {target} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def body_of(response: bytes) -> dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


# ---------------------------------------------------------------------------------------
# Handshake, auth, recording


@pytest.mark.parametrize(
    "auth, code",
    [(None, None), ("Authorization: Bearer sk-wrong", "invalid_api_key")],
)
async def test_bad_auth_gets_401_json_and_socket_closed(
    sim: OpenAISimulator, auth: str | None, code: str | None
) -> None:
    headers = [auth] if auth else []
    response = await raw_http(
        sim.port, upgrade_request("/v1/realtime?model=gpt-realtime", *headers)
    )
    # raw_http returning at all proves the server closed the TCP connection.
    assert response.startswith(b"HTTP/1.1 401 ")
    assert b"101" not in response.split(b"\r\n", 1)[0]
    body = body_of(response)
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == code
    assert b"sk-wrong" not in response and API_KEY.encode() not in response
    assert sim.connections[-1].status == 401


async def test_sdk_style_rejection_is_visible_to_a_websocket_client(sim: OpenAISimulator) -> None:
    with pytest.raises(ConnectionRejected) as info:
        async with connect(sim, key="sk-nope"):
            pass
    assert info.value.status_code == 401


async def test_unknown_path_is_404_and_any_realtime_suffix_works(sim: OpenAISimulator) -> None:
    response = await raw_http(
        sim.port, upgrade_request("/v1/other", f"Authorization: Bearer {API_KEY}")
    )
    assert response.startswith(b"HTTP/1.1 404 ")
    async with connect(sim, path="/openai/v1/realtime") as client:
        assert (await client.recv())["type"] == "session.created"


async def test_session_created_carries_a_full_default_session(sim: OpenAISimulator) -> None:
    async with connect(sim, "model=gpt-realtime-mini") as client:
        event = await client.recv()
    assert event["type"] == "session.created"
    assert event["event_id"].startswith("event_")
    s = event["session"]
    assert s["type"] == "realtime"
    assert s["object"] == "realtime.session"
    assert s["id"].startswith("sess_")
    assert s["model"] == "gpt-realtime-mini"
    assert s["output_modalities"] == ["audio"]
    assert s["tools"] == [] and s["tool_choice"] == "auto"
    assert s["max_output_tokens"] == "inf"
    assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    }
    assert s["audio"]["output"] == {
        "format": {"type": "audio/pcm", "rate": 24000},
        "voice": "alloy",
        "speed": 1.0,
    }
    assert isinstance(s["instructions"], str) and isinstance(s["expires_at"], int)


async def test_default_model_is_gpt_realtime(sim: OpenAISimulator) -> None:
    async with connect(sim, "") as client:
        assert (await client.recv())["session"]["model"] == "gpt-realtime"


async def test_connection_record_keeps_request_frames_and_close_code(
    sim: OpenAISimulator,
) -> None:
    async with connect(
        sim, "model=gpt-realtime&b=2&a=1&b=3", subprotocols=["realtime", "x-extra"]
    ) as client:
        assert client.ws.subprotocol == "realtime"
        await client.recv()
        await client.send({"type": "input_audio_buffer.clear"})
        await client.ws.send_message(b"\x01\x02")
        record = sim.connections[-1]
        with trio.fail_after(TIMEOUT):
            await record.wait_received(2)
        await client.until("error")
        await client.ws.aclose(1001, "going away")
    with trio.fail_after(TIMEOUT):
        await record.closed.wait()
    assert record.path == "/v1/realtime"
    assert record.query == [("model", "gpt-realtime"), ("b", "2"), ("a", "1"), ("b", "3")]
    assert record.header("authorization") == f"Bearer {API_KEY}"
    assert record.header("host") == f"127.0.0.1:{sim.port}"
    assert record.subprotocols == ["realtime", "x-extra"]
    assert [(f.kind, f.data) for f in record.received] == [
        ("text", '{"type": "input_audio_buffer.clear"}'),
        ("binary", b"\x01\x02"),
    ]
    assert types(record.sent_json()) == ["session.created", "input_audio_buffer.cleared", "error"]
    assert record.status == 101
    assert record.close_code == 1001


# ---------------------------------------------------------------------------------------
# session.update


async def test_session_update_merges_and_reports_the_full_session(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send(
            session_update(
                instructions="Be brief.",
                output_modalities=["text"],
                audio={
                    "input": {
                        "transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    },
                    "output": {"voice": "marin"},
                },
                tools=[{"type": "function", "name": "get_time", "parameters": {}}],
            )
        )
        event = await client.recv()
    assert event["type"] == "session.updated"
    s = event["session"]
    assert s["instructions"] == "Be brief."
    assert s["output_modalities"] == ["text"]
    assert s["model"] == "gpt-realtime"
    assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
    td = s["audio"]["input"]["turn_detection"]
    assert td["silence_duration_ms"] == 500 and td["threshold"] == 0.5 and td["create_response"]
    assert s["audio"]["output"]["voice"] == "marin"
    assert s["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert s["tools"][0]["name"] == "get_time"


@pytest.mark.parametrize(
    "session, code, param",
    [
        ({"type": "realtime", "temperature": 0.8}, "unknown_parameter", "session.temperature"),
        ({"type": "realtime", "voice": "alloy"}, "unknown_parameter", "session.voice"),
        (
            {"type": "realtime", "audio": {"input": {"bogus": 1}}},
            "unknown_parameter",
            "session.audio.input.bogus",
        ),
        ({"type": "realtime_v2"}, "invalid_value", "session.type"),
        ({"instructions": "x"}, "missing_required_parameter", "session.type"),
        (
            {"type": "realtime", "output_modalities": ["text", "audio"]},
            "invalid_value",
            "session.output_modalities",
        ),
    ],
)
async def test_invalid_session_update_is_an_error_and_changes_nothing(
    sim: OpenAISimulator, session: dict[str, Any], code: str, param: str
) -> None:
    async with connect(sim) as client:
        created = (await client.recv())["session"]
        await client.send({"type": "session.update", "event_id": "evt_up", "session": session})
        error = await client.recv()
        assert error["type"] == "error" and error["event_id"].startswith("event_")
        assert error["error"]["type"] == "invalid_request_error"
        assert error["error"]["code"] == code
        assert error["error"]["param"] == param
        assert error["error"]["event_id"] == "evt_up"
        await client.send(session_update())
        updated = await client.recv()
    assert updated["type"] == "session.updated"
    assert updated["session"] == created


async def test_unknown_event_malformed_json_and_binary_frames_are_errors(
    sim: OpenAISimulator,
) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send({"type": "nope"})
        error = (await client.recv())["error"]
        assert error["code"] == "invalid_value" and error["param"] == "type"
        assert error["message"].startswith("Invalid value: 'nope'. Supported values are: ")
        assert "'response.create'" in error["message"]
        await client.ws.send_message("not json")
        assert (await client.recv())["error"]["code"] == "invalid_json"
        await client.ws.send_message(b"\x00\x01")
        assert (await client.recv())["error"]["code"] == "invalid_event"
        await client.send(session_update())
        assert (await client.recv())["type"] == "session.updated"


# ---------------------------------------------------------------------------------------
# Turns


async def text_session(client: Client, **extra: Any) -> None:
    await client.recv()
    await client.send(session_update(output_modalities=["text"], **extra))
    assert (await client.recv())["type"] == "session.updated"


def user_text(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def check_text_turn_events(events: list[dict[str, Any]]) -> None:
    """Ids, items, the response's life and the text of one text turn "hello there", in order."""
    assert all(e["event_id"].startswith("event_") for e in events)
    assert len({e["event_id"] for e in events}) == len(events)
    user = events[0]["item"]
    assert user["id"].startswith("item_") and user["status"] == "completed"
    assert user["role"] == "user" and user["content"][0]["text"] == "hello there"
    created = events[2]["response"]
    assert created["status"] == "in_progress" and created["output"] == []
    rid = created["id"]
    assert rid.startswith("resp_")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "You said: hello there"
    done_text = next(e for e in events if e["type"] == "response.output_text.done")
    assert done_text["text"] == text and done_text["response_id"] == rid
    assistant = events[4]["item"]
    assert events[4]["previous_item_id"] == user["id"]
    assert assistant["role"] == "assistant" and assistant["status"] == "in_progress"
    done = events[-2]["response"]
    assert done["id"] == rid and done["status"] == "completed"
    assert done["output"][0]["id"] == assistant["id"]
    assert done["output"][0]["content"] == [{"type": "output_text", "text": text}]
    assert (
        done["usage"]["total_tokens"]
        == done["usage"]["input_tokens"] + done["usage"]["output_tokens"]
    )
    assert events[-1]["rate_limits"][0]["name"] == "tokens"


async def test_text_turn_full_event_order(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await text_session(client)
        await client.send(user_text("hello there"))
        await client.send({"type": "response.create"})
        events = await client.until("rate_limits.updated")
    names = types(events)
    deltas = names.count("response.output_text.delta")
    assert deltas >= 2
    assert names == [
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    check_text_turn_events(events)


async def test_audio_modality_reply_is_pcm16_with_transcript(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send(user_text("ping"))
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    names = types(events)
    assert names.index("response.content_part.added") < names.index("response.output_audio.delta")
    assert (
        names.index("response.output_audio.done")
        < names.index("response.output_audio_transcript.done")
        < names.index("response.content_part.done")
    )
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert names.count("response.output_audio.delta") >= 2
    assert 200 * 48 <= len(audio) <= 400 * 48 and len(audio) % 2 == 0
    assert rms_pcm16(audio) > 0.1
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == "You said: ping"
    part = next(e for e in events if e["type"] == "response.content_part.done")["part"]
    assert part == {"type": "audio", "transcript": "You said: ping"}


async def test_audio_turn_through_server_vad(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send(
            session_update(
                audio={
                    "input": {
                        "transcription": {"model": "gpt-4o-transcribe"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300},
                    }
                },
            )
        )
        await client.until("session.updated")
        await client.append(silence_pcm16(200) + tone_pcm16(1200) + silence_pcm16(600))
        events = await client.until("response.done")
    names = types(events)
    head = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert names[:5] == head
    started, stopped, committed, added = events[:4]
    assert started["audio_start_ms"] == 0  # 200 ms of silence minus 300 ms prefix padding
    assert stopped["audio_end_ms"] == 1400 + 300
    item_id = started["item_id"]
    assert stopped["item_id"] == committed["item_id"] == added["item"]["id"] == item_id
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    deltas = [e["delta"] for e in events if e["type"].endswith("transcription.delta")]
    completed = next(e for e in events if e["type"].endswith("transcription.completed"))
    assert completed["item_id"] == item_id
    assert "".join(deltas) == completed["transcript"] == "audio of 1.2 seconds"
    assert names.index("conversation.item.input_audio_transcription.completed") < names.index(
        "response.created"
    )
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    samples = np.frombuffer(audio, "<i2")
    assert len(samples) == 24000 * 300 // 1000 and np.abs(samples).max() > 5000
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == "You said: audio of 1.2 seconds"
    assert events[-1]["response"]["status"] == "completed"


async def test_turn_detection_null_means_manual_commit_and_clear(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send(session_update(audio={"input": {"turn_detection": None}}))
        updated = await client.recv()
        assert updated["session"]["audio"]["input"]["turn_detection"] is None
        await client.append(tone_pcm16(50))
        await client.send({"type": "input_audio_buffer.commit", "event_id": "evt_c1"})
        error = (await client.recv())["error"]
        assert error["code"] == "input_audio_buffer_commit_empty"
        assert error["event_id"] == "evt_c1" and "100ms" in error["message"]
        await client.append(tone_pcm16(250))  # 300 ms in the buffer now; no VAD events
        await client.send({"type": "input_audio_buffer.commit"})
        events = [await client.recv() for _ in range(3)]
        assert types(events) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]
        # No automatic response: the next event is the answer to our next request.
        await client.send({"type": "input_audio_buffer.clear"})
        assert (await client.recv())["type"] == "input_audio_buffer.cleared"
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    transcript = next(e for e in events if e["type"] == "response.output_audio_transcript.done")
    assert transcript["transcript"] == "You said: audio of 0.3 seconds"


async def test_large_append_and_g711_output(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send(
            session_update(
                audio={
                    "input": {"turn_detection": None},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            )
        )
        await client.until("session.updated")
        await client.append(silence_pcm16(25_000), chunk_ms=25_000)  # 1.2 MB in one message
        await client.send({"type": "input_audio_buffer.commit"})
        assert (await client.recv())["type"] == "input_audio_buffer.committed"
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert len(audio) == 8 * 300  # 300 ms of 8 kHz mu-law, one byte per sample
    assert events[-1]["response"]["audio"]["output"]["format"] == {"type": "audio/pcmu"}


async def test_invalid_item_is_an_error(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send({"type": "conversation.item.create", "item": {"role": "user"}})
        error = (await client.recv())["error"]
        assert (error["code"], error["param"]) == ("missing_required_parameter", "item.type")
        bad_role = {"type": "message", "role": "robot", "content": []}
        await client.send({"type": "conversation.item.create", "item": bad_role})
        error = (await client.recv())["error"]
        assert (error["code"], error["param"]) == ("invalid_value", "item.role")


async def test_function_call_round_trip(sim: OpenAISimulator) -> None:
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    }
    async with connect(sim) as client:
        await text_session(client, tools=[tool])
        await client.send(user_text("Please call get weather for Paris"))
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
        names = types(events)
        assert "response.output_text.delta" not in names
        assert names[names.index("response.created") :] == [
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            *["response.function_call_arguments.delta"]
            * names.count("response.function_call_arguments.delta"),
            "response.function_call_arguments.done",
            "conversation.item.done",
            "response.output_item.done",
            "response.done",
        ]
        args_done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
        assert args_done["name"] == "get_weather"
        assert args_done["call_id"].startswith("call_")
        assert json.loads(args_done["arguments"]) == {"city": "Please call get weather for Paris"}
        deltas = "".join(
            e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"
        )
        assert deltas == args_done["arguments"]
        call_item = events[-1]["response"]["output"][0]
        assert call_item["type"] == "function_call" and call_item["call_id"] == args_done["call_id"]
        await client.until("rate_limits.updated")

        await client.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "function_call_output",
                    "call_id": args_done["call_id"],
                    "output": '{"forecast": "sunny"}',
                },
            }
        )
        added = await client.recv()
        assert added["item"]["type"] == "function_call_output"
        assert added["previous_item_id"] == call_item["id"]
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
    assert text == 'The function returned: {"forecast": "sunny"}'


async def test_tool_not_named_gives_a_plain_reply(sim: OpenAISimulator) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": {}}
    async with connect(sim) as client:
        await text_session(client, tools=[tool])
        await client.send(user_text("just chatting"))
        await client.send({"type": "response.create"})
        events = await client.until("response.done")
    assert "response.function_call_arguments.done" not in types(events)
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "You said: just chatting"


async def test_response_create_while_active_is_an_error(slow_sim: OpenAISimulator) -> None:
    async with connect(slow_sim) as client:
        await text_session(client)
        await client.send(user_text("one"))
        await client.send({"type": "response.create"})
        created = (await client.until("response.created"))[-1]["response"]
        # reply_delay=0.5 holds the response open after response.created.
        await client.send({"type": "response.create", "event_id": "evt_second"})
        events = await client.until("response.done")
    errors = [e for e in events if e["type"] == "error"]
    assert len(errors) == 1
    error = errors[0]["error"]
    assert error["code"] == "conversation_already_has_active_response"
    assert error["event_id"] == "evt_second"
    assert created["id"] in error["message"]
    assert types(events).index("error") < types(events).index("response.output_item.added")
    assert types(events).count("response.created") == 0  # only the first one, seen before
    assert events[-1]["response"]["id"] == created["id"]


async def test_speech_during_a_response_cancels_it(slow_sim: OpenAISimulator) -> None:
    async with connect(slow_sim) as client:
        await client.recv()
        await client.send(user_text("tell me a story"))
        await client.send({"type": "response.create"})
        rid = (await client.until("response.created"))[-1]["response"]["id"]
        await client.append(tone_pcm16(100))
        events = await client.until("response.done")
    assert types(events)[0] == "input_audio_buffer.speech_started"
    done = events[-1]["response"]
    assert done["id"] == rid and done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert "response.output_audio.delta" not in types(events)


async def test_client_cancel_then_truncate_the_played_audio(nursery: trio.Nursery) -> None:
    """What a barge-in handler does: cancel the live response, then cut its audio item at what
    was played; the item cannot be cut past the audio it has."""
    paced = OpenAISimulator(api_key=API_KEY, audio_pace=0.5)  # chunks 2-3 held back 0.5 s each
    await nursery.start(paced.serve)
    async with connect(paced) as client:
        await client.recv()
        await client.send(user_text("tell me a story"))
        await client.send({"type": "response.create"})
        rid = (await client.until("response.created"))[-1]["response"]["id"]
        delta = (await client.until("response.output_audio.delta"))[-1]
        await client.send({"type": "response.cancel", "response_id": rid})
        events = await client.until("response.done")
        done = events[-1]["response"]
        assert done["id"] == rid and done["status"] == "cancelled"
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert "response.output_audio.delta" not in types(events)  # the rest never came
        item_id = delta["item_id"]
        truncate = {"type": "conversation.item.truncate", "item_id": item_id, "content_index": 0}
        await client.send({**truncate, "audio_end_ms": 100})
        truncated = (await client.until("conversation.item.truncated"))[-1]
        assert truncated["item_id"] == item_id and truncated["audio_end_ms"] == 100
        await client.send({**truncate, "audio_end_ms": 5000})
        error = (await client.until("error"))[-1]["error"]
        assert error["code"] == "invalid_value" and error["param"] == "audio_end_ms"


async def test_response_cancel_without_active_response(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        await client.send({"type": "response.cancel"})
        assert (await client.recv())["error"]["code"] == "response_cancel_not_active"


async def test_push_sends_scripted_events_on_a_live_connection(sim: OpenAISimulator) -> None:
    async with connect(sim) as client:
        await client.recv()
        record = sim.connections[-1]
        sim.push(
            record,
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 5, "item_id": "i"},
        )
        event = await client.recv()
    assert event["type"] == "input_audio_buffer.speech_started" and event["audio_start_ms"] == 5
    assert event["event_id"].startswith("event_")


def drain(session: RealtimeSession, now: float) -> list[dict[str, Any]]:
    out = []
    for _ in range(500):
        item = session.next_output(now)
        if not isinstance(item, str):
            return out
        out.append(json.loads(item))
    raise AssertionError("session never went quiet")


def test_idle_timeout_triggers_commit_and_response_sans_io() -> None:
    """Driven with a fake clock: the idle timer needs >= 5 s, far too slow for a socket test."""
    session = RealtimeSession()
    assert types(drain(session, 0.0)) == ["session.created"]
    update = session_update(
        output_modalities=["text"],
        audio={"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 6000}}},
    )
    session.receive(json.dumps(update), 1.0)
    assert types(drain(session, 1.0)) == ["session.updated"]
    assert session.next_output(1.0) == 7.0  # nothing to send before the deadline
    audio = base64.b64encode(silence_pcm16(2000)).decode()
    session.receive(json.dumps({"type": "input_audio_buffer.append", "audio": audio}), 3.0)
    assert drain(session, 3.0) == []  # silence is not speech: the timer keeps running
    events = drain(session, 7.0)
    names = types(events)
    assert names[:4] == [
        "input_audio_buffer.timeout_triggered",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
    ]
    assert events[0]["audio_start_ms"] == 0 and events[0]["audio_end_ms"] == 2000
    assert events[0]["item_id"] == events[1]["item_id"]
    assert names[-2:] == ["response.done", "rate_limits.updated"]
    text = next(e for e in events if e["type"] == "response.output_text.done")["text"]
    assert text == "Are you still there?"
    # Re-armed after the response: fires again one idle period after response.done.
    assert session.next_output(7.0) == 13.0


def test_every_event_matches_the_sdk_schema() -> None:
    """Each server event the simulator produces validates as the SDK's own event model."""
    import pydantic
    from openai.types.realtime import RealtimeServerEvent

    adapter = pydantic.TypeAdapter(RealtimeServerEvent)
    session = RealtimeSession()
    events = drain(session, 0.0)

    def send(event: dict[str, Any], now: float = 0.0) -> None:
        session.receive(json.dumps(event), now)
        events.extend(drain(session, now))

    tool = {"type": "function", "name": "get_time", "parameters": {}}
    send(
        session_update(
            tools=[tool],
            audio={
                "input": {
                    "transcription": {"model": "gpt-4o-transcribe"},
                    "turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000},
                }
            },
        )
    )
    send(user_text("get time please"))
    send({"type": "response.create"})
    call_id = events[-3]["item"]["call_id"]
    output = {"type": "function_call_output", "call_id": call_id, "output": "noon"}
    send({"type": "conversation.item.create", "item": output})
    send({"type": "response.create", "response": {"output_modalities": ["text"]}})
    audio = base64.b64encode(tone_pcm16(500) + silence_pcm16(400)).decode()
    send({"type": "input_audio_buffer.append", "audio": audio})
    session.receive(json.dumps({"type": "response.create"}), 0.0)  # queued, not yet sent
    send({"type": "input_audio_buffer.append", "audio": base64.b64encode(tone_pcm16(100)).decode()})
    send({"type": "input_audio_buffer.clear"})
    send({"type": "nope"})
    events.extend(drain(session, 100.0))  # idle timeout fires
    for event in events:
        adapter.validate_python(event)
    assert {
        "session.created",
        "session.updated",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_audio.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.done",
        "response.done",
        "rate_limits.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        "error",
    } <= set(types(events))
    statuses = [e["response"]["status"] for e in events if e["type"] == "response.done"]
    assert "cancelled" in statuses and "completed" in statuses


# ---------------------------------------------------------------------------------------
# Faults


@pytest.mark.parametrize("status", [401, 500, 503])
async def test_fault_refuse(sim: OpenAISimulator, status: int) -> None:
    response = await raw_http(
        sim.port,
        upgrade_request(
            f"/v1/realtime?sim_fault=refuse:{status}", f"Authorization: Bearer {API_KEY}"
        ),
    )
    assert response.startswith(f"HTTP/1.1 {status} ".encode())
    assert body_of(response)["error"]["code"] == status


async def test_fault_hang_never_answers_the_handshake(sim: OpenAISimulator) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", sim.port)
    await stream.send_all(
        upgrade_request("/v1/realtime?sim_fault=hang", f"Authorization: Bearer {API_KEY}")
    )
    with trio.move_on_after(0.3) as waited:
        await stream.receive_some(100)
    assert waited.cancelled_caught  # no answer at all within the window
    record = sim.connections[-1]
    assert record.status is None
    await stream.aclose()
    with trio.fail_after(TIMEOUT):
        await record.closed.wait()  # the simulator notices the client left


async def test_fault_delay_holds_the_101(sim: OpenAISimulator) -> None:
    start = trio.current_time()
    async with connect(sim, "sim_fault=delay:300") as client:
        opened = trio.current_time()
        assert (await client.recv())["type"] == "session.created"
    assert opened - start >= 0.3


async def test_fault_close_with_code_after_session_created(sim: OpenAISimulator) -> None:
    async with connect(sim, "sim_fault=close:4001") as client:
        assert (await client.recv())["type"] == "session.created"
        with pytest.raises(ConnectionClosed) as info:
            await client.recv()
    assert info.value.reason.code == 4001
    record = sim.connections[-1]
    with trio.fail_after(TIMEOUT):
        await record.closed.wait()
    assert record.close_code == 4001  # the client's echo


async def test_fault_drop_ends_tcp_without_close_frame(sim: OpenAISimulator) -> None:
    async with connect(sim, "sim_fault=drop") as client:
        with pytest.raises(ConnectionClosed) as info:
            await client.recv()
    assert info.value.reason.code == 1006


async def test_fault_garbage_after_session_created(sim: OpenAISimulator) -> None:
    async with connect(sim, "sim_fault=garbage") as client:
        assert (await client.recv())["type"] == "session.created"
        with trio.fail_after(TIMEOUT):
            frame = await client.ws.get_message()
        with pytest.raises(json.JSONDecodeError):
            json.loads(frame)
        await client.send(session_update())
        assert (await client.recv())["type"] == "session.updated"


async def test_fault_delay_updated(sim: OpenAISimulator) -> None:
    async with connect(sim, "sim_fault=delay_updated:300") as client:
        await client.recv()
        start = trio.current_time()
        await client.send(session_update())
        assert (await client.recv())["type"] == "session.updated"
    assert trio.current_time() - start >= 0.3


async def test_fault_close_and_drop_after_update(sim: OpenAISimulator) -> None:
    for fault, code in [("close_after_update:4002", 4002), ("drop_after_update", 1006)]:
        async with connect(sim, f"sim_fault={fault}") as client:
            await client.recv()
            await client.send(session_update())
            assert (await client.recv())["type"] == "session.updated"
            with pytest.raises(ConnectionClosed) as info:
                await client.recv()
        assert info.value.reason.code == code


async def test_unknown_fault_is_a_400(sim: OpenAISimulator) -> None:
    response = await raw_http(
        sim.port,
        upgrade_request("/v1/realtime?sim_fault=explode", f"Authorization: Bearer {API_KEY}"),
    )
    assert response.startswith(b"HTTP/1.1 400 ")


# ---------------------------------------------------------------------------------------
# The official SDK


async def test_openai_sdk_completes_a_text_turn(sim: OpenAISimulator) -> None:
    import openai

    async def sdk_session(port: int) -> list[str]:
        client = openai.AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
        seen: list[str] = []
        async with client.realtime.connect(model="gpt-realtime") as conn:
            await conn.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            async for event in conn:
                seen.append(event.type)
                if event.type == "session.updated":
                    await conn.conversation.item.create(
                        item={
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "hi from the sdk"}],
                        }
                    )
                    await conn.response.create()
                elif event.type == "response.output_text.done":
                    seen.append(event.text)
                elif event.type == "response.done":
                    seen.append(event.response.status or "")
                    break
        return seen

    def run_in_thread() -> list[str]:
        return asyncio.run(asyncio.wait_for(sdk_session(sim.port), TIMEOUT))

    with trio.fail_after(TIMEOUT + 2):
        seen = await trio.to_thread.run_sync(run_in_thread, abandon_on_cancel=True)
    assert seen[:2] == ["session.created", "session.updated"]
    assert "You said: hi from the sdk" in seen
    assert seen[-2:] == ["response.done", "completed"]
    assert sim.connections[-1].query_value("model") == "gpt-realtime"
