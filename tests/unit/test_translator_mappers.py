"""Pure mappers of the translator (openai-translator §7.1 cases 1-90, §7.2 client protocol and
event coverage). Numbers in test names refer to the §7.1 rows."""

from __future__ import annotations

import math

import orjson
import pytest

from tests.support.settings import settings_message
from tests.support.translator_harness import Harness
from voxgate.workers.openai.settings_map import (
    DEFAULT_TURN_DETECTION,
    TOOL_RESULTS_SENTENCE,
    SessionPlan,
    SettingsRejected,
    function_call_output_event,
    map_settings,
    user_message_event,
)
from voxgate.workers.openai.translator import STRICT_DESCRIPTION, Translator
from voxgate.workers.openai.upstream_map import (
    GA_SERVER_EVENT_TYPES,
    assistant_text_from_item,
    assistant_text_from_response,
    function_call_request,
    output_text_from_done,
    redact,
    transcript_final,
    transcript_interim,
    upstream_error,
    utterance_end,
)


def plan(settings: dict) -> SessionPlan:
    result = map_settings(settings_message(**settings), default_model="gpt-realtime")
    assert isinstance(result, SessionPlan), result
    return result


def session(settings: dict) -> dict:
    return plan(settings).session


def think(**fields) -> dict:
    return {"agent": {"think": fields}}


DEFAULT_AUDIO_INPUT = {
    "format": {"type": "audio/pcm", "rate": 24000},
    "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": ""},
    "turn_detection": {**DEFAULT_TURN_DETECTION, "idle_timeout_ms": None},
}


# --- Settings -> session.update ----------------------------------------------------------


def test_01_type_instructions_model():
    s = session(think(prompt="Be nice.", provider={"model": "gpt-realtime-mini"}))
    assert s["type"] == "realtime"
    assert s["instructions"] == "Be nice."
    assert s["model"] == "gpt-realtime-mini"


@pytest.mark.parametrize("provider", [{"temperature": 0.7}, {}])
def test_02_no_temperature(provider):
    s = session(think(prompt="x", provider=provider))
    assert "temperature" not in s


def test_03_minimal_settings_keys():
    assert set(session(think(prompt="x"))) == {"audio", "instructions", "model", "type"}


def test_04_full_optional_settings():
    s = session(
        think(
            prompt="x",
            provider={"model": "gpt-realtime", "temperature": 1},
            functions=[{"name": "f", "description": "d", "parameters": {"type": "object"}}],
            toolChoice="auto",
            outputModalities=["text"],
            maxOutputTokens=100,
            managedPrompt={"id": "pmpt_1"},
        )
    )
    assert {"max_output_tokens", "output_modalities", "prompt", "tool_choice", "tools"} <= set(s)
    assert "temperature" not in s


def test_05_no_agent_defaults():
    s = session({})
    assert s["instructions"] == ""
    assert s["model"] == "gpt-realtime"
    assert "voice" not in s and "output" not in s["audio"]


def test_06_context_messages_appended():
    s = session(
        {
            "agent": {
                "think": {"prompt": "Base."},
                "context": {
                    "messages": [
                        {"role": "user", "content": " Hello "},
                        {"role": "assistant", "content": "Hi there!"},
                        {"role": "system", "content": "odd"},
                    ]
                },
            }
        }
    )
    assert s["instructions"] == (
        "Base.\n\nPrevious conversation:\nuser: Hello\nassistant: Hi there!\nuser: odd"
    )


def test_06b_context_with_empty_base_starts_with_header():
    s = session({"agent": {"context": {"messages": [{"role": "user", "content": "a"}]}}})
    assert s["instructions"] == "Previous conversation:\nuser: a"


def test_07_one_function():
    s = session(
        think(functions=[{"name": "f", "description": "d", "parameters": {"p": 1}, "endpoint": {}}])
    )
    assert s["tools"] == [
        {"type": "function", "name": "f", "description": "d", "parameters": {"p": 1}}
    ]


