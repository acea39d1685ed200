"""The simulated Realtime session's configuration: what ``session.created`` reports, and
``session.update`` validated and applied the way the GA API does (unknown keys, wrong types
and out-of-range values are ``Invalid``; nothing is applied then).

Turn-detection defaults come from ``voxgate.workers.openai.turn_detection`` (one place for the
gateway and the simulator). The field validators for output modalities, tools, tool choice
and token limits are also used by ``response.create``, which may override them per response.
"""

from __future__ import annotations

import copy
from typing import Any

from voxgate.simulate.openai.protocol import (
    Invalid,
    check_keys,
    expect_number,
    expect_object,
    invalid_value,
    missing,
    new_id,
)
from voxgate.workers.openai.turn_detection import with_defaults as turn_detection_with_defaults

__all__ = [
    "DEFAULT_MODEL",
    "apply_session_update",
    "bytes_per_ms",
    "default_session",
    "g711_encoding",
    "validate_max_tokens",
    "validate_modalities",
    "validate_tool_choice",
    "validate_tools",
]

DEFAULT_MODEL = "gpt-realtime"
DEFAULT_INSTRUCTIONS = "You are a helpful assistant. (voxgate simulator)"

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


def default_session(model: str, *, expires_at: int) -> dict[str, Any]:
    """The session object a fresh GA realtime connection reports in ``session.created``."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
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




def _validate_format(fmt: Any, path: str) -> dict[str, Any]:
    fmt = expect_object(fmt, path)
    check_keys(fmt, FORMAT_KEYS, path)
    kind = fmt.get("type", "audio/pcm")
    if kind not in FORMAT_TYPES:
        raise invalid_value(kind, f"{path}.type", FORMAT_TYPES)
    if kind == "audio/pcm":
        rate = fmt.get("rate", 24000)
        if rate != 24000:
            raise Invalid(
                "integer_below_min_value" if rate < 24000 else "integer_above_max_value",
                f"Invalid '{path}.rate': expected 24000.",
                f"{path}.rate",
            )
        return {"type": kind, "rate": 24000}
    return {"type": kind}


def validate_tools(tools: Any, path: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise Invalid("invalid_type", f"Invalid type for '{path}': expected an array.", path)
    out = []
    for i, tool in enumerate(tools):
        tpath = f"{path}[{i}]"
        tool = expect_object(tool, tpath)
        check_keys(tool, TOOL_KEYS, tpath)
        if tool.get("type", "function") != "function":
            raise invalid_value(tool.get("type"), f"{tpath}.type", ("function", "mcp"))
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise missing(f"{tpath}.name")
        out.append({"type": "function", **tool})
    return out


def validate_tool_choice(choice: Any, path: str) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name"):
        return {"type": "function", "name": choice["name"]}
    raise invalid_value(choice, path, ("none", "auto", "required"))


def validate_modalities(value: Any, path: str) -> list[str]:
    if not isinstance(value, list) or len(value) != 1 or value[0] not in ("text", "audio"):
        raise Invalid(
            "invalid_value",
            f"Invalid '{path}': expected ['text'] or ['audio'] "
            "(text and audio cannot be requested together).",
            path,
        )
    return list(value)


def validate_max_tokens(value: Any, path: str) -> Any:
    if value == "inf":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
        raise Invalid(
            "invalid_value", f"Invalid '{path}': expected 'inf' or an integer 1-4096.", path
        )
    return value


def apply_session_update(
    session: dict[str, Any], update: Any, *, has_assistant_audio: bool
) -> dict[str, Any]:
    """Return ``session`` with ``update`` applied, or raise ``Invalid`` (nothing applied)."""
    upd = expect_object(update, "session")
    check_keys(upd, SESSION_KEYS, "session")
    _check_session_type(upd)
    new = copy.deepcopy(session)
    _apply_top_level(new, upd)
    if "audio" in upd:
        audio = expect_object(upd["audio"], "session.audio")
        check_keys(audio, AUDIO_KEYS, "session.audio")
        if "input" in audio:
            _update_audio_input(new["audio"]["input"], audio["input"])
        if "output" in audio:
            _update_audio_output(
                new["audio"]["output"], audio["output"], has_assistant_audio=has_assistant_audio
            )
    return new


def _check_session_type(upd: dict[str, Any]) -> None:
    if "type" not in upd:
        raise missing("session.type")
    if upd["type"] == "transcription":
        raise Invalid(
            "invalid_value",
            "Passing a transcription session update event to a realtime session is not allowed.",
            "session.type",
        )
    if upd["type"] != "realtime":
        raise invalid_value(upd["type"], "session.type", ("realtime", "transcription"))


def _apply_top_level(new: dict[str, Any], upd: dict[str, Any]) -> None:
    """Every session field outside ``audio``."""
    if "model" in upd:
        if not isinstance(upd["model"], str) or not upd["model"]:
            raise Invalid("invalid_type", "Invalid type for 'session.model'.", "session.model")
        new["model"] = upd["model"]
    if "instructions" in upd:
        if not isinstance(upd["instructions"], str):
            raise Invalid(
                "invalid_type",
                "Invalid type for 'session.instructions': expected a string.",
                "session.instructions",
            )
        new["instructions"] = upd["instructions"]
    validators = {
        "output_modalities": validate_modalities,
        "tools": validate_tools,
        "tool_choice": validate_tool_choice,
        "max_output_tokens": validate_max_tokens,
    }
    for key, validate in validators.items():
        if key in upd:
            new[key] = validate(upd[key], f"session.{key}")
    for key in ("include", "tracing", "truncation", "prompt", "parallel_tool_calls", "reasoning"):
        if key in upd:
            new[key] = upd[key]


def _update_audio_input(cur: dict[str, Any], value: Any) -> None:
    path = "session.audio.input"
    inp = expect_object(value, path)
    check_keys(inp, AUDIO_INPUT_KEYS, path)
    if "format" in inp:
        cur["format"] = _validate_format(inp["format"], f"{path}.format")
    if "transcription" in inp:
        tr = inp["transcription"]
        if tr is None:
            cur["transcription"] = None
        else:
            tr = expect_object(tr, f"{path}.transcription")
            check_keys(tr, TRANSCRIPTION_KEYS, f"{path}.transcription")
            cur["transcription"] = {"model": "whisper-1", "language": None, "prompt": None, **tr}
    if "noise_reduction" in inp:
        cur["noise_reduction"] = inp["noise_reduction"]
    if "turn_detection" in inp:
        cur["turn_detection"] = _turn_detection(inp["turn_detection"], f"{path}.turn_detection")


def _turn_detection(td: Any, tpath: str) -> dict[str, Any] | None:
    """A validated ``turn_detection`` with the service defaults filled in (None: off)."""
    if td is None:
        return None
    td = expect_object(td, tpath)
    kind = td.get("type")
    if kind == "server_vad":
        check_keys(td, SERVER_VAD_KEYS, tpath)
        if "threshold" in td:
            expect_number(td["threshold"], f"{tpath}.threshold", 0.0, 1.0)
        for key in ("prefix_padding_ms", "silence_duration_ms"):
            if key in td:
                expect_number(td[key], f"{tpath}.{key}", 0, 10_000)
        if td.get("idle_timeout_ms") is not None:
            expect_number(td["idle_timeout_ms"], f"{tpath}.idle_timeout_ms", 5000, 30000)
    elif kind == "semantic_vad":
        check_keys(td, SEMANTIC_VAD_KEYS, tpath)
    else:
        raise invalid_value(kind, f"{tpath}.type", ("server_vad", "semantic_vad"))
    return turn_detection_with_defaults(td)


def _update_audio_output(cur: dict[str, Any], value: Any, *, has_assistant_audio: bool) -> None:
    path = "session.audio.output"
    out = expect_object(value, path)
    check_keys(out, AUDIO_OUTPUT_KEYS, path)
    if "format" in out:
        cur["format"] = _validate_format(out["format"], f"{path}.format")
    if "speed" in out:
        expect_number(out["speed"], f"{path}.speed", 0.25, 1.5)
        cur["speed"] = out["speed"]
    if "voice" in out:
        voice = out["voice"]
        if not (isinstance(voice, str) and voice) and not (
            isinstance(voice, dict) and isinstance(voice.get("id"), str)
        ):
            raise Invalid("invalid_type", f"Invalid type for '{path}.voice'.", f"{path}.voice")
        if has_assistant_audio and voice != cur.get("voice"):
            raise Invalid(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                f"{path}.voice",
            )
        cur["voice"] = voice


def bytes_per_ms(fmt: dict[str, Any]) -> int:
    """Audio bytes per millisecond in a session format (PCM16 at 24 kHz, or G.711 at 8 kHz)."""
    return 48 if fmt.get("type", "audio/pcm") == "audio/pcm" else 8


def g711_encoding(fmt: dict[str, Any]) -> str | None:
    """``mulaw``/``alaw`` for the G.711 formats (``voxgate.simulate.audio`` names), else None."""
    return {"audio/pcmu": "mulaw", "audio/pcma": "alaw"}.get(fmt.get("type", "audio/pcm"))
