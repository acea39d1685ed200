"""Random client and upstream input never makes the core raise or emit anything malformed."""

from __future__ import annotations

import base64

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.settings import settings_message
from voxgate.workers.openai.actions import (
    TIMERS,
    ArmTimer,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    Log,
    SendClient,
    SendUpstream,
)
from voxgate.workers.openai.translator import Translator
from voxgate.workers.openai.upstream_map import GA_SERVER_EVENT_TYPES

ACTION_TYPES = (SendClient, SendUpstream, ArmTimer, CancelTimer, CloseClient, CloseUpstream, Log)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_value = st.recursive(
    json_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
small_ids = st.sampled_from(["", "a", "b", "c1", "c2", "r1", "r2", "u1", "item_mock_1", "vg_rc_3"])

CLIENT_TYPES = [
    "Settings",
    "InjectUserMessage",
    "FunctionCallResponse",
    "KeepAlive",
    "UpdatePrompt",
    "InjectAgentMessage",
    "UpdateSpeak",
    "UpdateThink",
    "UpdateListen",
    "CloseStream",
    "Foo",
]


@st.composite
def settings_msg(draw):
    agent = {
        "think": {
            "prompt": draw(st.one_of(st.text(max_size=10), json_value)),
            "provider": {"model": draw(st.sampled_from(["gpt-realtime", "gpt-4o-mini", None]))},
            "functions": draw(
                st.one_of(
                    st.none(),
                    st.lists(st.fixed_dictionaries({"name": st.text(max_size=5)}), max_size=2),
                )
            ),
            "maxOutputTokens": draw(json_value),
        },
        "greeting": draw(st.one_of(st.none(), st.text(max_size=6))),
        "useOpenAIManualAudioCommit": draw(st.booleans()),
        "idleTimeoutMs": draw(json_value),
        "context": {"messages": draw(st.lists(json_value, max_size=2))},
        "sessionAudioOutput": draw(json_value),
    }
    audio = {
        "input": {
            "encoding": draw(st.sampled_from(["linear16", "mulaw", "alaw", "opus", None])),
            "sample_rate": draw(st.sampled_from([8000, 16000, 24000, 44100, 11025, None, "x"])),
        },
        "output": {
            "encoding": draw(st.sampled_from(["linear16", "mulaw", None])),
            "sample_rate": draw(st.sampled_from([16000, 24000, 8000, None])),
        },
    }
    return settings_message(agent, audio)


@st.composite
def client_json(draw):
    kind = draw(st.sampled_from(CLIENT_TYPES))
    if kind == "Settings":
        msg = draw(settings_msg())
    else:
        msg = {"type": kind}
        for key in ("content", "id", "result", "error", "prompt", "message"):
            if draw(st.booleans()):
                msg[key] = draw(st.one_of(st.text(max_size=8), small_ids, json_value))
        if draw(st.booleans()):
            msg["behavior"] = draw(st.sampled_from(["default", "queue", "interrupt", "x", None]))
        if draw(st.booleans()):
            msg["think"] = draw(st.one_of(json_value, st.fixed_dictionaries(
                {"prompt": st.text(max_size=4), "provider": json_value, "functions": json_value})))
        if draw(st.booleans()):
            msg["listen"] = {"provider": draw(st.one_of(json_value, st.fixed_dictionaries(
                {"eot_threshold": json_value, "eot_timeout_ms": json_value, "keyterms": json_value,
                 "language": json_value})))}
    return orjson.dumps(msg).decode()


client_frame = st.one_of(
    client_json(),
    st.text(max_size=30),
    st.binary(max_size=600),
    st.builds(lambda v: orjson.dumps(v).decode(), json_value),
)


@st.composite
def upstream_event(draw):
    kind = draw(
        st.sampled_from(
            [*GA_SERVER_EVENT_TYPES, "brand.new", "response.function_call_arguments.delta"]
        )
    )
    event: dict = {"type": kind}
    if draw(st.booleans()):
        event["response_id"] = draw(small_ids)
    if draw(st.booleans()):
        event["item_id"] = draw(small_ids)
    if draw(st.booleans()):
        event["item"] = {
            "id": draw(small_ids),
            "type": draw(
                st.sampled_from(["message", "function_call_output", "function_call", None])
            ),
            "role": draw(st.sampled_from(["user", "assistant", "system", None])),
            "content": draw(
                st.one_of(
                    json_value,
                    st.lists(
                        st.fixed_dictionaries(
                            {
                                "type": st.sampled_from(
                                    ["input_text", "output_text", "output_audio", "function_call"]
                                ),
                                "text": st.text(max_size=6),
                            }
                        ),
                        max_size=2,
                    ),
                )
            ),
        }
    if draw(st.booleans()):
        event["response"] = draw(
            st.one_of(
                json_value,
                st.fixed_dictionaries(
                    {
                        "id": small_ids,
                        "output": json_value,
                        "status": st.sampled_from(["completed", "cancelled", None]),
                    }
                ),
            )
        )
    if draw(st.booleans()):
        event["delta"] = draw(
            st.one_of(
                st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
                st.text(max_size=8),
                json_value,
            )
        )
    if draw(st.booleans()):
        event["error"] = draw(
            st.one_of(
                json_value,
                st.fixed_dictionaries(
                    {
                        "code": st.sampled_from(
                            ["idle_timeout", "conversation_already_has_active_response", "x", None]
                        ),
                        "message": json_value,
                        "event_id": st.one_of(small_ids, json_value),
                    }
                ),
            )
        )
    for key in (
        "text",
        "transcript",
        "call_id",
        "name",
        "arguments",
        "channel",
        "channel_index",
        "start",
        "part",
        "alternatives",
    ):
        if draw(st.integers(0, 4)) == 0:
            event[key] = draw(json_value)
    return orjson.dumps(event).decode()


upstream_frame = st.one_of(upstream_event(), st.text(max_size=20), st.binary(max_size=20))

operation = st.one_of(
    st.tuples(st.just("client"), client_frame),
    st.tuples(st.just("client"), client_frame),
    st.tuples(st.just("upstream"), upstream_frame),
    st.tuples(st.just("upstream"), upstream_frame),
    st.tuples(st.just("upstream"), upstream_frame),
    st.tuples(st.just("open"), st.none()),
    st.tuples(st.just("timer"), st.sampled_from([*TIMERS, "bogus"])),
    st.tuples(st.just("client_closed"), st.one_of(st.none(), st.integers(0, 6000))),
    st.tuples(st.just("upstream_closed"), st.one_of(st.none(), st.integers(0, 6000))),
    st.tuples(
        st.just("limit"),
        st.sampled_from(["message_too_large", "idle_timeout", "shutting_down", "nope"]),
    ),
    st.tuples(st.just("failed"), st.booleans()),
)


def _check_send_client(action: SendClient, state: dict) -> None:
    assert not state["client_closed"], "frame after the client close"
    if isinstance(action.data, str):
        msg = orjson.loads(action.data)
        assert isinstance(msg, dict) and isinstance(msg["type"], str)
    else:
        assert isinstance(action.data, bytes) and action.data


def _check_send_upstream(action: SendUpstream, state: dict) -> None:
    assert not state["upstream_closed"], "frame after the upstream close"
    assert isinstance(orjson.loads(action.data), dict)


def _check_close(action: CloseClient | CloseUpstream, state: dict, leg: str) -> None:
    """At most one close per leg, with a code and reason that fit a close frame."""
    assert not state[leg]
    state[leg] = True
    assert 1000 <= action.code <= 4999 and len(action.reason.encode()) <= 123


def _check_timer(action: ArmTimer, state: dict) -> None:
    assert action.name in TIMERS and action.seconds > 0


def _check_log(action: Log, state: dict) -> None:
    assert action.level in ("debug", "info", "warning", "error")
    assert isinstance(action.fields, dict)


CHECKS = {
    SendClient: _check_send_client,
    SendUpstream: _check_send_upstream,
    CloseClient: lambda action, state: _check_close(action, state, "client_closed"),
    CloseUpstream: lambda action, state: _check_close(action, state, "upstream_closed"),
    ArmTimer: _check_timer,
    Log: _check_log,
}  # what each action must satisfy (CancelTimer: only its type)


def check(actions: list, state: dict) -> None:
    assert isinstance(actions, list)
    for action in actions:
        assert isinstance(action, ACTION_TYPES), action
        for kind, checker in CHECKS.items():
            if isinstance(action, kind):
                checker(action, state)
                break


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(operation, max_size=40), dialect=st.sampled_from(["reference", "deepgram"]))
def test_random_input_never_raises(ops, dialect):
    t = Translator(request_id="fuzz", deferred_create_timeout=0.5, dialect=dialect)
    state = {"client_closed": False, "upstream_closed": False}
    check(t.start(), state)
    for op, arg in ops:
        was_closed = t.closed
        if op == "client":
            actions = t.client_message(arg)
        elif op == "upstream":
            actions = t.upstream_message(arg)
        elif op == "open":
            actions = t.upstream_open()
        elif op == "timer":
            actions = t.timer_expired(arg)
        elif op == "client_closed":
            actions = t.client_closed(arg, "r")
        elif op == "upstream_closed":
            actions = t.upstream_closed(arg, "r")
        elif op == "limit":
            actions = t.gateway_limit(arg)
        else:
            actions = t.upstream_failed(auth=arg)
        if was_closed:
            assert actions == []
        check(actions, state)
        assert t.pending_bytes >= 0
    assert t.internal_errors == 0