def test_07b_parameters_default_and_description_omitted():
    s = session(think(functions=[{"name": "f"}]))
    assert s["tools"] == [{"type": "function", "name": "f", "parameters": {}}]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("required", "required"),
        ({"type": "function", "name": "f"}, {"type": "function", "name": "f"}),
    ],
)
def test_08_09_tool_choice_verbatim(choice, expected):
    assert session(think(toolChoice=choice))["tool_choice"] == expected


def test_10_tool_choice_absent():
    assert "tool_choice" not in session(think(prompt="x"))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (["text"], ["text"]),
        (["audio", "text"], ["audio", "text"]),
        (["text", "video", "audio"], ["text", "audio"]),
        (["video"], None),
        ([], None),
        (None, None),
    ],
)
def test_11_15_output_modalities(given, expected):
    s = session(think(outputModalities=given) if given is not None else think())
    assert s.get("output_modalities") == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (256, 256),
        (256.0, 256),
        (None, None),
        (0, None),
        (-1, None),
        (1.5, None),
        (math.nan, None),
        (math.inf, None),
        (2**53, None),
        (True, None),
        ("256", None),
    ],
)
def test_16_19_max_output_tokens(given, expected):
    s = session(think(maxOutputTokens=given) if given is not None else think())
    assert s.get("max_output_tokens") == expected


def test_17_max_output_tokens_absent_after_json_round_trip():
    settings = orjson.loads(orjson.dumps({"agent": {"think": {"prompt": "x"}}}))
    assert "max_output_tokens" not in session(settings)


def test_20_managed_prompt_all_fields():
    p = {"id": "pmpt_1", "version": "2", "variables": {"a": "b"}}
    assert session(think(managedPrompt=p))["prompt"] == p


def test_21_managed_prompt_trimmed():
    s = session(think(managedPrompt={"id": " pmpt_1 ", "version": "  "}))
    assert s["prompt"] == {"id": "pmpt_1"}
    s = session(think(managedPrompt={"id": "p", "version": " 3 "}))
    assert s["prompt"] == {"id": "p", "version": "3"}


@pytest.mark.parametrize("p", [{}, {"id": ""}, {"id": "  "}, {"version": "1"}])
def test_22_managed_prompt_without_id(p):
    assert "prompt" not in session(think(managedPrompt=p))


def test_23_managed_prompt_array_variables_ignored():
    assert session(think(managedPrompt={"id": "p", "variables": [1]}))["prompt"] == {"id": "p"}


def test_24_session_audio_output_and_default_input():
    s = session({"agent": {"sessionAudioOutput": {"voice": "marin", "speed": 1}}})
    assert s["audio"]["output"] == {"voice": "marin", "speed": 1}
    assert s["audio"]["input"] == DEFAULT_AUDIO_INPUT


def test_25_default_turn_detection_exact():
    p = plan({"agent": {"idleTimeoutMs": 10000}})
    assert p.session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": 10000,
        "create_response": True,
        "interrupt_response": True,
    }
    assert p.server_vad is True
    assert "turn_detection" not in p.session


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (-1, None),
        (1000, 5000),
        (0, 5000),
        (120000, 30000),
        (12345.5, 12346),
        (-5, None),
        ("9000", None),
        (None, None),
    ],
)
def test_26_27_idle_timeout_clamp(given, expected):
    agent = {"idleTimeoutMs": given} if given is not None else {}
    td = session({"agent": agent})["audio"]["input"]["turn_detection"]
    assert td["idle_timeout_ms"] == expected


