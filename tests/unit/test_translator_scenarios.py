"""Acceptance scenarios A1..V13 of openai-translator §7.5, run against the sans-IO core with a
scripted fake upstream (the §7 mock: answers session.update, user items, response.create,
function outputs and commits). "Later" in the spec is the order events are fed here."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from tests.support.settings import (
    CONTEXT,
    MANUAL_SETTINGS,
    MINIMAL_DEEPGRAM_SETTINGS,
    SESSION_CREATED,
    SESSION_UPDATED,
    SETTINGS,
    settings_message,
)
from tests.support.translator_harness import Harness, Out
from voxgate.workers.openai.actions import CloseClient, SendUpstream

MOCK_TEXT = "Hello from mock"


class FakeUpstream:
    """Replies to what the core sends upstream, like the reference's mock server."""

    def __init__(
        self,
        h: Harness,
        *,
        answer_update: bool = True,
        user_item_done: bool = False,
        delay_user_item: bool = False,
        response: str = "text",  # "text" | "audio" | "none"
        function_output: str = "text_done",  # | "response_done" | "items" | "done_then_text" | "none"
    ) -> None:
        self.h = h
        self.answer_update = answer_update
        self.user_item_done = user_item_done
        self.delay_user_item = delay_user_item
        self.response = response
        self.function_output = function_output
        self.received: list[dict[str, Any]] = []
        self.held: list[dict[str, Any]] = []
        self._items = 0

    def replies(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event["type"]
        if kind == "session.update" and self.answer_update:
            return [SESSION_UPDATED]
        if kind == "conversation.item.create":
            item = event["item"]
            if item["type"] == "function_call_output":
                return self._function_output_replies()
            self._items += 1
            reply = {"id": f"item_mock_{self._items}", **item}
            out = [{"type": "conversation.item.added", "item": reply}]
            if self.user_item_done:
                out.append({"type": "conversation.item.done", "item": reply})
            if self.delay_user_item and item.get("role") == "user":
                self.held.extend(out)
                return []
            return out
        if kind == "response.create":
            return self._response_replies()
        if kind == "input_audio_buffer.commit":
            return [{"type": "input_audio_buffer.committed"}]
        return []

    def _response_replies(self) -> list[dict[str, Any]]:
        text_done = {"type": "response.output_text.done", "text": MOCK_TEXT}
        item_done = {
            "type": "conversation.item.done",
            "item": {
                "id": "item_mock_response_1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": MOCK_TEXT}],
            },
        }
        if self.response == "audio":
            delta = {
                "type": "response.output_audio.delta",
                "delta": base64.b64encode(bytes(320)).decode(),
            }
            return [delta, {"type": "response.output_audio.done"}, text_done, item_done]
        if self.response == "text":
            return [text_done, item_done]
        return []

    def _function_output_replies(self) -> list[dict[str, Any]]:
        done = {
            "type": "conversation.item.done",
            "item": {"id": "o1", "type": "function_call_output"},
        }
        return {
            "text_done": [{"type": "response.output_text.done"}],
            "response_done": [{"type": "response.done", "response": {}}],
            "done_then_text": [
                {"type": "response.done", "response": {}},
                {"type": "response.output_text.done"},
            ],
            "items": [{"type": "conversation.item.added", "item": done["item"]}, done],
            "none": [],
        }[self.function_output]

    def pump(self, out: Out) -> Out:
        """Answer every upstream send in `out`, and the sends those answers cause."""
        collected = Out(out)
        pending = [orjson.loads(a.data) for a in out if isinstance(a, SendUpstream)]
        for _ in range(200):
            if not pending:
                return collected
            event = pending.pop(0)
            self.received.append(event)
            for reply in self.replies(event):
                produced = self.h.up(reply)
                collected.extend(produced)
                pending.extend(
                    orjson.loads(a.data) for a in produced if isinstance(a, SendUpstream)
                )
        raise AssertionError("fake upstream did not settle")

    def release(self) -> Out:
        """Deliver replies held back to model a delay."""
        held, self.held = self.held, []
        out = Out()
        for reply in held:
            out.extend(self.pump(self.h.up(reply)))
        return out

    def push(self, event: dict[str, Any] | str) -> Out:
        return self.pump(self.h.up(event))

    def types(self) -> list[str]:
        return [e["type"] for e in self.received]


