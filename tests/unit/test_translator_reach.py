"""The 2026 Voice Agent messages on the translator core (UpdateThink, UpdateListen,
InjectAgentMessage behaviors, FunctionCallCancelled, LatencyReport), and the Deepgram dialect
spoken on `/openai/v1/agent/converse` (issue 14, items 2 and 3)."""

from __future__ import annotations

import pytest

from tests.support.settings import MANUAL_SETTINGS, SESSION_UPDATED, settings_message
from tests.support.translator_harness import Harness, assistant_item, audio_delta
from voxgate.workers.openai.translator import (
    DIALECT_DEEPGRAM,
    DIALECT_REFERENCE,
    dialect_for_path,
)


class Clock:
    """A hand-driven clock for the latency rules."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def dg(**options) -> Harness:
    return Harness(dialect=DIALECT_DEEPGRAM, **options)


def last_update(h: Harness) -> dict:
    return [e for e in h.all.up if e["type"] == "session.update"][-1]["session"]


# --- UpdateThink -------------------------------------------------------------------------


def test_update_think_replaces_prompt_model_and_tools_and_answers_think_updated():
    h = Harness()
    h.ready()
    fn = {"name": "get_time", "description": "Time.", "parameters": {"type": "object"}}
    out = h.client(
        {
            "type": "UpdateThink",
            "think": {
                "provider": {"type": "open_ai", "model": "gpt-realtime-mini"},
                "prompt": "Be terse.",
                "functions": [{**fn, "endpoint": {"url": "https://x"}}],
            },
        }
    )
    assert out.up_types == ["session.update"] and out.client == []
    assert out.up[0]["session"] == {
        "type": "realtime",
        "instructions": "Be terse.\n\nWhen you receive results from tool calls, use them in your"
        " reply to the user.",
        "model": "gpt-realtime-mini",
        "tools": [{"type": "function", **fn}],
    }
    assert h.up(SESSION_UPDATED).client == [{"type": "ThinkUpdated"}]
    # a later UpdatePrompt adds to the replaced prompt
    h.client({"type": "UpdatePrompt", "prompt": "More."})
    assert last_update(h)["instructions"].endswith("reply to the user.\n\nMore.")


def test_update_think_list_first_entry_wins_and_non_realtime_model_is_not_sent():
    h = Harness()
    h.ready()
    think = [{"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "A."}, {}]
    out = h.client({"type": "UpdateThink", "think": think})
    assert out.up[0]["session"] == {"type": "realtime", "instructions": "A."}


@pytest.mark.parametrize("think", [None, "x", [], [1]])
def test_update_think_without_a_think_object_is_an_error(think):
    h = Harness()
    h.ready()
    out = h.client({"type": "UpdateThink", "think": think})
    assert out.error_codes == ["invalid_client_message"] and out.up == []


def test_update_think_gated_before_ready_and_held_during_a_response():
    h = Harness()
    h.open()
    h.client(settings_message())
    assert h.client({"type": "UpdateThink", "think": {"prompt": "B."}}).up == []
    out = h.up(SESSION_UPDATED)
    assert out.client_types == ["SettingsApplied"] and out.up_types == ["session.update"]
    h.up(SESSION_UPDATED)
    h.up({"type": "response.created", "response": {"id": "r1"}})
    assert h.client({"type": "UpdateThink", "think": {"prompt": "C."}}).up == []
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.up_types == ["session.update"] and out.up[0]["session"]["instructions"] == "C."


# --- UpdateListen ------------------------------------------------------------------------


def test_update_listen_eot_timeout_becomes_silence_duration_and_answers_listen_updated():
    h = Harness()
    h.ready()
    provider = {"version": "v2", "type": "deepgram", "model": "flux-general-en"}
    out = h.client(
        {
            "type": "UpdateListen",
            "listen": {
                "provider": {**provider, "eot_timeout_ms": 1500, "keyterms": ["voxgate", "Flux"]}
            },
        }
    )
    audio_input = out.up[0]["session"]["audio"]["input"]
    assert audio_input["turn_detection"]["type"] == "server_vad"
    assert audio_input["turn_detection"]["silence_duration_ms"] == 1500
    assert audio_input["turn_detection"]["create_response"] is True
    assert audio_input["transcription"] == {
        "model": "gpt-4o-transcribe",
        "language": "en",
        "prompt": "voxgate, Flux",
    }
    assert h.up(SESSION_UPDATED).client == [{"type": "ListenUpdated"}]


@pytest.mark.parametrize(
    ("threshold", "eagerness"), [(0.5, "high"), (0.7, "medium"), (0.85, "low")]
)
def test_update_listen_eot_threshold_becomes_semantic_vad_eagerness(threshold, eagerness):
    h = Harness()
    h.ready()
    listen = {"provider": {"model": "flux-general-en", "eot_threshold": threshold}}
    out = h.client({"type": "UpdateListen", "listen": listen})
    assert out.up[0]["session"]["audio"]["input"]["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": eagerness,
        "create_response": True,
        "interrupt_response": True,
    }


def test_update_listen_in_manual_mode_keeps_manual_commits_and_sets_language():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    listen = {"provider": {"version": "v1", "language": "de", "eot_timeout_ms": 900}}
    out = h.client({"type": "UpdateListen", "listen": listen})
    audio_input = out.up[0]["session"]["audio"]["input"]
    assert audio_input["turn_detection"] is None and audio_input["transcription"]["language"] == "de"


@pytest.mark.parametrize(
    "listen",
    [None, {}, {"provider": "deepgram"}, {"provider": {"eot_threshold": 2}},
     {"provider": {"eot_timeout_ms": -5}}, {"provider": {"eot_threshold": "high"}}],
)
def test_update_listen_invalid(listen):
    h = Harness()
    h.ready()
    out = h.client({"type": "UpdateListen", "listen": listen})
    assert out.error_codes == ["invalid_client_message"] and out.up == []


# --- InjectAgentMessage.behavior ---------------------------------------------------------


def speaking(h: Harness, rid: str = "r1", item: str = "a1", chunks: int = 2) -> None:
    """A VAD response that has sent `chunks` x 100 ms of 24 kHz audio to the client."""
    h.up({"type": "response.created", "response": {"id": rid}})
    for _ in range(chunks):
        h.up(audio_delta(b"\x01\x00" * 2400, response_id=rid, item_id=item))


def test_inject_default_refused_while_busy_with_a_reason():
    h = Harness()
    h.ready()
    speaking(h)
    out = h.client({"type": "InjectAgentMessage", "message": "x", "behavior": "default"})
    assert out.client == [
        {"type": "InjectionRefused", "message": "Injection refused: agent is speaking."}
    ]
    assert out.up == []


def test_inject_queue_speaks_after_the_live_response_before_the_next_create():
    h = Harness()
    h.ready()
    speaking(h)
    out = h.client({"type": "InjectAgentMessage", "message": "One moment.", "behavior": "queue"})
    assert out.client == [] and out.up == []
    h.inject("q", "u1")  # owes a create once the response ends
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.client_types == ["AgentDone", "AgentAudioDone", "ConversationText", "AgentDone",
                                "AgentAudioDone"]
    assert out.client[2] == {"type": "ConversationText", "role": "assistant",
                             "content": "One moment."}
    assert out.up_types == ["conversation.item.create", "response.create"]
    assert out.up[0]["item"]["role"] == "assistant"


def test_inject_queue_when_idle_speaks_at_once():
    h = Harness()
    h.ready()
    out = h.client({"type": "InjectAgentMessage", "message": "Hi.", "behavior": "queue"})
    assert out.up_types == ["conversation.item.create"]
    assert out.client_types == ["ConversationText", "AgentDone", "AgentAudioDone"]


def test_inject_interrupt_cancels_truncates_at_what_was_played_then_speaks():
    h = Harness()
    h.ready()
    speaking(h, chunks=3)  # 300 ms delivered
    out = h.client({"type": "InjectAgentMessage", "message": "Stop.", "behavior": "interrupt"})
    assert out.up[:2] == [
        {"type": "response.cancel", "response_id": "r1"},
        {"type": "conversation.item.truncate", "item_id": "a1", "content_index": 0,
         "audio_end_ms": 300},
    ]
    assert out.up[2]["type"] == "conversation.item.create"
    assert out.up[2]["item"]["content"][0]["text"] == "Stop."
    # the cut response ends for the client, then the message is the agent's turn
    assert out.client_types == ["AgentDone", "AgentAudioDone", "ConversationText", "AgentDone",
                                "AgentAudioDone"]
    # what the cancelled response still sends is dropped; its end yields nothing new
    assert h.up(audio_delta(b"\x01\x00" * 2400, response_id="r1", item_id="a1")).client == []
    assert h.up({"type": "response.output_audio_transcript.done", "response_id": "r1",
                 "item_id": "a1", "transcript": "Once upon"}).client == []
    out = h.up({"type": "error", "error": {"code": "response_cancel_not_active", "message": "m"}})
    assert out.client == []
    out = h.up({"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
    assert out.client == []
    assert h.up(assistant_item("a9", "Stop.")).client == []  # echo of the message item


def test_inject_interrupt_when_idle_or_user_speaking_just_speaks():
    h = Harness()
    h.ready()
    h.up({"type": "input_audio_buffer.speech_started"})
    out = h.client({"type": "InjectAgentMessage", "message": "Hey.", "behavior": "interrupt"})
    assert out.up_types == ["conversation.item.create"]


@pytest.mark.parametrize("behavior", ["later", 3, ""])
def test_inject_unknown_behavior_is_an_error(behavior):
    h = Harness()
    h.ready()
    out = h.client({"type": "InjectAgentMessage", "message": "x", "behavior": behavior})
    assert out.error_codes == ["invalid_client_message"] and out.up == []


# --- FunctionCallCancelled ---------------------------------------------------------------


def call(call_id: str, rid: str = "r1", name: str = "f") -> dict:
    return {"type": "response.function_call_arguments.done", "call_id": call_id, "name": name,
            "arguments": "{}", "response_id": rid}


def test_cancelled_response_with_calls_outstanding_sends_function_call_cancelled():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(call("c1", name="get_time"))
    h.up(call("c2", name="lookup"))
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "12:00"})
    out = h.up({"type": "response.done", "response": {"id": "r1", "status": "cancelled"}})
    assert {"type": "FunctionCallCancelled", "functions": [{"id": "c2", "name": "lookup"}]} in (
        out.client
    )
    # the turn is over (the user barged in, or an interrupt): no reply to c1's output is forced
    assert "response.create" not in out.up_types
    # and c2 no longer holds back a later turn's create (D25)
    h.up({"type": "response.created", "response": {"id": "r2"}})
    h.up(call("c3", rid="r2"))
    h.client({"type": "FunctionCallResponse", "id": "c3", "content": "ok"})
    assert "response.create" in h.up({"type": "response.done", "response": {"id": "r2"}}).up_types


def test_completed_response_cancels_nothing():
    h = Harness()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(call("c1"))
    out = h.up({"type": "response.done", "response": {"id": "r1", "status": "completed"}})
    assert "FunctionCallCancelled" not in out.client_types


# --- LatencyReport and AgentStartedSpeaking latencies (Deepgram dialect) ------------------


def test_latency_report_after_a_spoken_turn():
    clock = Clock()
    h = dg(clock=clock)
    h.ready()
    h.up({"type": "input_audio_buffer.speech_stopped"})  # t = 0 of the turn
    clock.now += 0.2
    h.up({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
          "transcript": "hello"})
    h.up({"type": "response.created", "response": {"id": "r1"}})
    clock.now += 0.3
    h.up({"type": "response.output_audio_transcript.delta", "response_id": "r1",
          "item_id": "a1", "delta": "Hi"})
    clock.now += 0.2
    out = h.up(audio_delta(b"\x00\x00" * 240, response_id="r1", item_id="a1"))
    assert out.client[0] == {"type": "AgentStartedSpeaking", "total_latency": 0.7,
                             "tts_latency": 0.2, "ttt_latency": 0.5}
    h.up({"type": "response.output_audio.done", "response_id": "r1", "item_id": "a1"})
    h.up({"type": "response.output_audio_transcript.done", "response_id": "r1",
          "item_id": "a1", "transcript": "Hi there"})
    out = h.up({"type": "response.done", "response": {"id": "r1", "status": "completed"}})
    [report] = [m for m in h.all.client if isinstance(m, dict) and m["type"] == "LatencyReport"]
    assert report == {"type": "LatencyReport", "stt_latency": 0.2, "ttt_token_latency": 0.5,
                      "ttt_text_latency": 0.5, "tts_latency": 0.2, "total_latency": 0.7}
    assert out.client == []  # sent once, right after the turn's AgentAudioDone


def test_latency_report_of_a_tool_turn_and_none_for_the_follow_up():
    clock = Clock()
    h = dg(clock=clock)
    h.ready()
    h.client({"type": "InjectUserMessage", "content": "time?"})
    h.up({"type": "conversation.item.added", "item": {"id": "u1", "type": "message",
          "role": "user", "content": [{"type": "input_text", "text": "time?"}]}})
    clock.now += 0.4
    h.up(call("c1", rid="r1"))
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    reports = [m for m in out.client if m["type"] == "LatencyReport"]
    assert reports == [{"type": "LatencyReport", "ttt_token_latency": 0.4,
                        "ttt_tool_latency": 0.4}]
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "12:00"})
    h.up({"type": "response.created", "response": {"id": "r2"}})
    out = h.up({"type": "response.output_text.done", "response_id": "r2", "text": "Noon."})
    assert "LatencyReport" not in out.client_types


def test_reference_dialect_has_no_latency_fields_or_report():
    h = Harness()
    h.ready()
    h.up({"type": "input_audio_buffer.speech_stopped"})
    h.up({"type": "response.created", "response": {"id": "r1"}})
    out = h.up(audio_delta(b"\x00\x00" * 240, response_id="r1", item_id="a1"))
    assert out.client[0] == {"type": "AgentStartedSpeaking"}
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert "LatencyReport" not in out.client_types


# --- the Deepgram dialect ----------------------------------------------------------------


def test_dialect_follows_the_path():
    assert dialect_for_path("/openai/v1/agent/converse") == DIALECT_DEEPGRAM
    assert dialect_for_path("/openai") == DIALECT_REFERENCE


def test_deepgram_dialect_user_speech_is_conversation_text_only():
    h = dg()
    h.ready()
    assert h.up({"type": "input_audio_buffer.speech_started"}).client_types == [
        "UserStartedSpeaking"
    ]
    assert h.up({"type": "input_audio_buffer.speech_stopped"}).client == []
    delta = {"type": "conversation.item.input_audio_transcription.delta", "item_id": "u1",
             "delta": "Hel"}
    assert h.up(delta).client == []
    out = h.up({"type": "conversation.item.input_audio_transcription.completed", "item_id": "u1",
                "transcript": " Hello there "})
    assert out.client == [{"type": "ConversationText", "role": "user", "content": "Hello there"}]


def test_deepgram_dialect_assistant_text_before_agent_audio_done_and_no_agent_done():
    h = dg()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(audio_delta(b"\x00\x00" * 240, response_id="r1", item_id="a1"))
    assert h.up({"type": "response.output_audio.done", "response_id": "r1",
                 "item_id": "a1"}).client == []
    out = h.up({"type": "response.output_audio_transcript.done", "response_id": "r1",
                "item_id": "a1", "transcript": "Hi there"})
    assert out.client_types == ["ConversationText", "AgentAudioDone"]
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.client == []
    assert "AgentDone" not in h.all.client_types


def test_deepgram_dialect_audio_done_without_text_comes_at_the_response_end():
    h = dg()
    h.ready()
    h.up({"type": "response.created", "response": {"id": "r1"}})
    h.up(audio_delta(b"\x00\x00" * 240, response_id="r1", item_id="a1"))
    h.up({"type": "response.output_audio.done", "response_id": "r1", "item_id": "a1"})
    out = h.up({"type": "response.done", "response": {"id": "r1"}})
    assert out.client_types == ["AgentAudioDone"]


def test_deepgram_dialect_greeting_and_agent_message_end_with_agent_audio_done():
    h = dg()
    h.open()
    h.client(settings_message({"greeting": "Hello!"}))
    out = h.up(SESSION_UPDATED)
    assert out.client_types == ["SettingsApplied", "ConversationText", "AgentAudioDone"]
    out = h.client({"type": "InjectAgentMessage", "message": "Still there?"})
    assert out.client_types == ["ConversationText", "AgentAudioDone"]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("not json", "UNPARSABLE_CLIENT_MESSAGE"),
        ('{"type":"InjectUserMessage"}', "UNPARSABLE_CLIENT_MESSAGE"),
        ('{"type":"Foo"}', "UNPARSABLE_CLIENT_MESSAGE"),
        (b"\x00", "INVALID_AUDIO_FRAME"),
    ],
)
def test_deepgram_dialect_error_codes_are_upper_case(frame, code):
    h = dg()
    h.ready()
    assert h.client(frame).error_codes == [code]


def test_deepgram_dialect_upstream_error_code_upper_case():
    h = dg()
    h.ready()
    out = h.up({"type": "error", "error": {"code": "rate_limit_exceeded", "message": "m"}})
    assert out.errors == [{"type": "Error", "description": "m", "code": "RATE_LIMIT_EXCEEDED"}]
