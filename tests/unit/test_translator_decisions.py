"""voxgate decisions D1-D35 of openai-translator §0 that are protocol logic, as unit tests."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import pytest

from tests.support.settings import (
    MANUAL_SETTINGS,
    MINIMAL_DEEPGRAM_SETTINGS,
    SESSION_UPDATED,
    SETTINGS,
    settings_message,
)
from tests.support.translator_harness import (
    Harness,
    assistant_item,
    audio_delta,
    fco_done,
    user_item,
)
from voxgate.workers.openai.actions import CancelTimer, CloseClient, CloseUpstream
from voxgate.workers.openai.audio_flow import MAX_APPEND_BYTES


def settings_with_audio(input_: dict | None = None, output: dict | None = None, **agent) -> dict:
    audio = {}
    if input_ is not None:
        audio["input"] = input_
    if output is not None:
        audio["output"] = output
    return settings_message(agent, audio)


def appended(out) -> list[bytes]:
    return [
        base64.b64decode(e["audio"]) for e in out.up if e["type"] == "input_audio_buffer.append"
    ]


def assistant_texts(out) -> list[str]:
    return [
        m["content"]
        for m in out.client
        if isinstance(m, dict) and m["type"] == "ConversationText" and m["role"] == "assistant"
    ]


# --- framing and input validation ----------------------------------------------------------


def test_d1_binary_frames_are_audio_even_when_they_look_like_json():
    h = Harness()
    h.ready(settings_with_audio({"encoding": "linear16", "sample_rate": 24000}))
    frame = b'{"type":"KeepAlive"}'  # 20 bytes, even
    out = h.client(frame)
    assert appended(out) == [frame]
    assert out.client == []


def test_d1_text_never_becomes_audio_and_empty_frames_are_ignored():
    h = Harness()
    h.ready()
    out = h.client("\x00\x00\x00\x00")
    assert out.up == [] and out.error_codes == ["unparsable_client_message"]
    assert h.client(b"").up == [] and h.client("").client == []


def test_d2_unparsable_text_frame_then_session_continues():
    h = Harness()
    h.ready()
    out = h.client("hello")
    assert out.error_codes == ["unparsable_client_message"]
    assert h.inject("q", "u1").up_types == ["conversation.item.create", "response.create"]


def test_d3_odd_length_frame_is_dropped_with_an_error():
    h = Harness()
    h.ready()
    out = h.client(b"\x00\x01\x02")
    assert out.error_codes == ["invalid_audio_frame"] and out.up == []
    assert len(appended(h.client(b"\x00" * 4))) == 1


def test_d3_odd_length_frame_queued_before_settings_is_refused_at_flush():
    h = Harness()
    h.open()
    h.client(b"\x00\x01\x02")
    h.client(SETTINGS)
    out = h.up(SESSION_UPDATED)
    assert out.error_codes == ["invalid_audio_frame"]
    assert "input_audio_buffer.append" not in out.up_types


def test_d3_frame_too_large_after_resampling():
    h = Harness()
    h.ready(settings_with_audio({"encoding": "linear16", "sample_rate": 24000}))
    out = h.client(bytes(MAX_APPEND_BYTES + 2))
    assert out.error_codes == ["audio_frame_too_large"] and out.up == []
    h = Harness()
    h.ready()  # 16 kHz: 11 MiB grows past 15 MiB when resampled
    out = h.client(bytes(11 * 1024 * 1024))
    assert out.error_codes == ["audio_frame_too_large"] and out.up == []
    assert len(appended(h.client(b"\x00" * 4))) == 1  # resampler state untouched, session goes on


def test_d4_default_16k_is_resampled():
    h = Harness()
    h.ready()
    assert [len(b) for b in appended(h.client(b"\x00" * 960))] == [1438]


def test_d4_24k_passes_through():
    h = Harness()
    h.ready(settings_with_audio({"encoding": "linear16", "sample_rate": 24000}))
    data = np.arange(480, dtype="<i2").tobytes()
    assert appended(h.client(data)) == [data]


@pytest.mark.parametrize("rate", [8000, 32000, 44100, 48000])
def test_d4_other_rates_use_the_same_resampler(rate):
    h = Harness()
    h.ready(settings_with_audio({"encoding": "linear16", "sample_rate": rate}))
    data = bytes(2 * rate // 10)  # 100 ms
    samples = len(appended(h.client(data))[0]) // 2
    assert samples == (rate // 10 - 1) * 24000 // rate + 1  # 100 ms at 24 kHz, no pitch shift


@pytest.mark.parametrize(("encoding", "fmt"), [("mulaw", "audio/pcmu"), ("alaw", "audio/pcma")])
def test_d4_g711_sent_natively(encoding, fmt):
    h = Harness()
    h.ready(settings_with_audio({"encoding": encoding, "sample_rate": 8000}))
    assert h.session()["audio"]["input"]["format"] == {"type": fmt}
    assert appended(h.client(b"\x7f\xff\x00")) == [b"\x7f\xff\x00"]  # odd length is fine for G.711


def test_d4_unsupported_input_format_is_not_forwarded():
    h = Harness()
    h.open()
    out = h.client(settings_with_audio({"encoding": "linear16", "sample_rate": 11025}))
    assert out.error_codes == ["unsupported_audio_format"] and out.up == []
    out = h.client(SETTINGS)  # a later valid Settings is still forwarded
    assert out.up_types == ["session.update"]


def test_d5_output_24k_passes_through_and_16k_is_resampled():
    pcm = np.full(480, 1000, dtype="<i2").tobytes()
    h = Harness()
    h.ready(
        settings_with_audio(
            output={"encoding": "linear16", "sample_rate": 24000, "container": "none"}
        )
    )
    assert h.up(audio_delta(pcm)).binary == [pcm]
    h = Harness()
    h.ready(settings_with_audio(output={"encoding": "linear16", "sample_rate": 16000}))
    out = h.up(audio_delta(pcm))
    assert len(out.binary[0]) // 2 == (480 - 1) * 2 // 3 + 1
    assert set(np.frombuffer(out.binary[0], dtype="<i2").tolist()) == {1000}


def test_d5_odd_upstream_delta_is_carried_when_resampling():
    h = Harness()
    h.ready(settings_with_audio(output={"encoding": "linear16", "sample_rate": 48000}))
    a = h.up(audio_delta(b"\x01\x00\x02")).binary
    b = h.up(audio_delta(b"\x00\x03\x00")).binary
    assert sum(len(x) for x in a + b) % 2 == 0


def test_d5_g711_output_and_session_format_wins():
    h = Harness()
    h.ready(settings_with_audio(output={"encoding": "mulaw", "sample_rate": 8000}))
    assert h.session()["audio"]["output"] == {"format": {"type": "audio/pcmu"}}
    assert h.up(audio_delta(b"\x01\x02\x03")).binary == [b"\x01\x02\x03"]
    h = Harness()
    h.ready(
        settings_message(
            {"sessionAudioOutput": {"format": {"type": "audio/pcm", "rate": 24000}}},
            {"output": {"encoding": "linear16", "sample_rate": 16000}},
        )
    )
    pcm = b"\x01\x00" * 100
    assert h.up(audio_delta(pcm)).binary == [pcm]  # not converted


def test_d5_unsupported_output_format():
    h = Harness()
    h.open()
    out = h.client(settings_with_audio(output={"encoding": "opus", "sample_rate": 48000}))
    assert out.error_codes == ["unsupported_audio_format"] and out.up == []


# --- session start -------------------------------------------------------------------------


def test_d6_welcome_first_before_upstream_open():
    h = Harness(request_id="")
    out = h.start()
    assert [type(a).__name__ for a in out] == ["SendClient"]
    welcome = out.client[0]
    assert welcome["type"] == "Welcome" and uuid.UUID(welcome["request_id"])
    assert h.start() == []  # once
    h2 = Harness(request_id="abc")
    assert h2.start().client == [{"type": "Welcome", "request_id": "abc"}]


def test_d7_minimal_deepgram_settings():
    h = Harness()
    out = h.ready(
        MINIMAL_DEEPGRAM_SETTINGS
    )
    assert out.client_types == ["Welcome", "SettingsApplied"]
    s = h.session()
    assert s["instructions"] == "" and s["model"] == "gpt-realtime"
    assert set(s) == {"type", "model", "instructions", "audio"}


def test_d8_realtime_model_kept_other_replaced_by_connect_model():
    h = Harness(default_model="gpt-realtime-mini")
    h.ready(settings_message({"think": {"provider": {"model": "gpt-4o-mini"}}}))
    assert h.session()["model"] == "gpt-realtime-mini"
    assert any(log.level == "debug" and "model" in log.message for log in h.all.logs)
    h = Harness()
    h.ready(
        settings_message({"think": {"provider": {"model": "gpt-realtime-2025-08-28"}}})
    )
    assert h.session()["model"] == "gpt-realtime-2025-08-28"


def test_d9_duplicate_settings_answered_after_the_real_one():
    h = Harness()
    h.open()
    h.client(settings_message({"greeting": "Hi"}))
    out = h.client(SETTINGS)
    assert out.client == [] and out.up == []
    out = h.up(SESSION_UPDATED)
    assert out.client_types[:3] == ["SettingsApplied", "SettingsApplied", "ConversationText"]


def test_d10_transcription_language():
    h = Harness()
    h.ready(settings_message({"language": "es"}))
    assert h.session()["audio"]["input"]["transcription"] == {
        "model": "gpt-4o-transcribe",
        "language": "es",
        "prompt": "",
    }


# --- client messages -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "msg", [{"type": "InjectUserMessage"}, {"type": "InjectUserMessage", "content": 5}]
)
def test_d11_inject_without_string_content(msg):
    h = Harness()
    h.open()
    out = h.client(msg)  # before ready: rejected at receipt, never queued
    assert out.error_codes == ["invalid_client_message"] and h.t.pending_bytes == 0
    h.client(SETTINGS)
    assert h.up(SESSION_UPDATED).up == []
    out = h.client(msg)
    assert out.error_codes == ["invalid_client_message"] and out.up == []
    out = h.client({"type": "InjectUserMessage", "content": ""})
    assert out.up_types == ["conversation.item.create"]


@pytest.mark.parametrize("passthrough", [False, True])
def test_d12_keepalive_dropped_silently(passthrough):
    h = Harness(json_passthrough=passthrough)
    h.ready()
    out = h.client({"type": "KeepAlive"})
    assert out.up == [] and out.client == []


def test_d13_update_prompt_appends_and_answers_prompt_updated():
    h = Harness()
    h.ready(settings_message({"think": {"prompt": "Be helpful."}}))
    out = h.client({"type": "UpdatePrompt", "prompt": "Be brief."})
    assert out.up[0]["session"] == {"type": "realtime", "instructions": "Be helpful.\n\nBe brief."}
    assert h.up(SESSION_UPDATED).client == [{"type": "PromptUpdated"}]
    out = h.client({"type": "UpdatePrompt", "prompt": "Smile."})
    assert out.up[0]["session"]["instructions"] == "Be helpful.\n\nBe brief.\n\nSmile."


def test_d13_update_prompt_on_empty_instructions_and_invalid():
    h = Harness()
    h.ready(settings_message())
    assert h.client({"type": "UpdatePrompt", "prompt": "P"}).up[0]["session"]["instructions"] == "P"
    assert h.client({"type": "UpdatePrompt"}).error_codes == ["invalid_client_message"]


def test_d13_update_prompt_gated_before_ready_and_deferred_during_a_response():
    h = Harness()
    h.open()
    h.client(settings_message({"think": {"prompt": "A"}}))
    h.client({"type": "UpdatePrompt", "prompt": "B"})
    h.client({"type": "InjectUserMessage", "content": "q"})
    out = h.up(SESSION_UPDATED)
    assert out.up_types == ["session.update", "conversation.item.create"]  # arrival order
    assert out.client_types == ["SettingsApplied", "ConversationText"]
    assert h.up(SESSION_UPDATED).client_types == ["PromptUpdated"]
    h.up(user_item("u1"))  # response.create: active
    assert h.client({"type": "UpdatePrompt", "prompt": "C"}).up == []
    out = h.up({"type": "response.done", "response": {}})
    assert out.up_types == ["session.update"]
    assert out.up[0]["session"]["instructions"] == "A\n\nB\n\nC"


def test_d13_held_prompt_goes_out_before_the_owed_create():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})  # VAD response active
    h.client({"type": "UpdatePrompt", "prompt": "New."})
    h.inject("q", "u1")
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.up_types == ["session.update", "response.create"]


def test_d13_inject_agent_message_text_only_and_echo_suppressed():
    h = Harness()
    h.ready()
    out = h.client({"type": "InjectAgentMessage", "message": "Still there?"})
    assert out.up == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Still there?"}],
            },
        }
    ]
    assert out.client == [
        {"type": "ConversationText", "role": "assistant", "content": "Still there?"},
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    out = h.up(assistant_item("a9", "Still there?", event="conversation.item.added"))
    assert out.client == []
    assert h.up(assistant_item("a9", "Still there?")).client == []
    assert "response.create" not in h.all.up_types


def test_d13_inject_agent_message_refused_while_busy():
    h = Harness()
    h.ready()
    h.up({"type": "input_audio_buffer.speech_started"})
    out = h.client({"type": "InjectAgentMessage", "message": "x"})
    assert out.client_types == ["InjectionRefused"] and out.up == []
    assert out.client[0]["message"]  # the SDK's model requires a reason
    h.up({"type": "input_audio_buffer.speech_stopped"})
    h.up({"type": "response.created", "response": {"id": "r"}})
    assert h.client({"type": "InjectAgentMessage", "message": "x"}).client_types == [
        "InjectionRefused"
    ]
    assert h.client({"type": "InjectAgentMessage"}).error_codes == ["invalid_client_message"]


def test_d13_update_speak_unsupported():
    h = Harness()
    h.ready()
    out = h.client({"type": "UpdateSpeak", "speak": {}})
    assert out.errors == [
        {
            "type": "Error",
            "description": "UpdateSpeak is not supported by the OpenAI translator",
            "code": "unsupported_client_message",
        }
    ]


@pytest.mark.parametrize(
    ("msg", "named"),
    [
        ({"type": "Foo"}, '"Foo"'),
        ({"type": "CloseStream"}, '"CloseStream"'),
        ({"type": "UpdateThinkLive"}, '"UpdateThinkLive"'),
        ({"no": "type"}, "(missing type)"),
        ([1, 2], "(missing type)"),
        (7, "(missing type)"),
        ({"type": 3}, "(missing type)"),
    ],
)
def test_d14_other_json_is_unsupported(msg, named):
    h = Harness()
    h.ready()
    out = h.client(msg if not isinstance(msg, int) else "7")
    assert out.error_codes == ["unsupported_client_message"]
    assert named in out.errors[0]["description"]
    assert out.up == []


@pytest.mark.parametrize("kind", ["UpdatePrompt", "InjectAgentMessage", "UpdateSpeak", "Foo"])
def test_d15_strict_mode_restores_the_allow_list(kind):
    h = Harness(strict=True)
    h.ready()
    out = h.client({"type": kind, "prompt": "x", "message": "y"})
    assert out.error_codes == ["disallowed_client_message_type"]
    assert f'"{kind}"' in out.errors[0]["description"]
    assert out.up == []
    assert h.client({"type": "KeepAlive"}).client == []
    assert h.client({"type": "InjectUserMessage", "content": "q"}).up_types == [
        "conversation.item.create"
    ]


def test_d16_passthrough_forwards_unknown_json_verbatim():
    h = Harness(json_passthrough=True)
    h.ready()
    raw = '{"type":"input_audio_buffer.clear", "x": 1}'
    out = h.client(raw)
    assert [a.data for a in out if type(a).__name__ == "SendUpstream"] == [raw]
    assert out.client == []


# --- ordering fixes ------------------------------------------------------------------------


def test_d17_only_the_injects_own_item_binds():
    h = Harness()
    h.ready()
    h.client({"type": "InjectUserMessage", "content": "q"})
    for event in (
        assistant_item("a1", "hello", event="conversation.item.added"),
        {
            "type": "conversation.item.added",
            "item": {
                "id": "v1",
                "type": "message",
                "role": "user",
                "content": [{"type": "input_audio"}],
            },
        },
        {
            "type": "conversation.item.added",
            "item": {"id": "f1", "type": "function_call_output", "call_id": "c"},
        },
        {
            "type": "conversation.item.added",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "q"}],
            },
        },
    ):
        assert "response.create" not in h.up(event).up_types
    assert h.up(user_item("u1")).up_types == ["response.create"]


def test_d17_two_injects_bind_two_ids_and_no_create_is_lost():
    h = Harness()
    h.ready()
    h.client({"type": "InjectUserMessage", "content": "a"})
    h.client({"type": "InjectUserMessage", "content": "b"})
    assert h.up(user_item("u1", "a")).up_types == ["response.create"]
    assert h.up(user_item("u2", "b")).up == []  # D18: a response is active
    assert h.up(user_item("u2", "b", event="conversation.item.done")).up == []
    out = h.up({"type": "response.output_text.done", "text": "A"})
    assert out.up_types == ["response.create"]
    assert h.all.up_types.count("response.create") == 2


def test_d18_inject_create_waits_for_the_active_response():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    out = h.inject("q", "u1")
    assert out.up_types == ["conversation.item.create"]
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.up_types == ["response.create"]


def test_d18_one_create_covers_owed_injects_and_the_deferred_create():
    h = Harness()
    h.ready()
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    h.inject("q", "u1")  # owed, but a post-function create is pending
    assert "response.create" not in h.all.up_types
    out = h.up(fco_done())
    assert out.up_types == ["response.create"]
    h.up({"type": "response.done", "response": {}})
    assert h.all.up_types.count("response.create") == 1


def test_d19_every_create_is_tagged_and_a_refused_create_is_requeued():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    create = next(e for e in h.all.up if e["type"] == "response.create")
    assert create["event_id"].startswith("vg_")
    out = h.up(
        {
            "type": "error",
            "error": {
                "code": "conversation_already_has_active_response",
                "event_id": create["event_id"],
            },
        }
    )
    assert out.client == [] and out.up == []
    out = h.up({"type": "response.done", "response": {"id": "vad_resp"}})
    assert out.up_types == ["response.create"]
    assert out.up[0]["event_id"] != create["event_id"]


def test_d19_error_without_event_id_while_a_create_awaits_response_created():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up({"type": "error", "error": {"code": "conversation_already_has_active_response"}})
    out = h.up({"type": "response.output_text.done", "text": "other"})
    assert out.up_types == ["response.create"]


def test_d19_error_not_about_our_create_changes_nothing():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up({"type": "response.created", "response": {"id": "r1"}})
    out = h.up(
        {
            "type": "error",
            "error": {"code": "conversation_already_has_active_response", "event_id": "client_x"},
        }
    )
    assert out.client == [] and out.up == []
    h.up({"type": "response.done", "response": {"id": "r1"}})
    assert h.all.up_types.count("response.create") == 1


def test_d20_agent_started_before_item_text():
    h = Harness()
    h.ready()
    out = h.up(
        {
            "type": "conversation.item.added",
            "item": {
                "id": "a",
                "role": "assistant",
                "content": [{"type": "function_call", "name": "f", "arguments": "{}"}],
            },
        }
    )
    assert out.client == [
        {"type": "AgentStartedSpeaking"},
        {"type": "ConversationText", "role": "assistant", "content": "Function call: f({})"},
    ]


def test_d21_no_assistant_text_of_an_inject_turn_before_its_echo():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.inject("q", "u1")
    h.up({"type": "response.done", "response": {"id": "r1"}})
    h.up({"type": "response.created", "response": {"id": "r2"}})
    h.up(
        {
            "type": "response.output_audio_transcript.done",
            "response_id": "r2",
            "transcript": "Answer",
        }
    )
    client = h.all.client
    echo = client.index({"type": "ConversationText", "role": "user", "content": "q"})
    answer = client.index({"type": "ConversationText", "role": "assistant", "content": "Answer"})
    assert echo < answer


def test_d22_done_pair_of_the_ending_response_before_the_deferred_create():
    h = Harness()
    h.ready()
    h.up(
        {
            "type": "response.function_call_arguments.done",
            "call_id": "c1",
            "name": "f",
            "arguments": "{}",
        }
    )
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    out = h.up({"type": "response.output_text.done"})
    assert out.client_types == ["AgentDone", "AgentAudioDone"]
    sends = [type(a).__name__ for a in out if type(a).__name__ in ("SendClient", "SendUpstream")]
    assert sends == ["SendClient", "SendClient", "SendUpstream"]
    # the new response still gets its own signals
    out = h.up({"type": "response.output_text.done", "text": "Hello from mock"})
    assert out.client_types == [
        "AgentStartedSpeaking",
        "ConversationText",
        "AgentDone",
        "AgentAudioDone",
    ]


def test_d23_text_done_then_response_done_of_the_same_response():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up({"type": "response.output_text.done", "response_id": "r1", "item_id": "a1", "text": "T"})
    out = h.up(
        {
            "type": "response.done",
            "response": {"id": "r1", "output": [assistant_item("a1", "T")["item"]]},
        }
    )
    assert out.client == []
    assert h.all.client_types.count("AgentDone") == 1
    assert assistant_texts(h.all) == ["T"]


def test_d23_late_event_of_the_previous_response_does_not_touch_the_next():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(
        {
            "type": "response.function_call_arguments.done",
            "response_id": "r1",
            "call_id": "c1",
            "name": "f",
        }
    )
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.client_types == ["AgentDone", "AgentAudioDone"] and out.up_types == [
        "response.create"
    ]
    h.up({"type": "response.created", "response": {"id": "r2"}})
    late = h.up({"type": "response.output_text.done", "response_id": "r1", "text": "late"})
    assert "AgentDone" not in late.client_types and late.up == []
    out = h.up({"type": "response.output_text.done", "response_id": "r2", "text": "T2"})
    assert out.client_types == [
        "AgentStartedSpeaking",
        "ConversationText",
        "AgentDone",
        "AgentAudioDone",
    ]


def test_d24_held_idle_timeout_flushed_on_response_done():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up(audio_delta(b"\x00" * 320))
    assert h.up({"type": "error", "error": {"code": "idle_timeout", "message": "i"}}).client == []
    out = h.up({"type": "response.done", "response": {}})
    assert out.client_types == ["AgentDone", "AgentAudioDone", "Error"]


def test_d25_parallel_calls_create_only_after_every_output():
    h = Harness()
    h.ready()
    for cid in ("c1", "c2"):
        h.up(
            {
                "type": "response.function_call_arguments.done",
                "call_id": cid,
                "name": "f",
                "arguments": "{}",
            }
        )
    assert h.all.client_types.count("FunctionCallRequest") == 2
    out = h.client({"type": "FunctionCallResponse", "id": "c1", "content": "1"})
    assert out.up_types == ["conversation.item.create"] and "deferred_create" not in h.armed
    assert h.up(fco_done("o1", "c1")).up == []
    out = h.client({"type": "FunctionCallResponse", "id": "c2", "content": "2"})
    assert "deferred_create" in h.armed
    out = h.up(fco_done("o2", "c2"))
    assert out.up_types == ["response.create"]


def test_d25_a_call_announced_later_reblocks_the_create():
    h = Harness()
    h.ready()
    h.up({"type": "response.function_call_arguments.done", "call_id": "c1", "name": "f"})
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "1"})
    assert "deferred_create" in h.armed
    out = h.up({"type": "response.function_call_arguments.done", "call_id": "c2", "name": "f"})
    assert CancelTimer("deferred_create") in out and "deferred_create" not in h.armed
    assert h.up(fco_done("o1", "c1")).up == []
    h.client({"type": "FunctionCallResponse", "id": "c2", "content": "2"})
    assert h.up(fco_done("o2", "c2")).up_types == ["response.create"]


def test_d25_duplicate_announcement_yields_one_request():
    h = Harness()
    h.ready()
    for _ in range(2):
        h.up({"type": "response.function_call_arguments.done", "call_id": "c1", "name": "f"})
    assert h.all.client_types.count("FunctionCallRequest") == 1


def test_d26_pad_to_the_first_commit_threshold_after_a_response():
    h = Harness()
    h.ready({**MANUAL_SETTINGS, "audio": {"input": {"encoding": "linear16", "sample_rate": 24000}}})
    h.inject("q", "u1")
    h.client(b"\x00" * 30000)
    out = h.up({"type": "response.output_text.done", "text": "a"})
    assert [len(b) for b in appended(out)] == [18000]  # 30000 -> 48000, not 4800
    assert h.fire("commit_debounce").up_types == ["input_audio_buffer.commit", "response.create"]


# --- upstream connection and close ---------------------------------------------------------


def test_d27_upstream_auth_failed():
    h = Harness()
    h.start()
    h.client(SETTINGS)
    out = h.upstream_failed(auth=True)
    assert out.error_codes == ["upstream_auth_failed"]
    assert out.of(CloseClient) == [CloseClient(1008, "upstream auth failed")]
    assert h.t.closed and h.t.pending_bytes == 0


def test_d27_upstream_unavailable_may_name_the_status():
    h = Harness()
    h.start()
    out = h.upstream_failed(auth=False)
    assert out.error_codes == ["upstream_unavailable"]
    assert out.of(CloseClient) == [CloseClient(1011, "upstream unavailable")]
    out = Harness().t.upstream_failed(auth=False, status=503)
    assert "HTTP 503" in out[0].data


@pytest.mark.parametrize(
    ("code", "client_code"),
    [
        (1000, 1000),
        (4001, 4001),
        (1005, 1000),
        (None, 1000),
        (1006, 1011),
        (1015, 1011),
        (1004, 1011),
        (2000, 1011),
    ],
)
def test_d28_upstream_close_code_mapping(code, client_code):
    h = Harness()
    h.ready()
    out = h.upstream_closed(code, "some upstream reason with sk-secret123456")
    closes = out.of(CloseClient)
    assert closes == [CloseClient(client_code, "upstream closed")]
    assert out.errors == []


def test_d28_closed_before_session_ready():
    h = Harness()
    h.open()
    h.client(SETTINGS)
    out = h.upstream_closed(1000, "bye")
    assert out.errors == [
        {
            "type": "Error",
            "description": "Upstream closed before session ready (code 1000, reason: bye). Session may not have been applied.",
            "code": "upstream_closed_before_session_ready",
        }
    ]
    assert out.of(CloseClient) == [CloseClient(1000, "upstream closed")]
    assert out.index(out.of(CloseClient)[0]) > 0


@pytest.mark.parametrize(
    ("code", "upstream_code"),
    [(1000, 1000), (1001, 1001), (None, 1000), (1005, 1000), (1006, 1000), (4000, 4000)],
)
def test_d29_client_close_closes_upstream_and_cancels_timers(code, upstream_code):
    h = Harness()
    h.ready()
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    out = h.client_closed(code)
    assert out.of(CloseUpstream) == [CloseUpstream(upstream_code, "client closed")]
    assert {c.name for c in out.of(CancelTimer)} == {
        "commit_debounce",
        "commit_coalesce",
        "deferred_create",
    }
    assert h.armed == {}
    assert h.t.closed
    assert h.client(SETTINGS) == [] and h.up(SESSION_UPDATED) == []
    assert h.t.timer_expired("deferred_create") == []
    assert h.t.client_closed(1000, "") == [] and h.t.upstream_closed(1000, "") == []


def test_d29_every_close_path_cancels_every_timer():
    for close in (
        lambda h: h.client_closed(1000),
        lambda h: h.upstream_closed(1000),
        lambda h: h.gateway_limit("idle_timeout"),
        lambda h: h.upstream_failed(auth=False),
    ):
        h = Harness()
        h.ready(MANUAL_SETTINGS)
        h.client(b"\x00" * 40000)
        h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
        assert len(h.armed) == 3
        close(h)
        assert h.armed == {}


def test_d30_pending_bytes_counts_queued_frames_and_nothing_is_dropped():
    h = Harness()
    h.start()
    h.client(SETTINGS)
    for _ in range(10):
        h.client(b"\x00" * 1000)
    assert h.t.pending_bytes >= 10000
    h.upstream_open()
    assert h.t.pending_bytes == 10000  # audio waits for session.updated
    out = h.up(SESSION_UPDATED)
    assert out.up_types == ["input_audio_buffer.append"] * 10
    assert h.t.pending_bytes == 0


# --- behaviour kept from the reference -----------------------------------------------------


def test_d31_default_server_vad_manual_only_behind_the_flag():
    h = Harness()
    h.ready()
    assert h.session()["audio"]["input"]["turn_detection"]["type"] == "server_vad"
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    assert h.session()["audio"]["input"]["turn_detection"] is None


def test_d32_barge_in_is_only_user_started_speaking():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(audio_delta(b"\x00" * 32, response_id="r1"))
    out = h.up({"type": "input_audio_buffer.speech_started"})
    assert out.client == [{"type": "UserStartedSpeaking"}] and out.up == []


def test_d33_non_json_upstream_frame():
    h = Harness()
    h.ready()
    for frame in ("not json", b"\xff\xfe", "{"):
        out = h.up(frame)
        assert out.errors == [
            {
                "type": "Error",
                "description": "Proxy received upstream message that could not be parsed as JSON.",
                "code": "unmapped_upstream_event",
            }
        ]


def test_d34_timer_names_and_durations():
    h = Harness(deferred_create_timeout=0.5)
    h.ready(MANUAL_SETTINGS)
    h.client(b"\x00" * 40000)
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    assert h.armed == {"commit_debounce": 0.4, "commit_coalesce": 0.6, "deferred_create": 0.5}
    assert h.t.timer_expired("no_such_timer") == []


@pytest.mark.parametrize(
    ("limit", "client_code", "upstream_code"),
    [
        ("message_too_large", 1009, 1000),
        ("idle_timeout", 1000, 1000),
        ("session_max_duration", 1000, 1000),
        ("shutting_down", 1001, 1001),
    ],
)
def test_d35_gateway_limits_error_then_close(limit, client_code, upstream_code):
    h = Harness()
    h.ready()
    out = h.gateway_limit(limit)
    assert out.error_codes == [limit]
    kinds = [
        type(a).__name__
        for a in out
        if type(a).__name__ in ("SendClient", "CloseClient", "CloseUpstream")
    ]
    assert kinds == ["SendClient", "CloseClient", "CloseUpstream"]
    assert out.of(CloseClient)[0].code == client_code
    assert out.of(CloseUpstream)[0].code == upstream_code
    # The limit's code is the close reason on both legs, as on the splice (issue 16 §7).
    assert out.of(CloseClient)[0].reason == out.of(CloseUpstream)[0].reason == limit
    assert h.t.closed


def test_close_reasons_are_short_and_generic():
    h = Harness()
    h.ready()
    out = h.upstream_closed(4000, "x" * 500)
    for close in out.of(CloseClient):
        assert len(close.reason.encode()) <= 123 and "x" not in close.reason