class Scenario:
    def __init__(self, **fake: Any) -> None:
        self.h = Harness(
            **{k: fake.pop(k) for k in list(fake) if k in ("strict", "deferred_create_timeout")}
        )
        self.up = FakeUpstream(self.h, **fake)
        self.h.start()

    def open(self) -> Out:
        return self.up.pump(self.h.upstream_open())

    def send(self, msg: Any) -> Out:
        return self.up.pump(self.h.client(msg))

    @property
    def client(self) -> list[Any]:
        return self.h.all.client

    @property
    def client_types(self) -> list[str]:
        return self.h.all.client_types




def conv(role: str, content: str) -> dict[str, str]:
    return {"type": "ConversationText", "role": role, "content": content}


# --- A: session --------------------------------------------------------------------------


def test_a1_settings_applied_and_server_vad():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    assert s.client_types == ["Welcome", "SettingsApplied"]
    updates = [e for e in s.up.received if e["type"] == "session.update"]
    assert len(updates) == 1
    assert "turn_detection" not in updates[0]["session"]
    assert updates[0]["session"]["audio"]["input"]["turn_detection"]["type"] == "server_vad"


def test_a2_session_created_on_connect_yields_no_settings_applied():
    s = Scenario()
    s.open()
    s.up.push(SESSION_CREATED)
    s.send(SETTINGS)
    assert s.client_types.count("SettingsApplied") == 1


def test_a3_settings_twice():
    s = Scenario(answer_update=False)
    s.open()
    s.send(SETTINGS)
    s.send(SETTINGS)
    assert s.client_types == ["Welcome"]
    s.up.push(SESSION_UPDATED)
    assert s.client_types == ["Welcome", "SettingsApplied", "SettingsApplied"]
    assert s.up.types().count("session.update") == 1


def test_a4_greeting():
    s = Scenario()
    s.open()
    s.send(settings_message({"greeting": "Hi"}))
    assert s.client[1:] == [
        {"type": "SettingsApplied"},
        conv("assistant", "Hi"),
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    assert "conversation.item.create" not in s.up.types() and "response.create" not in s.up.types()


def test_a5_greeting_with_context():
    s = Scenario()
    s.open()
    s.send(settings_message({"greeting": "Hi", "context": CONTEXT}))
    assert s.client_types == ["Welcome", "SettingsApplied"]
    instructions = s.up.received[0]["session"]["instructions"]
    assert "Previous conversation:" in instructions and "user: Hello" in instructions
    assert "assistant: Hi there!" in instructions


# --- B: text turns -------------------------------------------------------------------------


def test_b1_text_turn():
    s = Scenario(delay_user_item=True)
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    assert "response.create" not in s.up.types()  # item.added not yet delivered
    s.up.release()
    assert s.client[1:] == [
        {"type": "SettingsApplied"},
        conv("user", "q"),
        {"type": "AgentStartedSpeaking"},
        conv("assistant", MOCK_TEXT),
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]
    assert s.up.types() == ["session.update", "conversation.item.create", "response.create"]


def test_b2_inject_then_settings_at_open():
    s = Scenario()
    s.h.client({"type": "InjectUserMessage", "content": "q"})
    s.h.client(SETTINGS)
    s.open()
    types = s.up.types()
    assert types.index("session.update") < types.index("conversation.item.create")


def test_b3_added_and_done_of_one_item_give_one_create():
    s = Scenario(user_item_done=True)
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    assert s.up.types().count("response.create") == 1


def test_b4_audio_turn():
    s = Scenario(response="audio")
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    types = s.client_types
    assert s.h.all.binary == [bytes(320)]
    assert types.count("AgentDone") == 1 and types.count("AgentAudioDone") == 1
    assert types.index("<binary>") < types.index("AgentDone")
    for frame in s.client:
        assert not isinstance(frame, dict) or "." not in frame["type"]  # no raw upstream types


# --- C: function calls ---------------------------------------------------------------------


def function_call(s: Scenario) -> None:
    s.up.push(
        {
            "type": "response.function_call_arguments.done",
            "call_id": "c1",
            "name": "f",
            "arguments": "{}",
        }
    )


def test_c1_function_call_request():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    function_call(s)
    assert s.client[1:] == [
        {"type": "SettingsApplied"},
        {"type": "AgentStartedSpeaking"},
        {
            "type": "FunctionCallRequest",
            "functions": [{"id": "c1", "name": "f", "arguments": "{}", "client_side": True}],
        },
    ]


def test_c2_function_result_and_deferred_create_on_item_done():
    s = Scenario(function_output="items")
    s.open()
    s.send(SETTINGS)
    function_call(s)
    out = s.h.client({"type": "FunctionCallResponse", "id": "c1", "content": '{"t":1}'})
    assert out.client == [{"type": "AgentThinking", "content": ""}]
    assert out.up == [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "c1", "output": '{"t":1}'},
        }
    ]
    s.up.pump(out)
    types = s.up.types()
    assert types.count("response.create") == 1
    assert types.index("conversation.item.create") < types.index("response.create")
    assert s.client[-4:] == [
        {"type": "AgentStartedSpeaking"},
        conv("assistant", MOCK_TEXT),
        {"type": "AgentDone"},
        {"type": "AgentAudioDone"},
    ]