def test_28_manual_commit_flag():
    p = plan({"agent": {"useOpenAIManualAudioCommit": True, "idleTimeoutMs": 9000}})
    assert p.session["audio"]["input"]["turn_detection"] is None
    assert p.server_vad is False


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            {"format": {"type": "audio/pcm", "rate": 24000}},
            {"format": {"type": "audio/pcm", "rate": 24000}},
        ),
        ({"format": {"type": "audio/pcm"}}, {"format": {"type": "audio/pcm"}}),
        ({"format": {"type": "audio/pcm", "rate": 16000}}, {"format": {"type": "audio/pcm"}}),
        ({"format": {"type": " audio/pcmu "}}, {"format": {"type": "audio/pcmu"}}),
        ({"speed": math.nan}, None),
        ({"speed": 2.0}, None),
        ({"format": {"type": "audio/wav"}, "voice": "alloy"}, {"voice": "alloy"}),
        ({"voice": {"id": " v1 "}}, {"voice": {"id": "v1"}}),
        ({"voice": "  "}, None),
    ],
)
def test_29_32_session_audio_output(given, expected):
    assert session({"agent": {"sessionAudioOutput": given}})["audio"].get("output") == expected


def test_29b_absent_session_audio_output():
    assert "output" not in session({})["audio"]


def test_33_two_functions_in_order():
    fns = [{"name": "a", "parameters": {"x": 1}}, {"name": "b", "description": "B"}]
    tools = session(think(functions=fns))["tools"]
    assert [t["name"] for t in tools] == ["a", "b"]
    assert tools[0]["parameters"] == {"x": 1}


def test_34_tool_results_sentence():
    assert session(think(prompt="P", functions=[{"name": "a"}]))["instructions"] == (
        "P\n\n" + TOOL_RESULTS_SENTENCE
    )
    assert session(think(functions=[{"name": "a"}]))["instructions"] == TOOL_RESULTS_SENTENCE
    assert session(think(prompt="P", functions=[]))["instructions"] == "P"


def test_language_from_agent_language_d10():
    assert (
        session({"agent": {"language": "de"}})["audio"]["input"]["transcription"]["language"]
        == "de"
    )
    assert (
        session({"agent": {"language": ""}})["audio"]["input"]["transcription"]["language"] == "en"
    )


# --- client messages -> items --------------------------------------------------------------


def test_35_36_inject_user_message_item():
    assert user_message_event("hi") == {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
        },
    }
    assert user_message_event("")["item"]["content"][0]["text"] == ""


@pytest.mark.parametrize(
    ("message", "output"),
    [
        ({"id": "c1", "content": "ok"}, "ok"),
        ({"id": "c1", "content": ""}, ""),
        ({"id": "c1", "result": {"a": 1}}, '{"a":1}'),
        ({"id": "c1", "result": "plain"}, "plain"),
        ({"id": "c1", "error": "x"}, '{"error":"x"}'),
        ({"id": "c1"}, ""),
        ({"id": "c1", "content": "c", "result": "r"}, "c"),
        ({"id": "c1", "name": "f", "content": "n"}, "n"),
    ],
)
def test_54_61_function_call_response(message, output):
    event = function_call_output_event(message)
    assert event == {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": "c1", "output": output},
    }


def test_function_call_response_without_id_omits_call_id():
    assert "call_id" not in function_call_output_event({"content": "x"})["item"]


# --- upstream -> client ---------------------------------------------------------------------


def test_37_session_updated_to_settings_applied():
    h = Harness()
    h.open()
    h.client(settings_message())
    assert h.up({"type": "session.updated"}).client == [{"type": "SettingsApplied"}]


def test_38_transcript_done_to_conversation_text():
    h = Harness()
    h.ready()
    out = h.up({"type": "response.output_audio_transcript.done", "transcript": "Hi there"})
    assert out.client[-1] == {
        "type": "ConversationText",
        "role": "assistant",
        "content": "Hi there",
    }


def test_39_blank_transcript_sends_no_text():
    h = Harness()
    h.ready()
    assert h.up({"type": "response.output_audio_transcript.done"}).client == []


def test_40_42_function_call_request():
    assert function_call_request({"call_id": "c1", "name": "f", "arguments": '{"a":1}'}) == {
        "type": "FunctionCallRequest",
        "functions": [{"id": "c1", "name": "f", "arguments": '{"a":1}', "client_side": True}],
    }
    assert function_call_request({})["functions"][0] == {
        "id": "",
        "name": "function",
        "arguments": "",
        "client_side": True,
    }


