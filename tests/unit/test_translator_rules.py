"""Ordering rules R1-R23 of openai-translator §4, each as event sequences fed to the core."""

from __future__ import annotations

import base64

from tests.support.settings import (
    CONTEXT,
    MANUAL_SETTINGS,
    SESSION_CREATED,
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
from voxgate.workers.openai.actions import CloseUpstream


def index(types: list[str], name: str) -> int:
    return types.index(name)


def test_r1_frames_before_upstream_open_are_queued_and_drained_in_order():
    h = Harness()
    h.start()
    assert h.client(SETTINGS).up == []
    assert h.client({"type": "InjectUserMessage", "content": "q"}).up == []
    assert h.t.pending_bytes > 0
    out = h.upstream_open()
    assert out.up_types == ["session.update"]
    out = h.up(SESSION_UPDATED)
    assert out.up_types == ["conversation.item.create"]
    assert h.t.pending_bytes == 0


def test_r2_only_the_first_settings_is_forwarded():
    h = Harness()
    h.ready()
    out = h.client(
        settings_message({"greeting": "ignored", "think": {"prompt": "other"}})
    )
    assert out.up == []
    assert out.client == [{"type": "SettingsApplied"}]
    assert h.all.up_types.count("session.update") == 1


def test_r3_settings_during_active_response_is_discarded_but_can_be_sent_later():
    h = Harness()
    h.open()
    h.up(SESSION_UPDATED)  # an upstream that confirms a session on its own
    h.inject("q", "u1")  # response.create -> a response is active
    out = h.client(SETTINGS)
    assert out.up == [] and out.client == [{"type": "SettingsApplied"}]
    h.up({"type": "response.output_text.done", "text": "a"})
    out = h.client(SETTINGS)
    assert out.up_types == ["session.update"]


def test_r3_settings_while_a_deferred_create_is_pending():
    h = Harness()
    h.open()
    h.up(SESSION_UPDATED)
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "x"})
    out = h.client(SETTINGS)
    assert out.up == [] and out.client_types == ["SettingsApplied"]


def test_r4_session_created_is_not_readiness():
    h = Harness()
    h.open()
    h.client(settings_message({"greeting": "Hi"}))
    h.client({"type": "InjectUserMessage", "content": "q"})
    h.client(b"\x00\x00" * 10)
    out = h.up(SESSION_CREATED)
    assert out.client == [] and out.up == []
    out = h.up(SESSION_UPDATED)
    assert out.client_types[:2] == ["SettingsApplied", "ConversationText"]


def test_r5_no_append_before_session_updated():
    h = Harness()
    h.open()
    h.client(SETTINGS)
    assert h.client(b"\x00" * 960).up == []
    out = h.up(SESSION_UPDATED)
    assert out.up_types == ["input_audio_buffer.append"]
    types = h.all.up_types
    assert index(types, "session.update") < index(types, "input_audio_buffer.append")


def test_r6_inject_queue_flushed_before_audio_queue():
    h = Harness()
    h.open()
    h.client(SETTINGS)
    h.client(b"\x00" * 100)
    h.client({"type": "InjectUserMessage", "content": "q"})
    h.client(b"\x00" * 100)
    out = h.up(SESSION_UPDATED)
    assert out.up_types == [
        "conversation.item.create",
        "input_audio_buffer.append",
        "input_audio_buffer.append",
    ]


def test_r7_create_only_after_the_item_is_confirmed():
    h = Harness()
    h.ready(MANUAL_SETTINGS)  # (in VAD mode response.created would mark a response active)
    out = h.client({"type": "InjectUserMessage", "content": "q"})
    assert out.up_types == ["conversation.item.create"]
    assert h.up({"type": "response.created"}).up == []
    assert h.up({"type": "session.updated"}).up == []
    out = h.up(user_item("u1"))
    assert out.up_types == ["response.create"]
    # .done of the same id does not count again
    assert h.up(user_item("u1", event="conversation.item.done")).up == []