def test_c3_completion_variants_give_exactly_one_create():
    for variant in ("response_done", "done_then_text", "text_done"):
        s = Scenario(function_output=variant)
        s.open()
        s.send(SETTINGS)
        function_call(s)
        s.send({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
        assert s.up.types().count("response.create") == 1, variant
        assert MOCK_TEXT in [m.get("content") for m in s.client if isinstance(m, dict)]


def test_c3_no_completion_create_after_the_timeout():
    s = Scenario(function_output="none", deferred_create_timeout=0.5)
    s.open()
    s.send(SETTINGS)
    function_call(s)
    s.send({"type": "FunctionCallResponse", "id": "c1", "content": "r"})
    assert "response.create" not in s.up.types()
    assert s.h.armed == {"deferred_create": 0.5}
    s.up.pump(s.h.fire("deferred_create"))
    assert s.up.types().count("response.create") == 1


def test_c4_result_and_error_outputs():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    s.send({"type": "FunctionCallResponse", "id": "c1", "result": {"a": 1}})
    s.send({"type": "FunctionCallResponse", "id": "c2", "error": "x"})
    outputs = [
        e["item"]["output"] for e in s.up.received if e["type"] == "conversation.item.create"
    ]
    assert outputs == ['{"a":1}', '{"error":"x"}']


# --- M: mic audio --------------------------------------------------------------------------


def appends(s: Scenario) -> list[bytes]:
    return [
        base64.b64decode(e["audio"])
        for e in s.up.received
        if e["type"] == "input_audio_buffer.append"
    ]


def test_m1_early_audio_flushed_after_session_updated():
    s = Scenario(answer_update=False)
    s.open()
    s.send(SETTINGS)
    s.send(bytes(960))
    assert appends(s) == []
    s.up.push(SESSION_UPDATED)
    assert [len(a) for a in appends(s)] == [1438]


def test_m2_manual_commit_after_debounce():
    s = Scenario(response="none")
    s.open()
    s.send(MANUAL_SETTINGS)
    s.send(bytes(40000))
    assert appends(s)
    s.up.pump(s.h.fire("commit_debounce"))
    types = s.up.types()
    assert types[-2:] == ["input_audio_buffer.commit", "response.create"]


def test_m3_small_audio_no_commit():
    s = Scenario()
    s.open()
    s.send(MANUAL_SETTINGS)
    s.send(bytes(500))
    s.up.pump(s.h.fire("commit_debounce"))
    assert "input_audio_buffer.append" in s.up.types()
    assert "input_audio_buffer.commit" not in s.up.types()


def test_m4_server_vad_appends_only():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    for _ in range(14):  # 3.5 s of 250 ms chunks
        s.send(bytes(8000))
    assert s.up.types().count("input_audio_buffer.append") == 14
    assert "input_audio_buffer.commit" not in s.up.types() and "response.create" not in s.up.types()
    assert s.h.armed == {}


def test_m5_continuous_audio_commits_via_max_coalesce():
    s = Scenario(response="none")
    s.open()
    s.send(MANUAL_SETTINGS)
    for _ in range(6):
        s.send(bytes(8000))
    s.up.pump(s.h.fire("commit_coalesce"))
    assert s.up.types().count("input_audio_buffer.commit") == 1


# --- E: errors and odd upstream events -------------------------------------------------------


def test_e1_unknown_client_type():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    out = s.send({"type": "Foo"})
    assert (
        out.error_codes == ["unsupported_client_message"] and "Foo" in out.errors[0]["description"]
    )
    assert s.up.types() == ["session.update"]
    s = Scenario(strict=True)
    s.open()
    s.send(SETTINGS)
    assert s.send({"type": "Foo"}).error_codes == ["disallowed_client_message_type"]


def test_e2_keepalive_never_upstream_and_turn_completes():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    s.send({"type": "KeepAlive"})
    s.send({"type": "InjectUserMessage", "content": "q"})
    assert all("KeepAlive" not in orjson.dumps(e).decode() for e in s.up.received)
    assert conv("assistant", MOCK_TEXT) in s.client


def test_e3_upstream_error_forwarded():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    out = s.up.push({"type": "error", "error": {"code": "rate_limit_exceeded", "message": "m"}})
    assert out.errors == [{"type": "Error", "description": "m", "code": "rate_limit_exceeded"}]
    assert s.up.push({"type": "error", "error": {"message": "m"}}).error_codes == ["unknown"]


def test_e4_active_response_error_swallowed():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    assert (
        s.up.push(
            {"type": "error", "error": {"code": "conversation_already_has_active_response"}}
        ).client
        == []
    )


def test_e5_idle_timeout_after_the_assistant_text():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    s.up.push({"type": "error", "error": {"code": "idle_timeout", "message": "idle"}})
    s.up.push({"type": "response.output_text.done", "text": "T"})
    types = s.client_types
    assert types.index("ConversationText", types.index("AgentStartedSpeaking")) < types.index(
        "Error"
    )
    # the other order: text done first, then the error (no response active) goes straight out
    s.up.push({"type": "error", "error": {"code": "idle_timeout", "message": "idle"}})
    assert s.client_types[-1] == "Error"


def test_e6_upstream_closes_before_session_updated():
    s = Scenario(answer_update=False)
    s.open()
    s.send(SETTINGS)
    out = s.h.upstream_closed(1000, "")
    assert out.error_codes == ["upstream_closed_before_session_ready"]
    assert out.of(CloseClient) == [CloseClient(1000, "upstream closed")]


def test_e7_non_json_upstream_frame():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    assert s.up.push("garbage").error_codes == ["unmapped_upstream_event"]


def test_e8_ignored_upstream_events():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    for event in (
        {"type": "conversation.created"},
        {"type": "rate_limits.updated"},
        {"type": "brand.new"},
    ):
        assert s.up.push(event).client == []


# --- F: speech, transcripts, items ---------------------------------------------------------


def test_f1_vad_events():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    assert s.up.push({"type": "input_audio_buffer.speech_started"}).client == [
        {"type": "UserStartedSpeaking"}
    ]
    assert s.up.push({"type": "input_audio_buffer.speech_stopped"}).client == [
        {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0}
    ]
    out = s.up.push(
        {"type": "input_audio_buffer.speech_stopped", "channel": [0], "last_word_end": 1.5}
    )
    assert out.client == [{"type": "UtteranceEnd", "channel": [0], "last_word_end": 1.5}]


def test_f2_transcripts():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    texts = []
    for delta in ("Hel", "lo ", "world"):
        out = s.up.push(
            {
                "type": "conversation.item.input_audio_transcription.delta",
                "item_id": "i1",
                "delta": delta,
            }
        )
        (msg,) = out.client
        assert msg["is_final"] is False
        texts.append(msg["transcript"])
    assert texts == ["Hel", "Hello ", "Hello world"]
    out = s.up.push(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i1",
            "transcript": "Hello world",
            "start": 1.5,
            "duration": 2.25,
            "channel": 1,
            "channel_index": [1],
        }
    )
    assert out.client == [
        {
            "type": "Transcript",
            "transcript": "Hello world",
            "is_final": True,
            "speech_final": True,
            "channel": 1,
            "channel_index": [1],
            "start": 1.5,
            "duration": 2.25,
            "alternatives": [{"transcript": "Hello world", "confidence": 1, "words": []}],
        }
    ]
    # the accumulator was cleared
    out = s.up.push(
        {"type": "conversation.item.input_audio_transcription.delta", "item_id": "i1", "delta": "x"}
    )
    assert out.client[0]["transcript"] == "x"


def test_f3_function_call_item():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    out = s.up.push(
        {
            "type": "conversation.item.added",
            "item": {
                "id": "a1",
                "role": "assistant",
                "content": [{"type": "function_call", "name": "f", "arguments": "{}"}],
            },
        }
    )
    assert out.client == [
        {"type": "AgentStartedSpeaking"},
        conv("assistant", "Function call: f({})"),
    ]


# --- G: Settings mid-response ----------------------------------------------------------------


def test_g1_settings_again_mid_response():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    s.up.push({"type": "response.output_audio.done"})
    out = s.send(SETTINGS)
    assert out.client == [{"type": "SettingsApplied"}]
    s.up.push({"type": "response.output_text.done", "text": "T"})
    assert s.up.types().count("session.update") == 1


# --- V: voxgate decisions --------------------------------------------------------------------


def test_v1_welcome_before_upstream_open():
    h = Harness()
    out = h.start()
    assert out.client_types == ["Welcome"] and out.client[0]["request_id"] == "req-1"


def test_v2_deepgram_minimal_settings():
    s = Scenario()
    s.open()
    s.send(
        MINIMAL_DEEPGRAM_SETTINGS
    )
    assert s.client_types == ["Welcome", "SettingsApplied"]
    session = s.up.received[0]["session"]
    assert session["model"] == "gpt-realtime" and session["instructions"] == ""
    s.send(bytes(960))
    assert [len(a) for a in appends(s)] == [960]


def test_v3_inject_without_content():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    out = s.send({"type": "InjectUserMessage"})
    assert out.error_codes == ["invalid_client_message"] and out.up == []
    s.send({"type": "InjectUserMessage", "content": "q"})
    assert conv("assistant", MOCK_TEXT) in s.client


def test_v4_malformed_frames_keep_the_session():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    assert s.send("hello").error_codes == ["unparsable_client_message"]
    assert s.send(b"\x00\x01\x02").error_codes == ["invalid_audio_frame"]
    assert not s.h.t.closed


def test_v5_unsupported_input_rate():
    s = Scenario()
    s.open()
    out = s.send(
        settings_message(audio={"input": {"encoding": "linear16", "sample_rate": 11025}})
    )
    assert out.error_codes == ["unsupported_audio_format"]
    assert s.up.received == []


def test_v6_connect_failures():
    h = Harness()
    assert h.start().client_types == ["Welcome"]
    out = h.upstream_failed(auth=True)
    assert out.error_codes == ["upstream_auth_failed"] and out.of(CloseClient)[0].code == 1008
    h = Harness()
    h.start()
    out = h.upstream_failed(auth=False)
    assert out.error_codes == ["upstream_unavailable"] and out.of(CloseClient)[0].code == 1011


def test_v7_upstream_close_codes_reach_the_client():
    for code, expected in ((4001, 4001), (1006, 1011)):
        s = Scenario()
        s.open()
        s.send(SETTINGS)
        out = s.h.upstream_closed(code, "private detail")
        assert out.of(CloseClient) == [CloseClient(expected, "upstream closed")]
        assert out.errors == []


def test_v8_inject_during_a_vad_response():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    s.up.push({"type": "response.created", "response": {"id": "r_vad"}})
    out = s.send({"type": "InjectUserMessage", "content": "q"})
    assert [e["type"] for e in out.up] == ["conversation.item.create"]
    assert "response.create" not in s.up.types()
    s.up.push({"type": "response.done", "response": {"id": "r_vad"}})
    assert s.up.types().count("response.create") == 1
    s.up.push({"type": "response.created", "response": {"id": "r2"}})
    s.up.push(
        {"type": "response.output_audio_transcript.done", "response_id": "r2", "transcript": "A"}
    )
    assert s.client.index(conv("user", "q")) < s.client.index(conv("assistant", "A"))


def test_v9_two_injects_back_to_back():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "a"})
    s.send({"type": "InjectUserMessage", "content": "b"})
    assert s.up.types().count("response.create") == 1  # one active at a time
    s.up.push({"type": "response.done", "response": {}})
    assert s.up.types().count("response.create") == 2
    s.up.push({"type": "response.done", "response": {}})
    assert s.up.types().count("response.create") == 2