def test_43_44_function_call_part_text():
    item = {
        "role": "assistant",
        "content": [{"type": "function_call", "name": "f", "arguments": " {} "}],
    }
    assert assistant_text_from_item(item) == "Function call: f({})"
    item = {"role": "assistant", "content": [{"type": "function_call", "name": "f"}]}
    assert assistant_text_from_item(item) == "Function call: f()"


def test_45_46_error_mapping():
    assert upstream_error({"error": {"message": "m", "code": "c"}}) == {
        "type": "Error",
        "description": "m",
        "code": "c",
    }
    assert upstream_error({}) == {
        "type": "Error",
        "description": "Unknown error",
        "code": "unknown",
    }


@pytest.mark.parametrize("code", ["idle_timeout", "session_max_duration", "rate_limit_exceeded"])
def test_47_49_error_codes_pass_through(code):
    assert upstream_error({"error": {"code": code, "message": "m"}})["code"] == code


@pytest.mark.parametrize(
    "message",
    ["generic", "Your session hit the maximum duration of 60 minutes.", "idle timeout reached"],
)
def test_50_53_no_code_is_unknown_never_from_text(message):
    assert upstream_error({"error": {"message": message}})["code"] == "unknown"
    assert upstream_error({"error": {"message": message, "code": "x"}})["code"] == "x"


def test_error_description_never_carries_a_key():
    err = upstream_error(
        {"error": {"message": "Incorrect API key provided: sk-proj-abcdefghijkl1234"}}
    )
    assert "abcdefghijkl" not in err["description"]
    assert redact("token ek_1234567890abc") == "token ek_***"


def test_65_66_greeting_to_conversation_text():
    h = Harness()
    out = h.ready(settings_message({"greeting": " Hello! "}))
    assert {"type": "ConversationText", "role": "assistant", "content": "Hello!"} in out.client


@pytest.mark.parametrize(
    "content",
    [
        [{"type": "output_text", "text": "Hi"}],
        {"type": "output_text", "text": "Hi"},
        [{"output_text": {"text": "Hi"}}],
        [{"type": "output_audio", "transcript": "Hi"}],
        [{"input_text": {"text": "Hi"}}],
        [{"content": " Hi "}],
    ],
)
def test_67_69_74_assistant_item_text(content):
    assert assistant_text_from_item({"role": "assistant", "content": content}) == "Hi"


def test_70_71_no_text():
    assert assistant_text_from_item({"role": "user", "content": [{"text": "Hi"}]}) is None
    assert assistant_text_from_item({"role": "assistant", "content": []}) is None
    assert assistant_text_from_item({"role": "assistant"}) is None
    assert assistant_text_from_item({"role": "assistant", "content": [{"text": "  "}]}) is None


@pytest.mark.parametrize("event", ["conversation.item.created", "conversation.item.done"])
def test_72_73_item_events_to_conversation_text(event):
    h = Harness()
    h.ready()
    out = h.up(
        {
            "type": event,
            "item": {"id": "a1", "role": "assistant", "content": [{"type": "text", "text": "Yo"}]},
        }
    )
    assert out.client[-1] == {"type": "ConversationText", "role": "assistant", "content": "Yo"}


def test_75_77_output_text_done_text():
    assert output_text_from_done({"text": "A"}) == "A"
    assert output_text_from_done({"part": {"text": "B"}}) == "B"
    assert output_text_from_done({"text": "  "}) is None
    assert output_text_from_done({}) is None


def test_78_80_output_text_done_prefers_text_then_deltas():
    h = Harness()
    h.ready()
    h.up({"type": "response.output_text.delta", "delta": "del"})
    out = h.up({"type": "response.output_text.done", "text": "full"})
    assert [m["content"] for m in out.client if m["type"] == "ConversationText"] == ["full"]

    h = Harness()
    h.ready()
    h.up({"type": "response.output_text.delta", "delta": "de"})
    h.up({"type": "response.output_text.delta", "delta": {"text": "lta"}})
    out = h.up({"type": "response.output_text.done"})
    assert [m["content"] for m in out.client if m["type"] == "ConversationText"] == ["delta"]

    h = Harness()
    h.ready()
    out = h.up({"type": "response.output_text.done"})
    assert "ConversationText" not in out.client_types