def test_r7_events_without_an_id_never_bind():
    h = Harness()
    h.ready()
    h.client({"type": "InjectUserMessage", "content": "q"})
    out = h.up(
        {
            "type": "conversation.item.added",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "q"}],
            },
        }
    )
    assert out.up == []


def test_r8_deferred_create_waits_for_a_completion_signal():
    for completion in (
        {"type": "response.output_text.done"},
        {"type": "response.done", "response": {}},
        fco_done(),
    ):
        h = Harness()
        h.ready()
        out = h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
        assert out.up_types == ["conversation.item.create"]
        assert h.armed == {"deferred_create": 20.0}
        out = h.up(completion)
        assert out.up_types == ["response.create"], completion
        assert "deferred_create" not in h.armed
        # exactly one deferred create per pending flag
        h.up({"type": "response.done", "response": {}})
        assert h.all.up_types.count("response.create") == 1


def test_r8_timeout_sends_the_create_anyway():
    h = Harness(deferred_create_timeout=0.5)
    h.ready()
    h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    assert h.armed == {"deferred_create": 0.5}
    out = h.fire("deferred_create")
    assert out.up_types == ["response.create"]
    assert any(log.level == "error" and "contract" in log.message for log in out.logs)
    assert h.up(fco_done()).up == []


def test_r9_agent_thinking_right_after_function_call_response():
    h = Harness()
    h.ready()
    out = h.client({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    assert out.client == [{"type": "AgentThinking", "content": ""}]


def test_r10_manual_commit_debounce_and_threshold():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    h.client(b"\x00" * 40000)  # 16 kHz -> 60000 B at 24 kHz, over the first-commit threshold
    assert h.armed == {"commit_debounce": 0.4, "commit_coalesce": 0.6}
    out = h.fire("commit_debounce")
    assert out.up_types == ["input_audio_buffer.commit", "response.create"]
    assert h.armed == {}


def test_r10_first_commit_needs_48000_bytes_then_4800():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    h.client(b"\x00" * 20000)  # 30000 B at 24 kHz
    assert "commit_coalesce" not in h.armed
    assert h.fire("commit_debounce").up == []  # below 48000, not re-armed
    assert h.armed == {}
    h.client(b"\x00" * 20000)  # 60000 B pending
    out = h.fire("commit_debounce")
    assert out.up_types == ["input_audio_buffer.commit", "response.create"]
    h.up({"type": "response.output_text.done", "text": "a"})
    h.client(b"\x00" * 3200)  # 4800 B: enough after the first commit
    h.armed.pop("commit_coalesce", None)
    out = h.fire("commit_debounce")
    assert out.up_types == ["input_audio_buffer.commit", "response.create"]


def test_r10_timer_during_active_response_does_nothing_and_is_not_rearmed():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    h.inject("q", "u1")  # response active
    h.client(b"\x00" * 40000)
    assert "commit_coalesce" not in h.armed  # not armed while a response is active
    assert h.fire("commit_debounce").up == []
    assert h.armed == {}
    out = h.up({"type": "response.output_text.done", "text": "a"})  # R10a re-arms
    assert "commit_debounce" in h.armed
    assert h.fire("commit_debounce").up_types == ["input_audio_buffer.commit", "response.create"]
    assert out.up == []


def test_r10_max_coalesce_commits_during_continuous_audio():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    for _ in range(5):
        h.client(b"\x00" * 8000)  # 250 ms chunks; the debounce keeps restarting
    assert h.armed["commit_coalesce"] == 0.6
    out = h.fire("commit_coalesce")
    assert out.up_types == ["input_audio_buffer.commit", "response.create"]
    assert "commit_debounce" not in h.armed


def test_r10a_sub_threshold_tail_is_padded_after_the_response():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    h.client(b"\x00" * 40000)
    h.fire("commit_debounce")
    h.client(b"\x00" * 1000)  # 1500 B at 24 kHz, below 4800
    h.armed.clear()
    out = h.up({"type": "response.output_text.done", "text": "a"})
    appends = [e for e in out.up if e["type"] == "input_audio_buffer.append"]
    assert len(base64.b64decode(appends[0]["audio"])) == 4800 - 1500
    assert "commit_debounce" in h.armed
    assert h.fire("commit_debounce").up_types == ["input_audio_buffer.commit", "response.create"]


def test_r10b_client_close_flushes_pending_audio():
    h = Harness()
    h.ready(MANUAL_SETTINGS)
    h.client(b"\x00" * 1000)  # 500 samples -> 749 at 24 kHz; first threshold is 48000 (D26)
    out = h.client_closed(1000)
    assert out.up_types == [
        "input_audio_buffer.append",
        "input_audio_buffer.commit",
        "response.create",
    ]
    assert len(base64.b64decode(out.up[0]["audio"])) == 48000 - 2 * 749
    assert out.of(CloseUpstream) == [CloseUpstream(1000, "client closed")]
    assert out.index(out.of(CloseUpstream)[0]) > max(
        i for i, a in enumerate(out) if type(a).__name__ == "SendUpstream"
    )


def test_r11_server_vad_never_commits_and_response_created_marks_active():
    h = Harness()
    h.ready()
    for _ in range(14):
        out = h.client(b"\x00" * 8000)
        assert out.up_types == ["input_audio_buffer.append"]
    assert h.armed == {}
    h.up({"type": "response.created", "response": {"id": "r1"}})
    out = h.client(SETTINGS)  # R3 applies: the response is active
    assert out.up == []
    assert "input_audio_buffer.commit" not in h.all.up_types
    assert "response.create" not in h.all.up_types


def test_r12_output_audio_done_does_not_end_the_response():
    h = Harness()
    h.open()
    h.up(SESSION_UPDATED)
    h.inject("q", "u1")
    h.up({"type": "response.output_audio.done"})
    assert h.client(SETTINGS).up == []  # still active
    h.up({"type": "response.output_text.done"})
    assert h.client(SETTINGS).up_types == ["session.update"]


def test_r13_agent_started_precedes_audio_function_call_and_text():
    h = Harness()
    h.ready()
    out = h.up(audio_delta(b"\x01\x00" * 10))
    assert out.client_types == ["AgentStartedSpeaking", "<binary>"]

    h = Harness()
    h.ready()
    out = h.up(
        {
            "type": "response.function_call_arguments.done",
            "call_id": "c",
            "name": "f",
            "arguments": "{}",
        }
    )
    assert out.client_types == ["AgentStartedSpeaking", "FunctionCallRequest"]

    h = Harness()
    h.ready()
    out = h.up(assistant_item("a1", "Hi", event="conversation.item.added"))
    assert out.client_types == ["AgentStartedSpeaking", "ConversationText"]  # D20


def test_r14_one_done_pair_and_audio_before_it():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up(audio_delta(b"\x00" * 320))
    h.up({"type": "response.output_text.done", "text": "T"})  # audio seen: no pair here
    h.up({"type": "response.output_audio.done"})
    h.up({"type": "response.done", "response": {}})
    types = h.all.client_types
    assert types.count("AgentDone") == 1 and types.count("AgentAudioDone") == 1
    assert index(types, "<binary>") < index(types, "AgentAudioDone")
    assert index(types, "AgentDone") + 1 == index(types, "AgentAudioDone")


def test_r15_at_most_one_assistant_text_per_response():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up(assistant_item("a1", "first", event="conversation.item.added"))
    h.up(assistant_item("a1", "first"))
    h.up({"type": "response.output_audio_transcript.done", "transcript": "first"})
    h.up({"type": "response.output_text.done", "text": "other"})
    h.up({"type": "response.done", "response": {"output": [assistant_item("a1", "first")["item"]]}})
    texts = [
        m
        for m in h.all.client
        if isinstance(m, dict) and m["type"] == "ConversationText" and m["role"] == "assistant"
    ]
    assert [m["content"] for m in texts] == ["first"]


def test_r16_idle_timeout_error_held_until_the_text():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    out = h.up({"type": "error", "error": {"code": "idle_timeout", "message": "idle"}})
    assert out.client == []
    out = h.up({"type": "response.output_text.done", "text": "bye"})
    types = out.client_types
    assert index(types, "ConversationText") < index(types, "Error")
    assert out.errors == [{"type": "Error", "description": "idle", "code": "idle_timeout"}]


def test_r16_idle_timeout_when_idle_and_other_errors_go_out_at_once():
    h = Harness()
    h.ready()
    assert h.up(
        {"type": "error", "error": {"code": "idle_timeout", "message": "i"}}
    ).error_codes == ["idle_timeout"]
    h.inject("q", "u1")
    assert h.up(
        {"type": "error", "error": {"code": "server_error", "message": "s"}}
    ).error_codes == ["server_error"]


def test_r16_held_error_flushed_at_upstream_close():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up({"type": "error", "error": {"code": "idle_timeout", "message": "i"}})
    out = h.upstream_closed(1000)
    assert out.error_codes == ["idle_timeout"]


def test_r17_greeting_text_only_then_done_pair():
    h = Harness()
    out = h.ready(settings_message({"greeting": "Hi"}))
    assert out.client[1:] == [
        {"type": "SettingsApplied"},
        {"type": "ConversationText", "role": "assistant", "content": "Hi"},
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    assert h.all.up_types == ["session.update"]


def test_r17_greeting_suppressed_with_context():
    h = Harness()
    out = h.ready(settings_message({"greeting": "Hi", "context": {"messages": [{"role": "user", "content": "x"}]}}))
    assert out.client_types == ["Welcome", "SettingsApplied"]


def test_r18_context_only_in_instructions():
    h = Harness()
    h.ready(settings_message({"context": CONTEXT}))
    assert "Previous conversation:" in h.session()["instructions"]
    assert "conversation.item.create" not in h.all.up_types


def test_r19_only_audio_is_binary():
    h = Harness()
    h.ready()
    h.inject("q", "u1")
    h.up(audio_delta(b"\x00" * 320))
    h.up({"type": "response.output_audio.done"})
    h.up({"type": "response.output_text.done", "text": "T"})
    assert h.all.binary == [b"\x00" * 320]
    for action in h.all:
        if type(action).__name__ == "SendClient" and isinstance(action.data, str):
            assert action.data.startswith("{")


def test_r20_user_echo_when_the_inject_is_translated():
    h = Harness()
    h.ready()
    out = h.client({"type": "InjectUserMessage", "content": "hello there"})
    assert out.client == [{"type": "ConversationText", "role": "user", "content": "hello there"}]


def test_r21_active_response_error_never_forwarded():
    h = Harness()
    h.ready()
    out = h.up(
        {
            "type": "error",
            "error": {"code": "conversation_already_has_active_response", "message": "m"},
        }
    )
    assert out.client == []


def test_r22_unknown_upstream_types_are_silent():
    h = Harness()
    h.ready()
    for event in ({"type": "something.new"}, {"type": 5}, {"no": "type"}, [1, 2]):
        out = h.up(event)
        assert out.client == [] and out.up == []


def test_r23_early_audio_and_injects_are_tolerated():
    h = Harness()
    h.open()
    h.client(b"\x00" * 320)
    h.client({"type": "InjectUserMessage", "content": "early"})
    h.client(SETTINGS)
    assert h.all.up_types == ["session.update"]
    out = h.up(SESSION_UPDATED)
    assert out.up_types == ["conversation.item.create", "input_audio_buffer.append"]
