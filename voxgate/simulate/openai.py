"""Simulated OpenAI Realtime (GA) WebSocket server.

Used by voxgate's tests, benchmarks and ``voxgate demo`` in place of
``wss://api.openai.com/v1/realtime``, so the gateway can be exercised with no key and no
network. It speaks the GA event shapes (``session.*``, ``conversation.item.*``,
``response.*``, ``input_audio_buffer.*``, ``rate_limits.updated``, ``error``) closely
enough for the official ``openai`` SDK to run a session against it, with deterministic
content so tests can assert it:

- replies say ``You said: <last user text>``; after a ``function_call_output`` they say
  ``The function returned: <output>``; audio replies carry a 300 ms PCM16 24 kHz tone;
- a user text that names a configured tool (``get_time`` matches "get time" or "GET_TIME")
  yields a ``function_call`` item (arguments ``{}``, or every required string parameter
  set to the user text) instead of a message;
- server VAD is energy based: a 20 ms window whose RMS exceeds ``threshold * 0.05``
  (full scale 1.0) is speech; ``silence_duration_ms`` of quiet windows ends the turn; the
  committed item's transcript is ``audio of <speech seconds, 1 decimal> seconds``.

Deliberate differences from the real service: a missing or wrong API key is refused with
HTTP 401 before the upgrade (the real service answers 101, then an ``error`` and close
3000); only ``audio/pcm`` input goes through VAD; ``?sim_fault=`` picks a misbehaviour per
connection (``voxgate.simulate.common`` faults plus ``close_after_update:<code>`` and
``drop_after_update``, which act right after ``session.updated`` is sent).

``RealtimeSession`` holds the protocol logic with no sockets and no clocks (sans-IO, driven
by ``voxgate.simulate.common.run_session``); ``OpenAISimulator`` is the network shell.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import orjson
import trio

from voxgate.simulate.common import (
    FAULT_KINDS,
    Close,
    ConnectionRecord,
    Drop,
    Fault,
    HttpExchange,
    SimConnection,
    rms_pcm16,
    run_session,
    serve_websocket,
    tone_pcm16,
)
from voxgate.workers.openai.turn_detection import SERVER_VAD
from voxgate.workers.openai.turn_detection import with_defaults as turn_detection_with_defaults

__all__ = ["OPENAI_FAULT_KINDS", "CallRecord", "OpenAISimulator", "RealtimeSession", "run", "sdp_answer"]

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. (voxgate simulator)"

OPENAI_FAULT_KINDS: dict[str, bool] = {
    **FAULT_KINDS,
    "close_after_update": True,
    "drop_after_update": False,
}

GARBAGE_FRAME = "this is not JSON {"
REPLY_AUDIO_MS = 300
REPLY_CHUNK_MS = 100
VAD_WINDOW_MS = 20
VAD_RMS_PER_THRESHOLD = 0.05
MIN_COMMIT_MS = 100

CLIENT_EVENT_TYPES = (
    "session.update",
    "session.close",
    "input_audio_buffer.append",
    "session.input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
)

# Keys the GA session accepts; anything else is "unknown_parameter" like the real API.
SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "include",
        "tracing",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "parallel_tool_calls",
        "reasoning",
    }
)
AUDIO_KEYS = frozenset({"input", "output"})
AUDIO_INPUT_KEYS = frozenset({"format", "transcription", "noise_reduction", "turn_detection"})
AUDIO_OUTPUT_KEYS = frozenset({"format", "voice", "speed"})
FORMAT_KEYS = frozenset({"type", "rate"})
FORMAT_TYPES = ("audio/pcm", "audio/pcmu", "audio/pcma")
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt", "delay", "keywords", "languages"})
SERVER_VAD_KEYS = frozenset(
    {
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "idle_timeout_ms",
        "create_response",
        "interrupt_response",
    }
)
SEMANTIC_VAD_KEYS = frozenset({"type", "eagerness", "create_response", "interrupt_response"})
TOOL_KEYS = frozenset({"type", "name", "description", "parameters"})
RESPONSE_KEYS = frozenset(
    {
        "output_modalities",
        "instructions",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "conversation",
        "metadata",
        "prompt",
        "input",
    }
)


class _Invalid(Exception):
    """A client event the real API would answer with an ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def default_session(model: str, *, expires_at: int) -> dict[str, Any]:
    """The session object a fresh GA realtime connection reports in ``session.created``."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": _new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": expires_at,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": turn_detection_with_defaults({"type": "server_vad"}),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": None,
    }


# ---------------------------------------------------------------------------------------
# session.update validation


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _Invalid(
                "unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}"
            )


def _expect_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid("invalid_type", f"Invalid type for '{path}': expected an object.", path)
    return value


def _expect_number(value: Any, path: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("invalid_type", f"Invalid type for '{path}': expected a number.", path)
    if value < lo:
        raise _Invalid(
            "decimal_below_min_value", f"Invalid '{path}': expected a value >= {lo}.", path
        )
    if value > hi:
        raise _Invalid(
            "decimal_above_max_value", f"Invalid '{path}': expected a value <= {hi}.", path
        )


def _invalid_value(value: Any, path: str, allowed: tuple[str, ...]) -> _Invalid:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    if len(allowed) == 2:
        listed = f"'{allowed[0]}' and '{allowed[1]}'"
    return _Invalid(
        "invalid_value", f"Invalid value: '{value}'. Supported values are: {listed}.", path
    )


def _validate_format(fmt: Any, path: str) -> dict[str, Any]:
    fmt = _expect_object(fmt, path)
    _check_keys(fmt, FORMAT_KEYS, path)
    kind = fmt.get("type", "audio/pcm")
    if kind not in FORMAT_TYPES:
        raise _invalid_value(kind, f"{path}.type", FORMAT_TYPES)
    if kind == "audio/pcm":
        rate = fmt.get("rate", 24000)
        if rate != 24000:
            raise _Invalid(
                "integer_below_min_value" if rate < 24000 else "integer_above_max_value",
                f"Invalid '{path}.rate': expected 24000.",
                f"{path}.rate",
            )
        return {"type": kind, "rate": 24000}
    return {"type": kind}


def _validate_tools(tools: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _Invalid("invalid_type", f"Invalid type for '{path}': expected an array.", path)
    out = []
    for i, tool in enumerate(tools):
        tpath = f"{path}[{i}]"
        tool = _expect_object(tool, tpath)
        _check_keys(tool, TOOL_KEYS, tpath)
        if tool.get("type", "function") != "function":
            raise _invalid_value(tool.get("type"), f"{tpath}.type", ("function", "mcp"))
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _Invalid(
                "missing_required_parameter",
                f"Missing required parameter: '{tpath}.name'.",
                f"{tpath}.name",
            )
        out.append({"type": "function", **tool})
    return out


def _validate_tool_choice(choice: Any, path: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "name": choice["name"]}
    raise _invalid_value(choice, path, ("none", "auto", "required"))


def _validate_modalities(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1 or value[0] not in ("text", "audio"):
        raise _Invalid(
            "invalid_value",
            f"Invalid '{path}': expected ['text'] or ['audio'] "
            "(text and audio cannot be requested together).",
            path,
        )
    return list(value)


def _validate_max_tokens(value: Any, path: str) -> Any:
    if value == "inf":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise _Invalid(
            "invalid_value", f"Invalid '{path}': expected 'inf' or an integer 1-4096.", path
        )
    return value


def apply_session_update(
    session: dict[str, Any], update: Any, *, has_assistant_audio: bool
) -> dict[str, Any]:
    """Return ``session`` with ``update`` applied, or raise ``_Invalid`` (nothing applied)."""
    upd = _expect_object(update, "session")
    _check_keys(upd, SESSION_KEYS, "session")
    if "type" not in upd:
        raise _Invalid(
            "missing_required_parameter",
            "Missing required parameter: 'session.type'.",
            "session.type",
        )
    if upd["type"] == "transcription":
        raise _Invalid(
            "invalid_value",
            "Passing a transcription session update event to a realtime session is not allowed.",
            "session.type",
        )
    if upd["type"] != "realtime":
        raise _invalid_value(upd["type"], "session.type", ("realtime", "transcription"))

    new = copy.deepcopy(session)
    if "model" in upd:
        if not isinstance(upd["model"], str) or not upd["model"]:
            raise _Invalid("invalid_type", "Invalid type for 'session.model'.", "session.model")
        new["model"] = upd["model"]
    if "instructions" in upd:
        if not isinstance(upd["instructions"], str):
            raise _Invalid(
                "invalid_type",
                "Invalid type for 'session.instructions': expected a string.",
                "session.instructions",
            )
        new["instructions"] = upd["instructions"]
    if "output_modalities" in upd:
        new["output_modalities"] = _validate_modalities(
            upd["output_modalities"], "session.output_modalities"
        )
    if "tools" in upd:
        new["tools"] = _validate_tools(upd["tools"], "session.tools")
    if "tool_choice" in upd:
        new["tool_choice"] = _validate_tool_choice(upd["tool_choice"], "session.tool_choice")
    if "max_output_tokens" in upd:
        new["max_output_tokens"] = _validate_max_tokens(
            upd["max_output_tokens"], "session.max_output_tokens"
        )
    for key in ("include", "tracing", "truncation", "prompt", "parallel_tool_calls", "reasoning"):
        if key in upd:
            new[key] = upd[key]
    if "audio" in upd:
        audio = _expect_object(upd["audio"], "session.audio")
        _check_keys(audio, AUDIO_KEYS, "session.audio")
        if "input" in audio:
            _update_audio_input(new["audio"]["input"], audio["input"])
        if "output" in audio:
            _update_audio_output(
                new["audio"]["output"], audio["output"], has_assistant_audio=has_assistant_audio
            )
    return new


def _update_audio_input(cur: dict[str, Any], value: Any) -> None:
    path = "session.audio.input"
    inp = _expect_object(value, path)
    _check_keys(inp, AUDIO_INPUT_KEYS, path)
    if "format" in inp:
        cur["format"] = _validate_format(inp["format"], f"{path}.format")
    if "transcription" in inp:
        tr = inp["transcription"]
        if tr is None:
            cur["transcription"] = None
        else:
            tr = _expect_object(tr, f"{path}.transcription")
            _check_keys(tr, TRANSCRIPTION_KEYS, f"{path}.transcription")
            cur["transcription"] = {"model": "whisper-1", "language": None, "prompt": None, **tr}
    if "noise_reduction" in inp:
        cur["noise_reduction"] = inp["noise_reduction"]
    if "turn_detection" in inp:
        td = inp["turn_detection"]
        tpath = f"{path}.turn_detection"
        if td is None:
            cur["turn_detection"] = None
            return
        td = _expect_object(td, tpath)
        kind = td.get("type")
        if kind == "server_vad":
            _check_keys(td, SERVER_VAD_KEYS, tpath)
            if "threshold" in td:
                _expect_number(td["threshold"], f"{tpath}.threshold", 0.0, 1.0)
            for key in ("prefix_padding_ms", "silence_duration_ms"):
                if key in td:
                    _expect_number(td[key], f"{tpath}.{key}", 0, 10_000)
            if td.get("idle_timeout_ms") is not None:
                _expect_number(td["idle_timeout_ms"], f"{tpath}.idle_timeout_ms", 5000, 30000)
        elif kind == "semantic_vad":
            _check_keys(td, SEMANTIC_VAD_KEYS, tpath)
        else:
            raise _invalid_value(kind, f"{tpath}.type", ("server_vad", "semantic_vad"))
        cur["turn_detection"] = turn_detection_with_defaults(td)


def _update_audio_output(cur: dict[str, Any], value: Any, *, has_assistant_audio: bool) -> None:
    path = "session.audio.output"
    out = _expect_object(value, path)
    _check_keys(out, AUDIO_OUTPUT_KEYS, path)
    if "format" in out:
        cur["format"] = _validate_format(out["format"], f"{path}.format")
    if "speed" in out:
        _expect_number(out["speed"], f"{path}.speed", 0.25, 1.5)
        cur["speed"] = out["speed"]
    if "voice" in out:
        voice = out["voice"]
        if not (isinstance(voice, str) and voice) and not (
            isinstance(voice, dict) and isinstance(voice.get("id"), str)
        ):
            raise _Invalid("invalid_type", f"Invalid type for '{path}.voice'.", f"{path}.voice")
        if has_assistant_audio and voice != cur.get("voice"):
            raise _Invalid(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                f"{path}.voice",
            )
        cur["voice"] = voice


# ---------------------------------------------------------------------------------------
# Audio helpers


def _bytes_per_ms(fmt: dict[str, Any]) -> int:
    return 48 if fmt.get("type", "audio/pcm") == "audio/pcm" else 8


def _ulaw(samples: np.ndarray) -> bytes:
    s = samples.astype(np.int32)
    sign = np.where(s < 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32635) + 0x84
    exp = np.clip(np.floor(np.log2(mag)).astype(np.int32) - 7, 0, 7)
    mant = (mag >> (exp + 3)) & 0x0F
    return (~(sign | (exp << 4) | mant) & 0xFF).astype(np.uint8).tobytes()


def _alaw(samples: np.ndarray) -> bytes:
    s = samples.astype(np.int32)
    sign = np.where(s >= 0, 0x80, 0)
    mag = np.minimum(np.abs(s), 32767) >> 3
    seg = np.where(mag < 32, 0, np.floor(np.log2(np.maximum(mag, 1))).astype(np.int32) - 4)
    mant = np.where(seg == 0, mag >> 1, (mag >> np.maximum(seg, 1)) & 0x0F)
    return ((sign | (seg << 4) | mant) ^ 0x55).astype(np.uint8).tobytes()


def reply_audio(fmt: dict[str, Any], duration_ms: int = REPLY_AUDIO_MS) -> bytes:
    """The assistant's "voice": a short tone in the session's output format."""
    kind = fmt.get("type", "audio/pcm")
    if kind == "audio/pcm":
        return tone_pcm16(duration_ms, rate=24000, freq=440.0, amplitude=0.3)
    pcm = np.frombuffer(tone_pcm16(duration_ms, rate=8000, freq=440.0, amplitude=0.3), "<i2")
    return _ulaw(pcm) if kind == "audio/pcmu" else _alaw(pcm)


def _pieces(text: str) -> list[str]:
    """Split text the way streaming deltas usually arrive: one word with its leading space."""
    return re.findall(r"\s*\S+", text) or [text]


# ---------------------------------------------------------------------------------------
# The sans-IO session


@dataclass
class _Out:
    payload: str | Close | Drop
    delay: float = 0.0
    response_id: str | None = None
    on_send: Callable[[float], None] | None = None
    due: float | None = None


@dataclass
class _Response:
    id: str
    modalities: list[str]
    out_of_band: bool
    metadata: Any
    max_output_tokens: Any
    item: dict[str, Any]
    item_added_sent: bool = False
    finished: bool = False


@dataclass
class _Vad:
    speaking: bool = False
    item_id: str = ""
    start_ms: float = 0.0
    last_loud_end_ms: float = 0.0
    silence_ms: float = 0.0
    carry: bytearray = field(default_factory=bytearray)


class RealtimeSession:
    """Protocol state of one simulated Realtime connection.

    Feed client frames with ``receive(message, now)``; take server frames with
    ``next_output(now)`` (a JSON string, ``Close``/``Drop``, a wake-up time, or ``None``).
    ``now`` is any monotonic clock in seconds (the socket loop passes trio's); it drives
    ``reply_delay``, ``delay_updated`` and the VAD idle timeout.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        fault: Fault | None = None,
        reply_delay: float = 0.0,
        expires_at: int | None = None,
        audio_pace: float = 0.0,
    ) -> None:
        self.fault = fault
        self.reply_delay = reply_delay
        self.audio_pace = audio_pace  # seconds between reply audio chunks (0: all at once)
        self.session = default_session(
            model, expires_at=expires_at if expires_at is not None else int(time.time()) + 3600
        )
        self.conversation_id = _new_id("conv")
        self.items: list[dict[str, Any]] = []
        self.wakeup: Callable[[], None] | None = None
        self._outbox: deque[_Out] = deque()
        self._active: _Response | None = None
        self._assistant_audio_sent = False
        self._transcripts: dict[str, str] = {}
        self._item_audio_ms: dict[str, int] = {}  # assistant item -> ms of audio generated
        self._buffer = bytearray()
        self._audio_ms = 0.0  # audio clock: ms of input audio appended this session
        self._vad = _Vad()
        self._idle_deadline: float | None = None
        self._idle_start_ms = 0.0
        self._tokens_remaining = 40_000
        self._closed = False

        self._push(self._event("session.created", session=self.session))
        kind = fault.kind if fault else None
        if kind == "close":
            self._push_raw(
                Close(fault.arg if fault and fault.arg is not None else 1000, "simulated close")
            )
        elif kind == "drop":
            self._outbox.clear()  # accept, then drop: not even session.created
            self._push_raw(Drop())
        elif kind == "garbage":
            self._push_raw(GARBAGE_FRAME)

    # -- public sans-IO interface --------------------------------------------------------

    def receive(self, message: str | bytes, now: float) -> None:
        if self._closed:
            return
        if isinstance(message, bytes):
            self._error(
                "invalid_event",
                "Expected a text WebSocket message; binary frames are not supported.",
            )
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._error("invalid_json", "Invalid event: failed to parse JSON value.")
            return
        client_event_id = event.get("event_id") if isinstance(event, dict) else None
        if not isinstance(client_event_id, str):
            client_event_id = None
        try:
            self._dispatch(event, now)
        except _Invalid as exc:
            self._error(exc.code, exc.message, exc.param, client_event_id)

    def next_output(self, now: float) -> str | Close | Drop | float | None:
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_timeout(now)
        # Order is kept within the session's own events and within a response, but while
        # a response "thinks" (reply_delay) other events (acks, errors) go ahead of it,
        # as on the real service.
        wait: float | None = None
        for index, out in enumerate(self._outbox):
            if index == 0 or out.response_id is None:
                if out.delay > 0 and out.due is None:
                    out.due = now + out.delay
                if out.due is None or now >= out.due:
                    del self._outbox[index]
                    return self._sent(out, now)
                wait = out.due if wait is None else min(wait, out.due)
            if out.response_id is None:
                break  # a held session event holds every later one
        if wait is not None:
            return self._earliest(wait)
        return self._idle_deadline

    def _sent(self, out: _Out, now: float) -> str | Close | Drop:
        if out.on_send is not None:
            out.on_send(now)
        if isinstance(out.payload, Close | Drop):
            self._closed = True
            self._outbox.clear()
        return out.payload

    def push(self, event: dict[str, Any] | str) -> None:
        """Queue an arbitrary server frame (tests script upstream behaviour with this);
        a dict without ``event_id`` gets one."""
        if isinstance(event, dict) and "event_id" not in event:
            event = {"type": event.get("type"), "event_id": _new_id("event"), **event}
        self._push_raw(event if isinstance(event, str) else orjson.dumps(event).decode())
        if self.wakeup is not None:
            self.wakeup()

    @property
    def response_active(self) -> bool:
        """True from ``response.create`` until its ``response.done`` is sent or a
        cancellation of it is queued."""
        return self._active is not None and not self._active.finished

    # -- output plumbing -----------------------------------------------------------------

    def _earliest(self, t: float) -> float:
        return t if self._idle_deadline is None else min(t, self._idle_deadline)

    def _event(self, type_: str, **fields: Any) -> dict[str, Any]:
        return {"type": type_, "event_id": _new_id("event"), **fields}

    def _push(
        self,
        event: dict[str, Any],
        *,
        delay: float = 0.0,
        response_id: str | None = None,
        on_send: Callable[[float], None] | None = None,
    ) -> None:
        # Serialised now, so later changes to live state never leak into queued events.
        self._outbox.append(_Out(orjson.dumps(event).decode(), delay, response_id, on_send))

    def _push_raw(self, payload: str | Close | Drop) -> None:
        self._outbox.append(_Out(payload))

    def _error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> None:
        self._push(
            self._event(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            )
        )

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self, event: Any, now: float) -> None:
        if not isinstance(event, dict):
            raise _Invalid("invalid_type", "Invalid type for event: expected an object.")
        kind = event.get("type")
        if kind is None:
            raise _Invalid(
                "missing_required_parameter", "Missing required parameter: 'type'.", "type"
            )
        if kind not in CLIENT_EVENT_TYPES:
            raise _invalid_value(kind, "type", CLIENT_EVENT_TYPES)
        handler = {
            "session.update": self._on_session_update,
            "session.close": self._on_session_close,
            "input_audio_buffer.append": self._on_append,
            "session.input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }[kind]
        handler(event, now)

    def _on_session_update(self, event: dict[str, Any], now: float) -> None:
        self.session = apply_session_update(
            self.session, event.get("session"), has_assistant_audio=self._assistant_audio_sent
        )
        fault = self.fault
        delay = (fault.arg or 0) / 1000 if fault and fault.kind == "delay_updated" else 0.0
        self._push(self._event("session.updated", session=self.session), delay=delay)
        if fault and fault.kind == "close_after_update":
            self._push_raw(Close(fault.arg if fault.arg is not None else 1000, "simulated close"))
        elif fault and fault.kind == "drop_after_update":
            self._push_raw(Drop())
        if not self.response_active and not self._vad.speaking:
            self._arm_idle(now)

    def _on_session_close(self, event: dict[str, Any], now: float) -> None:
        self._push_raw(Close(1000, "session closed"))

    # -- conversation items --------------------------------------------------------------

    def _find(self, item_id: Any) -> int | None:
        return next((i for i, it in enumerate(self.items) if it["id"] == item_id), None)

    def _insert_item(self, item: dict[str, Any], previous_item_id: Any = None) -> str | None:
        if previous_item_id is None:
            prev = self.items[-1]["id"] if self.items else None
            self.items.append(item)
            return prev
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        index = self._find(previous_item_id)
        if index is None:
            raise _Invalid(
                "invalid_value",
                f"Previous item with id '{previous_item_id}' not found.",
                "previous_item_id",
            )
        self.items.insert(index + 1, item)
        return previous_item_id

    def _on_item_create(self, event: dict[str, Any], now: float) -> None:
        item = _normalise_item(event.get("item"))
        if item["id"] is not None and self._find(item["id"]) is not None:
            raise _Invalid(
                "item_id_already_exists", f"Item with id '{item['id']}' already exists.", "item.id"
            )
        if item["id"] is None:
            item["id"] = _new_id("item")
        prev = self._insert_item(item, event.get("previous_item_id"))
        self._push(self._event("conversation.item.added", previous_item_id=prev, item=item))
        self._push(self._event("conversation.item.done", previous_item_id=prev, item=item))

    def _on_item_delete(self, event: dict[str, Any], now: float) -> None:
        index = self._find(event.get("item_id"))
        if index is None:
            raise _Invalid(
                "item_not_found", f"Item with id '{event.get('item_id')}' not found.", "item_id"
            )
        del self.items[index]
        self._push(self._event("conversation.item.deleted", item_id=event["item_id"]))

    def _on_item_retrieve(self, event: dict[str, Any], now: float) -> None:
        index = self._find(event.get("item_id"))
        if index is None:
            raise _Invalid(
                "item_not_found", f"Item with id '{event.get('item_id')}' not found.", "item_id"
            )
        self._push(self._event("conversation.item.retrieved", item=self.items[index]))

    def _on_item_truncate(self, event: dict[str, Any], now: float) -> None:
        index = self._find(event.get("item_id"))
        if index is None:
            raise _Invalid(
                "item_not_found", f"Item with id '{event.get('item_id')}' not found.", "item_id"
            )
        item = self.items[index]
        if item.get("role") != "assistant":
            raise _Invalid("invalid_value", "Only assistant messages can be truncated.", "item_id")
        content_index = event.get("content_index", 0)
        audio_end_ms = event.get("audio_end_ms", 0)
        if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
            raise _Invalid(
                "invalid_type", "Invalid 'audio_end_ms': expected an integer >= 0.", "audio_end_ms"
            )
        length = self._item_audio_ms.get(item["id"], 0)
        if audio_end_ms > length:
            raise _Invalid(
                "invalid_value",
                f"Audio content of {length}ms is already shorter than {audio_end_ms}ms",
                "audio_end_ms",
            )
        for part in item.get("content", []):
            if part.get("type") == "output_audio":
                part["transcript"] = ""
        self._push(
            self._event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        )

    # -- input audio and VAD -------------------------------------------------------------

    def _input_format(self) -> dict[str, Any]:
        return self.session["audio"]["input"]["format"]

    def _turn_detection(self) -> dict[str, Any] | None:
        return self.session["audio"]["input"]["turn_detection"]

    def _on_append(self, event: dict[str, Any], now: float) -> None:
        audio = event.get("audio")
        if audio is None:
            raise _Invalid(
                "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
            )
        try:
            data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None:
            raise _Invalid(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio"
            )
        fmt = self._input_format()
        td = self._turn_detection()
        if td is None or fmt["type"] != "audio/pcm":
            self._buffer += data
            self._audio_ms += len(data) / _bytes_per_ms(fmt)
            return
        vad = self._vad
        vad.carry += data
        window = VAD_WINDOW_MS * 48
        while len(vad.carry) >= window:
            chunk = bytes(vad.carry[:window])
            del vad.carry[:window]
            self._vad_window(chunk, td, now)

    def _vad_window(self, chunk: bytes, td: dict[str, Any], now: float) -> None:
        vad = self._vad
        start = self._audio_ms
        self._buffer += chunk
        self._audio_ms += VAD_WINDOW_MS
        end = self._audio_ms
        loud = rms_pcm16(chunk) > float(td.get("threshold", 0.5)) * VAD_RMS_PER_THRESHOLD
        if not vad.speaking:
            if not loud:
                return
            vad.speaking = True
            vad.item_id = _new_id("item")
            vad.start_ms = start
            vad.last_loud_end_ms = end
            vad.silence_ms = 0.0
            self._idle_deadline = None
            padding = td.get("prefix_padding_ms", SERVER_VAD["prefix_padding_ms"])
            self._push(
                self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=int(max(0.0, start - padding)),
                    item_id=vad.item_id,
                )
            )
            if self.response_active and td.get("interrupt_response", True):
                self._cancel_response("turn_detected")
            return
        if loud:
            vad.last_loud_end_ms = end
            vad.silence_ms = 0.0
            return
        vad.silence_ms += VAD_WINDOW_MS
        if vad.silence_ms < td.get("silence_duration_ms", SERVER_VAD["silence_duration_ms"]):
            return
        vad.speaking = False
        self._push(
            self._event(
                "input_audio_buffer.speech_stopped", audio_end_ms=int(end), item_id=vad.item_id
            )
        )
        seconds = (vad.last_loud_end_ms - vad.start_ms) / 1000
        self._commit(vad.item_id, f"audio of {seconds:.1f} seconds")
        if td.get("create_response", True) and not self.response_active:
            self._start_response(None, None, now)

    def _commit(self, item_id: str, transcript: str | None) -> None:
        """Turn the buffered audio into a user item (transcript None: nothing was said)."""
        self._buffer.clear()
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        prev = self._insert_item(item)
        self._push(
            self._event("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        )
        self._push(self._event("conversation.item.added", previous_item_id=prev, item=item))
        self._push(self._event("conversation.item.done", previous_item_id=prev, item=item))
        if transcript is None:
            return
        self._transcripts[item_id] = transcript
        if self.session["audio"]["input"]["transcription"] is None:
            return
        for piece in _pieces(transcript):
            self._push(
                self._event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item_id,
                    content_index=0,
                    delta=piece,
                )
            )
        words = len(transcript.split())
        self._push(
            self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id,
                content_index=0,
                transcript=transcript,
                usage={
                    "type": "tokens",
                    "total_tokens": 10 + words,
                    "input_tokens": 10,
                    "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
                    "output_tokens": words,
                },
            )
        )
        item["content"][0]["transcript"] = transcript

    def _on_commit(self, event: dict[str, Any], now: float) -> None:
        vad = self._vad
        self._buffer += vad.carry
        vad.carry.clear()
        ms = len(self._buffer) / _bytes_per_ms(self._input_format())
        if ms < MIN_COMMIT_MS:
            raise _Invalid(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
            )
        item_id = vad.item_id if vad.speaking else _new_id("item")
        vad.speaking = False
        self._commit(item_id, f"audio of {ms / 1000:.1f} seconds")

    def _on_clear(self, event: dict[str, Any], now: float) -> None:
        self._buffer.clear()
        self._vad = _Vad()
        self._push(self._event("input_audio_buffer.cleared"))
        if not self.response_active:
            self._arm_idle(now)  # a cleared turn counts as silence from here

    def _arm_idle(self, now: float) -> None:
        td = self._turn_detection()
        idle = td.get("idle_timeout_ms") if td and td["type"] == "server_vad" else None
        if idle:
            self._idle_deadline = now + idle / 1000
            self._idle_start_ms = self._audio_ms
        else:
            self._idle_deadline = None

    def _idle_timeout(self, now: float) -> None:
        """``idle_timeout_ms`` passed with no speech: commit what was heard and respond."""
        self._idle_deadline = None
        if self.response_active or self._vad.speaking:
            return
        item_id = _new_id("item")
        self._buffer += self._vad.carry
        self._vad.carry.clear()
        self._push(
            self._event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=int(self._idle_start_ms),
                audio_end_ms=int(self._audio_ms),
                item_id=item_id,
            )
        )
        self._commit(item_id, None)
        td = self._turn_detection()
        if td is None or td.get("create_response", True):
            self._start_response(None, None, now)

    # -- responses -----------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any], now: float) -> None:
        params = event.get("response")
        if params is not None:
            params = _expect_object(params, "response")
            _check_keys(params, RESPONSE_KEYS, "response")
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        self._start_response(params, client_event_id, now)

    def _on_response_cancel(self, event: dict[str, Any], now: float) -> None:
        wanted = event.get("response_id")
        if not self.response_active or (wanted is not None and wanted != self._active.id):
            raise _Invalid(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        self._cancel_response("client_cancelled")

    def _start_response(
        self, params: dict[str, Any] | None, client_event_id: str | None, now: float
    ) -> None:
        if self._active is not None and not self._active.finished:
            self._error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self._active.id}. Wait until the response is finished before creating a "
                "new one.",
                None,
                client_event_id,
            )
            return
        params = params or {}
        s = self.session
        modalities = (
            _validate_modalities(params["output_modalities"], "response.output_modalities")
            if "output_modalities" in params
            else list(s["output_modalities"])
        )
        tools = (
            _validate_tools(params["tools"], "response.tools") if "tools" in params else s["tools"]
        )
        tool_choice = (
            _validate_tool_choice(params["tool_choice"], "response.tool_choice")
            if "tool_choice" in params
            else s["tool_choice"]
        )
        max_tokens = (
            _validate_max_tokens(params["max_output_tokens"], "response.max_output_tokens")
            if "max_output_tokens" in params
            else s["max_output_tokens"]
        )
        out_of_band = params.get("conversation") == "none"
        source = self.items
        if isinstance(params.get("input"), list):
            source = [
                _normalise_item(i) if i.get("type") != "item_reference" else self._ref(i)
                for i in params["input"]
                if isinstance(i, dict)
            ]
        rid = _new_id("resp")
        item_id = _new_id("item")
        call = self._choose_tool(source, tools, tool_choice)
        text = self._reply_text(source)  # before the reply itself joins the conversation
        if call is not None:
            item: dict[str, Any] = {
                "id": item_id,
                "object": "realtime.item",
                "type": "function_call",
                "status": "in_progress",
                "name": call[0],
                "call_id": _new_id("call"),
                "arguments": "",
            }
        else:
            item = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
        resp = _Response(
            id=rid,
            modalities=modalities,
            out_of_band=out_of_band,
            metadata=params.get("metadata"),
            max_output_tokens=max_tokens,
            item=item,
        )
        self._active = resp
        self._idle_deadline = None
        self._push(
            self._event("response.created", response=self._response_obj(resp, "in_progress"))
        )
        prev = None
        if not out_of_band:
            prev = self._insert_item(item)

        def added(now: float) -> None:
            resp.item_added_sent = True

        def tag(event: dict[str, Any], **kw: Any) -> None:
            self._push(event, response_id=rid, **kw)

        tag(
            self._event("response.output_item.added", response_id=rid, output_index=0, item=item),
            delay=self.reply_delay,
            on_send=added,
        )
        if not out_of_band:
            tag(self._event("conversation.item.added", previous_item_id=prev, item=item))
        ids = {"response_id": rid, "item_id": item_id, "output_index": 0}
        if call is not None:
            name, arguments = call
            for piece in _pieces(arguments):
                tag(
                    self._event(
                        "response.function_call_arguments.delta",
                        **ids,
                        call_id=item["call_id"],
                        delta=piece,
                    )
                )
            tag(
                self._event(
                    "response.function_call_arguments.done",
                    **ids,
                    call_id=item["call_id"],
                    name=name,
                    arguments=arguments,
                )
            )
            item["arguments"] = arguments
        else:
            ids["content_index"] = 0
            if modalities == ["audio"]:
                tag(
                    self._event(
                        "response.content_part.added",
                        **ids,
                        part={"type": "audio", "transcript": ""},
                    )
                )
                fmt = s["audio"]["output"]["format"]
                audio = reply_audio(fmt)
                self._item_audio_ms[item_id] = len(audio) // _bytes_per_ms(fmt)
                chunk = REPLY_CHUNK_MS * _bytes_per_ms(fmt)
                chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
                words = _pieces(text)
                for i in range(max(len(chunks), len(words))):
                    if i < len(words):
                        tag(
                            self._event(
                                "response.output_audio_transcript.delta", **ids, delta=words[i]
                            )
                        )
                    if i < len(chunks):
                        tag(
                            self._event(
                                "response.output_audio.delta",
                                **ids,
                                delta=base64.b64encode(chunks[i]).decode(),
                            ),
                            delay=self.audio_pace if i else 0.0,
                            on_send=self._mark_audio_sent,
                        )
                tag(self._event("response.output_audio.done", **ids))
                tag(self._event("response.output_audio_transcript.done", **ids, transcript=text))
                part = {"type": "audio", "transcript": text}
                item["content"] = [{"type": "output_audio", "transcript": text}]
            else:
                tag(
                    self._event(
                        "response.content_part.added", **ids, part={"type": "text", "text": ""}
                    )
                )
                for piece in _pieces(text):
                    tag(self._event("response.output_text.delta", **ids, delta=piece))
                tag(self._event("response.output_text.done", **ids, text=text))
                part = {"type": "text", "text": text}
                item["content"] = [{"type": "output_text", "text": text}]
            tag(self._event("response.content_part.done", **ids, part=part))
        item["status"] = "completed"
        if not out_of_band:
            tag(self._event("conversation.item.done", previous_item_id=prev, item=item))
        tag(self._event("response.output_item.done", response_id=rid, output_index=0, item=item))
        self._finish_events(resp, "completed", None, [item])

    def _finish_events(
        self,
        resp: _Response,
        status: str,
        details: dict[str, Any] | None,
        output: list[dict[str, Any]],
    ) -> None:
        usage = self._usage(output)

        def done(now: float) -> None:
            resp.finished = True
            if self._active is resp:
                self._active = None
                if not self._vad.speaking:
                    self._arm_idle(now)

        self._push(
            self._event(
                "response.done",
                response=self._response_obj(resp, status, details, output, usage),
            ),
            response_id=resp.id,
            on_send=done,
        )
        self._tokens_remaining -= usage["total_tokens"]
        self._push(
            self._event(
                "rate_limits.updated",
                rate_limits=[
                    {
                        "name": "tokens",
                        "limit": 40_000,
                        "remaining": max(self._tokens_remaining, 0),
                        "reset_seconds": 0.5,
                    }
                ],
            ),
            response_id=resp.id,
        )

    def _cancel_response(self, reason: str) -> None:
        resp = self._active
        if resp is None or resp.finished:
            return
        self._outbox = deque(o for o in self._outbox if o.response_id != resp.id)
        output: list[dict[str, Any]] = []
        if resp.item_added_sent:
            item = copy.deepcopy(resp.item)
            item["status"] = "incomplete"
            output = [item]
            self._push(
                self._event(
                    "response.output_item.done", response_id=resp.id, output_index=0, item=item
                )
            )
            if not resp.out_of_band:
                self._push(self._event("conversation.item.done", item=item))
        elif not resp.out_of_band:
            index = self._find(resp.item["id"])
            if index is not None:
                del self.items[index]
        self._finish_events(resp, "cancelled", {"type": "cancelled", "reason": reason}, output)
        resp.finished = True

    def _mark_audio_sent(self, now: float) -> None:
        self._assistant_audio_sent = True

    def _response_obj(
        self,
        resp: _Response,
        status: str,
        details: dict[str, Any] | None = None,
        output: list[dict[str, Any]] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        out = self.session["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": details,
            "output": output or [],
            "conversation_id": None if resp.out_of_band else self.conversation_id,
            "output_modalities": resp.modalities,
            "max_output_tokens": resp.max_output_tokens,
            "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
            "usage": usage,
            "metadata": resp.metadata,
        }

    def _usage(self, output: list[dict[str, Any]]) -> dict[str, Any]:
        text_in = sum(len(orjson.dumps(i)) for i in self.items) // 16 + 20
        out_text = 0
        out_audio = 0
        for item in output:
            for part in item.get("content", []):
                words = len(str(part.get("text") or part.get("transcript") or "").split())
                out_text += words
                if part.get("type") == "output_audio":
                    out_audio += REPLY_AUDIO_MS // 20
            if item.get("type") == "function_call":
                out_text += 5
        return {
            "total_tokens": text_in + out_text + out_audio,
            "input_tokens": text_in,
            "output_tokens": out_text + out_audio,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    # -- deterministic "model" -----------------------------------------------------------

    def _ref(self, ref: dict[str, Any]) -> dict[str, Any]:
        index = self._find(ref.get("id"))
        if index is None:
            raise _Invalid(
                "item_not_found", f"Item with id '{ref.get('id')}' not found.", "response.input"
            )
        return self.items[index]

    def _user_text(self, item: dict[str, Any]) -> str | None:
        if item.get("type") != "message" or item.get("role") != "user":
            return None
        texts = []
        for part in item.get("content", []):
            if part.get("type") == "input_text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "input_audio":
                texts.append(part.get("transcript") or self._audio_transcript(item["id"], part))
        return " ".join(t for t in texts if t)

    def _audio_transcript(self, item_id: str, part: dict[str, Any]) -> str:
        if item_id in self._transcripts:
            return self._transcripts[item_id]
        try:
            size = len(base64.b64decode(part.get("audio") or ""))
        except (binascii.Error, ValueError):
            size = 0
        return f"audio of {size / 48000:.1f} seconds" if size else ""

    def _last_user_text(self, items: list[dict[str, Any]]) -> str | None:
        for item in reversed(items):
            text = self._user_text(item)
            if text is not None:
                return text
        return None

    def _choose_tool(
        self, items: list[dict[str, Any]], tools: list[dict[str, Any]], tool_choice: Any
    ) -> tuple[str, str] | None:
        if not tools or tool_choice == "none" or not items:
            return None
        last = items[-1]
        text = self._user_text(last)
        if text is None:  # only a fresh user turn may start a call
            return None
        chosen = None
        if isinstance(tool_choice, dict):
            chosen = next((t for t in tools if t["name"] == tool_choice["name"]), None)
        else:
            low = text.lower()
            for tool in tools:
                name = tool["name"].lower()
                if name in low or name.replace("_", " ") in low:
                    chosen = tool
                    break
            if chosen is None and tool_choice == "required":
                chosen = tools[0]
        if chosen is None:
            return None
        return chosen["name"], _arguments_for(chosen, text)

    def _reply_text(self, items: list[dict[str, Any]]) -> str:
        if items and items[-1].get("type") == "function_call_output":
            return f"The function returned: {items[-1].get('output', '')}"
        text = self._last_user_text(items)
        if text is None:
            return "Hello from the voxgate simulator."
        if text == "":
            return "Are you still there?"
        return f"You said: {text}"


def _arguments_for(tool: dict[str, Any], text: str) -> str:
    params = tool.get("parameters") or {}
    props = params.get("properties") if isinstance(params, dict) else None
    required = params.get("required") if isinstance(params, dict) else None
    args = {}
    if isinstance(props, dict) and isinstance(required, list):
        for name in required:
            if isinstance(props.get(name), dict) and props[name].get("type") == "string":
                args[name] = text
    return orjson.dumps(args).decode()


def _normalise_item(item: Any) -> dict[str, Any]:
    """Validate a client item and give it the fields the server reports."""
    item = _expect_object(item, "item")
    kind = item.get("type")
    if kind is None:
        raise _Invalid(
            "missing_required_parameter", "Missing required parameter: 'item.type'.", "item.type"
        )
    base = {"id": item.get("id"), "object": "realtime.item", "type": kind, "status": "completed"}
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            if role is None:
                raise _Invalid(
                    "missing_required_parameter",
                    "Missing required parameter: 'item.role'.",
                    "item.role",
                )
            raise _invalid_value(role, "item.role", ("user", "assistant", "system"))
        content = item.get("content")
        if not isinstance(content, list):
            raise _Invalid(
                "missing_required_parameter",
                "Missing required parameter: 'item.content'.",
                "item.content",
            )
        allowed = {
            "user": ("input_text", "input_audio", "input_image"),
            "system": ("input_text",),
            "assistant": ("output_text", "output_audio"),
        }[role]
        parts = []
        for i, part in enumerate(content):
            part = _expect_object(part, f"item.content[{i}]")
            if part.get("type") not in allowed:
                raise _invalid_value(part.get("type"), f"item.content[{i}].type", allowed)
            part = dict(part)
            if part["type"] == "input_audio":
                part.setdefault("transcript", None)
            parts.append(part)
        return {**base, "role": role, "content": parts}
    if kind == "function_call":
        for key in ("name", "arguments"):
            if not isinstance(item.get(key), str):
                raise _Invalid(
                    "missing_required_parameter",
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                )
        return {
            **base,
            "name": item["name"],
            "call_id": item.get("call_id") or _new_id("call"),
            "arguments": item["arguments"],
        }
    if kind == "function_call_output":
        for key in ("call_id", "output"):
            if not isinstance(item.get(key), str):
                raise _Invalid(
                    "missing_required_parameter",
                    f"Missing required parameter: 'item.{key}'.",
                    f"item.{key}",
                )
        return {**base, "call_id": item["call_id"], "output": item["output"]}
    raise _invalid_value(kind, "item.type", ("message", "function_call", "function_call_output"))


# ---------------------------------------------------------------------------------------
# Network shell


@dataclass
class CallRecord:
    """One WebRTC call set-up (`POST /v1/realtime/calls`) as the simulator saw it."""

    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    content_type: str
    offer: str | None = None
    session: dict[str, Any] | None = None  # the session configuration as applied
    status: int | None = None
    answer: str | None = None
    call_id: str | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def sdp_answer(offer: str) -> str:
    """A well-formed SDP answer to `offer`: the same media sections and mids, this side's ICE
    credentials, DTLS fingerprint and role, opus for audio, and a host candidate."""
    lines = [line for line in offer.replace("\r\n", "\n").split("\n") if line]
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    mids = [next((x[6:] for x in sec if x.startswith("a=mid:")), str(i)) for i, sec in enumerate(sections[1:])]
    out = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(mids),
        "a=msid-semantic:WMS *",
        f"a=fingerprint:sha-256 {fingerprint}",
    ]
    for mid, section in zip(mids, sections[1:], strict=True):
        kind = section[0].split()[0][2:]
        if kind == "audio":
            out += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtcp-mux",
                    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
                    "a=sendrecv"]
        elif kind == "application":
            out += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
                    "a=sctp-port:5000"]
        else:
            out += [f"m={kind} 0 UDP/TLS/RTP/SAVPF 0", "c=IN IP4 0.0.0.0", "a=inactive"]
        out += [f"a=mid:{mid}", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=setup:active",
                "a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host"]
    return "\r\n".join(out) + "\r\n"