@settings(max_examples=60, deadline=None)
@given(
    frames=st.lists(st.one_of(client_frame, upstream_frame), max_size=30),
    dialect=st.sampled_from(["reference", "deepgram"]),
)
def test_a_ready_session_survives_any_frames(frames, dialect):
    t = Translator(request_id="fuzz", dialect=dialect)
    state = {"client_closed": False, "upstream_closed": False}
    check(t.start() + t.upstream_open(), state)
    check(t.client_message('{"type":"Settings"}'), state)
    check(t.upstream_message('{"type":"session.updated"}'), state)
    for i, frame in enumerate(frames):
        check(t.client_message(frame) if i % 2 else t.upstream_message(frame), state)
    assert t.internal_errors == 0 and not t.closed


def test_a_bug_in_a_handler_becomes_an_error_not_an_exception(monkeypatch):
    def broken(self, event):
        raise KeyError("boom")

    monkeypatch.setattr(Translator, "_up_speech_started", broken)
    t = Translator(request_id="x")
    t.start()
    t.upstream_open()
    actions = t.upstream_message('{"type":"input_audio_buffer.speech_started"}')
    assert t.internal_errors == 1
    assert [orjson.loads(a.data)["code"] for a in actions if isinstance(a, SendClient)] == [
        "internal_error"
    ]
    assert any(
        isinstance(a, Log) and a.level == "error" and "boom" not in str(a.fields) for a in actions
    )
    assert t.upstream_message('{"type":"input_audio_buffer.speech_stopped"}')  # the session goes on