def test_v10_parallel_function_calls():
    s = Scenario(function_output="items")
    s.open()
    s.send(SETTINGS)
    for cid in ("c1", "c2"):
        s.up.push(
            {
                "type": "response.function_call_arguments.done",
                "call_id": cid,
                "name": "f",
                "arguments": "{}",
            }
        )
    s.send({"type": "FunctionCallResponse", "id": "c1", "content": "1"})
    assert "response.create" not in s.up.types()
    s.send({"type": "FunctionCallResponse", "id": "c2", "content": "2"})
    outputs = [e for e in s.up.received if e.get("item", {}).get("type") == "function_call_output"]
    assert [e["item"]["call_id"] for e in outputs] == ["c1", "c2"]
    types = s.up.types()
    assert types.count("response.create") == 1
    assert types.index("response.create") > types.index(
        "conversation.item.create", types.index("conversation.item.create") + 1
    )


def test_v11_one_done_pair_and_held_idle_error_on_response_done():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    s.send({"type": "InjectUserMessage", "content": "q"})
    s.up.push({"type": "response.created", "response": {"id": "r1"}})
    s.up.push({"type": "response.output_text.done", "response_id": "r1", "text": "T"})
    s.up.push({"type": "response.done", "response": {"id": "r1"}})
    assert s.client_types.count("AgentDone") == 1
    assert [m for m in s.client if m == conv("assistant", "T")] == [conv("assistant", "T")]
    # audio-mode turn ending with response.done, idle_timeout mid-response
    s.send({"type": "InjectUserMessage", "content": "q2"})
    s.up.push({"type": "response.created", "response": {"id": "r2"}})
    s.up.push(
        {
            "type": "response.output_audio.delta",
            "response_id": "r2",
            "delta": base64.b64encode(bytes(32)).decode(),
        }
    )
    assert (
        s.up.push({"type": "error", "error": {"code": "idle_timeout", "message": "i"}}).client == []
    )
    out = s.up.push({"type": "response.done", "response": {"id": "r2"}})
    assert out.client_types == ["AgentDone", "AgentAudioDone", "Error"]


def test_v12_update_prompt():
    s = Scenario()
    s.open()
    s.send(SETTINGS)
    out = s.send({"type": "UpdatePrompt", "prompt": "Be brief."})
    update = s.up.received[-1]
    assert update["type"] == "session.update"
    assert update["session"]["instructions"] == "Help.\n\nBe brief."
    assert out.client_types == ["PromptUpdated"]


def test_v13_inject_agent_message():
    s = Scenario(response="none")
    s.open()
    s.send(SETTINGS)
    out = s.send({"type": "InjectAgentMessage", "message": "Still there?"})
    assert out.client_types == ["ConversationText", "AgentDone", "AgentAudioDone"]
    assert out.client[0] == conv("assistant", "Still there?")
    assert "response.create" not in s.up.types()
    s.send({"type": "InjectUserMessage", "content": "q"})  # a response becomes active
    assert s.send({"type": "InjectAgentMessage", "message": "x"}).client_types == [
        "InjectionRefused"
    ]
    assert s.send({"type": "UpdateSpeak"}).error_codes == ["unsupported_client_message"]
    assert [m for m in s.client if m == conv("assistant", "Still there?")] == [
        conv("assistant", "Still there?")
    ]