def test_81_83_response_done_output_text():
    response = {
        "output": [
            {
                "id": "i1",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "one"}, {"text": "two"}],
            },
            {"id": "f1", "type": "function_call", "name": "f"},
        ]
    }
    assert assistant_text_from_response(response) == ("one\ntwo", ["i1"])
    assert assistant_text_from_response({"output": [{"role": "user", "content": "x"}]}) == (
        None,
        [],
    )
    assert assistant_text_from_response(None) == (None, [])


def test_84_85_binary_to_append():
    h = Harness()
    h.ready(
        settings_message(audio={"input": {"encoding": "linear16", "sample_rate": 24000}})
    )
    out = h.client(b"\x01\x02\x03\x04")
    assert out.up == [{"type": "input_audio_buffer.append", "audio": "AQIDBA=="}]
    assert h.client(b"").up == []


def test_86_87_tolerant_mappers():
    assert isinstance(map_settings(settings_message(), default_model="gpt-realtime"), SessionPlan)
    assert isinstance(
        map_settings(settings_message(5, "x"), default_model="gpt-realtime"),
        SessionPlan,
    )
    assert user_message_event("")["item"]["content"][0]["text"] == ""


@pytest.mark.parametrize(
    ("events", "allowed"),
    [
        ([], False),
        (["session.updated"], False),
        (["response.created"], False),
        (["conversation.item.added"], True),
        (["conversation.item.done"], True),
    ],
)
def test_88_90_no_create_before_item_ack(events, allowed):
    h = Harness()
    h.ready()
    h.client({"type": "InjectUserMessage", "content": "q"})
    for kind in events:
        if kind.startswith("conversation.item"):
            h.up(
                {
                    "type": kind,
                    "item": {
                        "id": "u1",
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "q"}],
                    },
                }
            )
        else:
            h.up({"type": kind})
    assert ("response.create" in h.all.up_types) is allowed