def _openai_error(status: int, message: str, code: str | None, param: str | None = None,
                  kind: str = "invalid_request_error") -> tuple[int, list[tuple[str, str]], bytes]:
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return status, [("Content-Type", "application/json")], orjson.dumps(body)


def _bearer(record: ConnectionRecord) -> str | None:
    auth = record.header("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    for proto in record.subprotocols:
        if proto.startswith("openai-insecure-api-key."):
            return proto.removeprefix("openai-insecure-api-key.")
    return None


class OpenAISimulator:
    """A simulated OpenAI Realtime endpoint; ``connections`` records every connection."""

    def __init__(self, *, api_key: str, reply_delay: float = 0.0, audio_pace: float = 0.0) -> None:
        self._api_key = api_key
        self.reply_delay = reply_delay
        self.audio_pace = audio_pace
        self.connections: list[ConnectionRecord] = []
        self.calls: list[CallRecord] = []  # WebRTC call set-ups, in arrival order
        self.sessions: dict[ConnectionRecord, RealtimeSession] = {}
        self.port: int | None = None

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; ``task_status.started`` gets the bound port."""
        serve = partial(
            serve_websocket,
            self._handle,
            self.connections,
            host,
            port,
            fault_kinds=OPENAI_FAULT_KINDS,
            http_handler=self._http,
        )
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve)
            task_status.started(self.port)

    def push(self, record: ConnectionRecord, event: dict[str, Any] | str) -> None:
        """Send an extra server frame on a live connection (scripted upstream behaviour)."""
        self.sessions[record].push(event)

    async def _http(self, exchange: HttpExchange) -> tuple[int, list[tuple[str, str]], bytes]:
        """`POST /v1/realtime/calls`: an SDP offer (application/sdp, or multipart `sdp` +
        `session`) answered with 201, an SDP answer and the call's Location."""
        from voxgate.workers.openai.calls import OfferError, parse_offer

        if exchange.path != "/v1/realtime/calls":
            return _openai_error(404, "Not found.", "not_found")
        if exchange.method != "POST":
            return _openai_error(405, "Method not allowed.", "method_not_allowed")
        record = CallRecord(
            headers=exchange.headers,
            query=exchange.query,
            content_type=exchange.header("content-type") or "",
        )
        self.calls.append(record)
        auth = exchange.header("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._api_key.encode()
        ):
            record.status = 401
            return _openai_error(401, "Incorrect API key provided.", "invalid_api_key")
        try:
            offer = parse_offer(record.content_type, exchange.body)
        except OfferError as exc:
            record.status = exc.status
            return _openai_error(exc.status, exc.message, exc.code)
        record.offer = offer.sdp
        model = (offer.session or {}).get("model") or exchange.query_value("model") or DEFAULT_MODEL
        try:
            session = apply_session_update(
                default_session(str(model), expires_at=int(time.time()) + 3600),
                offer.session or {"type": "realtime"},
                has_assistant_audio=False,
            )
        except _Invalid as exc:
            record.status = 400
            return _openai_error(400, exc.message, exc.code, exc.param)
        record.session = session
        record.status = 201
        record.answer = sdp_answer(offer.sdp)
        record.call_id = _new_id("rtc")
        headers = [("Content-Type", "application/sdp"), ("Location", f"/v1/realtime/calls/{record.call_id}")]
        return 201, headers, record.answer.encode()

    async def _handle(self, conn: SimConnection) -> None:
        record = conn.record
        if not record.path.endswith("/realtime"):
            await conn.reject(
                404,
                {
                    "error": {
                        "message": "Not found.",
                        "type": "invalid_request_error",
                        "code": "not_found",
                        "param": None,
                    }
                },
            )
            return
        token = _bearer(record)
        if token is None or not hmac.compare_digest(token.encode(), self._api_key.encode()):
            message = (
                "Missing bearer or basic authentication in header"
                if token is None
                else "Incorrect API key provided."
            )
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None if token is None else "invalid_api_key",
                }
            }
            await conn.reject(401, body)
            return
        await conn.accept("realtime" if "realtime" in record.subprotocols else None)
        session = RealtimeSession(
            model=record.query_value("model") or DEFAULT_MODEL,
            fault=record.fault,
            reply_delay=self.reply_delay,
            audio_pace=self.audio_pace,
        )
        if (record.header("openai-beta") or "").startswith("realtime="):
            # The GA endpoint refuses the beta protocol shape right after the upgrade.
            session._outbox.clear()
            session._error(
                "beta_api_shape_disabled",
                "The beta Realtime API shape is disabled for this model; remove the "
                "'OpenAI-Beta: realtime=v1' header.",
            )
            session._push_raw(Close(4000, "invalid_request_error.beta_api_shape_disabled"))
        self.sessions[record] = session
        try:
            await run_session(conn, session)
        finally:
            self.sessions.pop(record, None)


async def run(host: str, port: int, api_key: str) -> None:
    """Serve until cancelled (``voxgate simulate openai``)."""
    sim = OpenAISimulator(api_key=api_key)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(sim.serve, host, port)
        print(f"openai simulator listening on ws://{host}:{bound}/v1/realtime", flush=True)