def test_utterance_end_mapping():
    assert utterance_end({}) == {"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 0}
    assert utterance_end({"channel": [0], "last_word_end": 1.5}) == {
        "type": "UtteranceEnd",
        "channel": [0],
        "last_word_end": 1.5,
    }
    assert utterance_end({"channel": [], "last_word_end": True}) == {
        "type": "UtteranceEnd",
        "channel": [0, 1],
        "last_word_end": 0,
    }


def test_transcript_mappers():
    interim = transcript_interim({"item_id": "i"}, "Hel")
    assert interim == {
        "type": "Transcript",
        "transcript": "Hel",
        "is_final": False,
        "speech_final": False,
        "channel": 0,
        "channel_index": [0],
        "start": 0,
        "duration": 0,
        "alternatives": [{"transcript": "Hel", "confidence": 1, "words": []}],
    }
    final = transcript_final(
        {"transcript": "Hello", "start": 1.5, "duration": 2.25, "channel": 1, "channel_index": [1]}
    )
    assert final["is_final"] is final["speech_final"] is True
    assert (final["channel"], final["channel_index"], final["start"], final["duration"]) == (
        1,
        [1],
        1.5,
        2.25,
    )
    assert final["alternatives"] == [{"transcript": "Hello", "confidence": 1, "words": []}]
    final = transcript_final(
        {"transcript": "x", "channel": 2, "alternatives": [{"confidence": 0.5}, 7]}
    )
    assert final["channel_index"] == [2]
    assert final["alternatives"] == [{"transcript": "x", "confidence": 0.5, "words": []}]
    assert transcript_final({"channel_index": [3]})["channel"] == 3


# --- audio formats in Settings (D4, D5) ----------------------------------------------------


@pytest.mark.parametrize(
    ("audio", "input_type"),
    [
        ({}, {"type": "audio/pcm", "rate": 24000}),
        (
            {"input": {"encoding": "linear16", "sample_rate": 48000}},
            {"type": "audio/pcm", "rate": 24000},
        ),
        ({"input": {"encoding": "mulaw", "sample_rate": 8000}}, {"type": "audio/pcmu"}),
        ({"input": {"encoding": "alaw"}}, {"type": "audio/pcma"}),
    ],
)
def test_input_formats(audio, input_type):
    assert session({"audio": audio})["audio"]["input"]["format"] == input_type


@pytest.mark.parametrize(
    "audio",
    [
        {"input": {"encoding": "linear16", "sample_rate": 11025}},
        {"input": {"encoding": "opus", "sample_rate": 48000}},
        {"input": {"encoding": "mulaw", "sample_rate": 16000}},
        {"output": {"encoding": "linear16", "sample_rate": 22050}},
        {"output": {"encoding": "mp3"}},
        {"input": {"encoding": 5}},
    ],
)
def test_unsupported_formats(audio):
    result = map_settings(settings_message(audio=audio), default_model="gpt-realtime")
    assert isinstance(result, SettingsRejected)
    assert result.code == "unsupported_audio_format"


def test_g711_output_sets_upstream_format_and_session_format_wins():
    s = session(
        {
            "audio": {"output": {"encoding": "mulaw", "sample_rate": 8000}},
            "agent": {"sessionAudioOutput": {"voice": "v"}},
        }
    )
    assert s["audio"]["output"] == {"format": {"type": "audio/pcmu"}, "voice": "v"}
    p = plan(
        {
            "audio": {"output": {"encoding": "opus"}},
            "agent": {"sessionAudioOutput": {"format": {"type": "audio/pcma"}}},
        }
    )
    assert p.output_passthrough and p.session["audio"]["output"] == {
        "format": {"type": "audio/pcma"}
    }


def test_manual_mode_needs_linear16_input():
    result = map_settings(
        {"agent": {"useOpenAIManualAudioCommit": True}, "audio": {"input": {"encoding": "mulaw"}}},
        default_model="gpt-realtime",
    )
    assert isinstance(result, SettingsRejected)


def test_d8_model_substitution():
    p = plan(think(provider={"type": "open_ai", "model": "gpt-4o-mini"}))
    assert p.session["model"] == "gpt-realtime" and p.requested_model == "gpt-4o-mini"
    p = map_settings(
        {"agent": {"think": {"provider": {"model": "x"}}}}, default_model="gpt-realtime-2025"
    )
    assert p.session["model"] == "gpt-realtime-2025"


# --- client protocol (strict mode) and event coverage ---------------------------------------


def test_strict_description_exact():
    assert STRICT_DESCRIPTION.format("Foo") == (
        'Disallowed client message type "Foo" for OpenAI proxy (Issue #533). Allowed: Settings, '
        "InjectUserMessage, FunctionCallResponse. KeepAlive is ignored. Enable "
        "OPENAI_PROXY_CLIENT_JSON_PASSTHROUGH=1 only for legacy debugging."
    )


def test_ga_event_list_is_the_canonical_38():
    assert len(GA_SERVER_EVENT_TYPES) == 38 == len(set(GA_SERVER_EVENT_TYPES))
    for name in (
        "response.output_audio.delta",
        "response.output_text.done",
        "response.output_audio_transcript.done",
        "conversation.item.added",
        "conversation.item.done",
    ):
        assert name in GA_SERVER_EVENT_TYPES


def test_handler_table_covers_every_ga_server_event():
    handlers = Translator(request_id="x").upstream_handlers
    missing = set(GA_SERVER_EVENT_TYPES) - set(handlers)
    assert not missing
    for handler in handlers.values():
        assert callable(handler)


@pytest.mark.parametrize("event_type", GA_SERVER_EVENT_TYPES)
def test_every_ga_event_is_handled_without_an_error_or_raw_forward(event_type):
    h = Harness()
    h.ready()
    out = h.up({"type": event_type})
    assert not [log for log in out.logs if log.message == "unmapped upstream event"]
    for frame in out.client:
        assert isinstance(frame, dict) and frame["type"][0].isupper()  # never raw upstream JSON
