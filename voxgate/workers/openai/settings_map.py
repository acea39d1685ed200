"""Pure mappers from Deepgram Voice Agent client messages to OpenAI Realtime GA client events
(openai-translator §2.1, §2.2, D4, D5, D8, D10).

Every function takes already-parsed JSON and tolerates any shape: a field of the wrong type is
treated as absent. Nothing here has state; the translator decides when to send what.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.workers.openai.audio import OPENAI_RATE, SUPPORTED_LINEAR16_RATES
from voxgate.workers.openai.turn_detection import SEMANTIC_VAD, SERVER_VAD

__all__ = [
    "AudioFormat",
    "SessionPlan",
    "SettingsRejected",
    "function_call_output",
    "function_call_output_event",
    "map_settings",
    "user_message_event",
    "assistant_message_event",
    "ListenChange",
    "listen_session",
    "ThinkChange",
    "map_update_listen",
    "map_update_think",
    "DEFAULT_TURN_DETECTION",
    "TOOL_RESULTS_SENTENCE",
]

TOOL_RESULTS_SENTENCE = (
    "When you receive results from tool calls, use them in your reply to the user."
)
CONTEXT_HEADER = "Previous conversation:"
TRANSCRIPTION_MODEL = "gpt-4o-transcribe"
IDLE_TIMEOUT_BOUNDS_MS = (5000, 30000)
MAX_SAFE_INTEGER = 2**53 - 1
DEFAULT_TURN_DETECTION = SERVER_VAD
_OUTPUT_FORMAT_TYPES = ("audio/pcm", "audio/pcmu", "audio/pcma")
_G711 = {"mulaw": "audio/pcmu", "alaw": "audio/pcma"}
_G711_RATE = 8000


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One leg's audio encoding as the client sees it (Deepgram names)."""

    encoding: str  # "linear16" | "mulaw" | "alaw"
    sample_rate: int

    @property
    def is_linear16(self) -> bool:
        return self.encoding == "linear16"

    @property
    def openai_type(self) -> str:
        """The OpenAI `audio.*.format.type` this encoding travels as upstream."""
        return _G711.get(self.encoding, "audio/pcm")


DEFAULT_INPUT = AudioFormat("linear16", 16000)
DEFAULT_OUTPUT = AudioFormat("linear16", OPENAI_RATE)


@dataclass(frozen=True, slots=True)
class SessionPlan:
    """What forwarding one Settings means: the event to send and what to remember."""

    session: dict[str, Any]  # the `session` object of the session.update
    instructions: str
    greeting: str | None
    had_context: bool
    server_vad: bool
    input_format: AudioFormat
    output_format: AudioFormat
    output_passthrough: bool  # a valid agent.sessionAudioOutput.format: deltas go out unconverted
    requested_model: str | None  # the client's model when D8 replaced it, else None


@dataclass(frozen=True, slots=True)
class SettingsRejected:
    """A Settings voxgate cannot honour; it is not forwarded (D4, D5)."""

    code: str
    description: str


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _whole(value: Any) -> int | None:
    """An integer value, also from an integral float (JSON 16000.0); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


# --- audio formats (D4, D5) ---------------------------------------------------------------


def _audio_format(spec: Any, *, default: AudioFormat, leg: str) -> AudioFormat | SettingsRejected:
    spec = _obj(spec)
    encoding = spec.get("encoding")
    if encoding is None:
        encoding = "linear16"
    rate_raw = spec.get("sample_rate")
    if isinstance(encoding, str):
        encoding = encoding.strip().lower()
        if encoding in _G711:
            rate = _G711_RATE if rate_raw is None else _whole(rate_raw)
            if rate == _G711_RATE:
                return AudioFormat(encoding, rate)
        elif encoding == "linear16":
            rate = default.sample_rate if rate_raw is None else _whole(rate_raw)
            if rate in SUPPORTED_LINEAR16_RATES:
                return AudioFormat(encoding, rate)
    shown_rate = rate_raw if _is_number(rate_raw) else "default"
    shown_enc = encoding if isinstance(encoding, str) else "?"
    return SettingsRejected(
        "unsupported_audio_format",
        f"Unsupported {leg} audio format: {shown_enc[:32]} at {shown_rate} Hz. Supported: "
        "linear16 at 8000/16000/24000/32000/44100/48000 Hz, mulaw or alaw at 8000 Hz.",
    )


def _session_audio_output(spec: Any) -> dict[str, Any]:
    """Normalized `agent.sessionAudioOutput` (§2.2); {} when nothing in it is valid."""
    spec = _obj(spec)
    out: dict[str, Any] = {}
    fmt = _obj(spec.get("format"))
    ftype = fmt.get("type")
    if isinstance(ftype, str) and ftype.strip() in _OUTPUT_FORMAT_TYPES:
        ftype = ftype.strip()
        out["format"] = {"type": ftype}
        if ftype == "audio/pcm" and _whole(fmt.get("rate")) == OPENAI_RATE:
            out["format"]["rate"] = OPENAI_RATE
    voice = spec.get("voice")
    if isinstance(voice, str) and voice.strip():
        out["voice"] = voice.strip()
    elif isinstance(voice, dict) and isinstance(voice.get("id"), str) and voice["id"].strip():
        out["voice"] = {"id": voice["id"].strip()}
    speed = spec.get("speed")
    if _is_finite(speed) and 0.25 <= speed <= 1.5:
        out["speed"] = speed
    return out


# --- Settings -> session.update (§2.2) ----------------------------------------------------


def _idle_timeout_ms(value: Any) -> int | None:
    if not _is_finite(value) or value < 0 or value == -1:
        return None
    low, high = IDLE_TIMEOUT_BOUNDS_MS
    return min(high, max(low, _round_half_up(value)))


def _context_block(messages: list[Any]) -> str:
    lines = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            continue
        role = message.get("role")
        role = role if role in ("user", "assistant") else "user"
        lines.append(f"{role}: {message['content'].strip()}")
    return CONTEXT_HEADER + "\n" + "\n".join(lines)


def _append_paragraph(base: str, paragraph: str) -> str:
    return f"{base}\n\n{paragraph}" if base else paragraph


def _tools(functions: list[Any]) -> list[dict[str, Any]]:
    tools = []
    for fn in functions:
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            continue
        tool: dict[str, Any] = {"type": "function", "name": fn["name"]}
        if fn.get("description") is not None:
            tool["description"] = fn["description"]
        tool["parameters"] = fn["parameters"] if isinstance(fn.get("parameters"), dict) else {}
        tools.append(tool)
    return tools


def _managed_prompt(spec: Any) -> dict[str, Any] | None:
    spec = _obj(spec)
    pid = spec.get("id")
    if not isinstance(pid, str) or not pid.strip():
        return None
    prompt: dict[str, Any] = {"id": pid.strip()}
    version = spec.get("version")
    if isinstance(version, str) and version.strip():
        prompt["version"] = version.strip()
    if isinstance(spec.get("variables"), dict):
        prompt["variables"] = spec["variables"]
    return prompt


@dataclass(frozen=True, slots=True)
class _Formats:
    """The audio side of a Settings: both legs' formats and the upstream output options."""

    input_format: AudioFormat
    output_format: AudioFormat
    output_passthrough: bool
    session_output: dict[str, Any]  # `audio.output` of the session (may be empty)


def _map_formats(audio: dict[str, Any], agent: dict[str, Any], manual: bool) -> _Formats | SettingsRejected:
    """`audio.input` / `audio.output` and `agent.sessionAudioOutput` (D4, D5, §2.2)."""
    input_format = _audio_format(audio.get("input"), default=DEFAULT_INPUT, leg="input")
    if isinstance(input_format, SettingsRejected):
        return input_format
    if manual and not input_format.is_linear16:
        return SettingsRejected(
            "unsupported_audio_format",
            "Manual audio commit mode supports linear16 input only.",
        )
    session_output = _session_audio_output(agent.get("sessionAudioOutput"))
    if "format" in session_output:  # upstream format chosen by the client; not converted
        return _Formats(input_format, DEFAULT_OUTPUT, True, session_output)
    output_format = _audio_format(audio.get("output"), default=DEFAULT_OUTPUT, leg="output")
    if isinstance(output_format, SettingsRejected):
        return output_format
    if not output_format.is_linear16:
        session_output = {"format": {"type": output_format.openai_type}, **session_output}
    return _Formats(input_format, output_format, False, session_output)


def _map_model(think: dict[str, Any], default_model: str) -> tuple[str, str | None]:
    """`think.provider.model`, or the default for a non-realtime model (D8); and the model
    the client asked for when it was replaced."""
    model = _obj(think.get("provider")).get("model")
    if isinstance(model, str) and "realtime" in model:
        return model, None
    return default_model, model if isinstance(model, str) else None


def _map_prompt(
    think: dict[str, Any], agent: dict[str, Any]
) -> tuple[str, bool, list[dict[str, Any]]]:
    """The instructions (prompt, then the earlier conversation, then the tool-results
    sentence), whether there was a context, and the tools."""
    instructions = think.get("prompt") if isinstance(think.get("prompt"), str) else ""
    context = _obj(agent.get("context")).get("messages")
    had_context = isinstance(context, list) and len(context) > 0
    if had_context:
        instructions = _append_paragraph(instructions, _context_block(context))
    functions = think.get("functions")
    tools = _tools(functions) if isinstance(functions, list) else []
    if isinstance(functions, list) and functions:
        instructions = _append_paragraph(instructions, TOOL_RESULTS_SENTENCE)
    return instructions, had_context, tools


def _map_turn_detection(agent: dict[str, Any], manual: bool) -> dict[str, Any] | None:
    """Server VAD with the agent's idle timeout; None (manual commit) behind the test flag."""
    if manual:
        return None
    turn_detection = dict(DEFAULT_TURN_DETECTION)
    turn_detection["idle_timeout_ms"] = _idle_timeout_ms(agent.get("idleTimeoutMs"))
    return turn_detection


def _map_listen(
    formats: _Formats, agent: dict[str, Any], turn_detection: dict[str, Any] | None
) -> dict[str, Any]:
    """The session's `audio` object: input format, transcription (D10), turn detection,
    and the output options when there are any."""
    language = agent.get("language")
    language = language if isinstance(language, str) and language.strip() else "en"  # D10
    input_fmt: dict[str, Any] = {"type": formats.input_format.openai_type}
    if formats.input_format.is_linear16:
        input_fmt["rate"] = OPENAI_RATE
    audio_session: dict[str, Any] = {
        "input": {
            "format": input_fmt,
            "transcription": {"model": TRANSCRIPTION_MODEL, "language": language, "prompt": ""},
            "turn_detection": turn_detection,
        }
    }
    if formats.session_output:
        audio_session["output"] = formats.session_output
    return audio_session


def _map_think_options(think: dict[str, Any]) -> dict[str, Any]:
    """The optional think fields with a Realtime twin, in the order the session lists them."""
    options: dict[str, Any] = {}
    if think.get("toolChoice") is not None:
        options["tool_choice"] = think["toolChoice"]
    modalities = think.get("outputModalities")
    if isinstance(modalities, list):
        kept = [m for m in modalities if m in ("text", "audio")]
        if kept:
            options["output_modalities"] = kept
    max_tokens = _whole(think.get("maxOutputTokens"))
    if max_tokens is not None and 0 < max_tokens <= MAX_SAFE_INTEGER:
        options["max_output_tokens"] = max_tokens
    prompt = _managed_prompt(think.get("managedPrompt"))
    if prompt is not None:
        options["prompt"] = prompt
    return options


def _map_greeting(agent: dict[str, Any]) -> str | None:
    greeting = agent.get("greeting")
    return greeting.strip() if isinstance(greeting, str) and greeting.strip() else None


def map_settings(settings: dict[str, Any], *, default_model: str) -> SessionPlan | SettingsRejected:
    """Plan the `session.update` for one Settings message, or say why it cannot be honoured.

    One mapper per part, in the order the session object is built: audio formats, model
    (think), instructions and tools (think, context), turn detection and the `audio` object
    (listen), the optional think fields, the greeting."""
    agent = _obj(settings.get("agent"))
    think = _obj(agent.get("think"))
    manual = agent.get("useOpenAIManualAudioCommit") is True
    formats = _map_formats(_obj(settings.get("audio")), agent, manual)
    if isinstance(formats, SettingsRejected):
        return formats
    model, requested_model = _map_model(think, default_model)
    instructions, had_context, tools = _map_prompt(think, agent)
    turn_detection = _map_turn_detection(agent, manual)
    session: dict[str, Any] = {
        "type": "realtime",
        "model": model,
        "instructions": instructions,
        "audio": _map_listen(formats, agent, turn_detection),
    }
    if tools:
        session["tools"] = tools
    session.update(_map_think_options(think))
    return SessionPlan(
        session=session,
        instructions=instructions,
        greeting=_map_greeting(agent),
        had_context=had_context,
        server_vad=turn_detection is not None,
        input_format=formats.input_format,
        output_format=formats.output_format,
        output_passthrough=formats.output_passthrough,
        requested_model=requested_model,
    )


# --- mid-session updates (the 2026 Voice Agent messages) ----------------------------------


@dataclass(frozen=True, slots=True)
class ThinkChange:
    """What an `UpdateThink` changes; None = left as it is."""

    prompt: str | None
    model: str | None
    tools: list[dict[str, Any]] | None


@dataclass(frozen=True, slots=True)
class ListenChange:
    """What an `UpdateListen` changes on `audio.input`; None = left as it is."""

    eot_timeout_ms: int | None
    eagerness: str | None  # semantic_vad eagerness chosen from eot_threshold
    language: str | None
    keyterms: list[str] | None


def map_update_think(message: dict[str, Any], *, default_model: str) -> ThinkChange | SettingsRejected:
    """`UpdateThink.think` (one think object, or a fallback list whose first entry wins).

    The prompt replaces the instructions (Deepgram semantics; `UpdatePrompt` is the one that
    adds); a non-realtime model is not sent (D8: the upstream keeps its model); `functions`
    replace the tools."""
    think = message.get("think")
    if isinstance(think, list):
        think = next((t for t in think if isinstance(t, dict)), None)
    if not isinstance(think, dict):
        return SettingsRejected("invalid_client_message", "UpdateThink needs a 'think' object.")
    prompt = think.get("prompt") if isinstance(think.get("prompt"), str) else None
    model = _obj(think.get("provider")).get("model")
    model = model if isinstance(model, str) and "realtime" in model else None
    functions = think.get("functions")
    tools = _tools(functions) if isinstance(functions, list) else None
    if prompt is not None and functions:
        prompt = _append_paragraph(prompt, TOOL_RESULTS_SENTENCE)
    return ThinkChange(prompt=prompt, model=model, tools=tools)


EOT_TIMEOUT_BOUNDS_MS = (200, 10000)


def _eagerness(threshold: float) -> str:
    """Flux's end-of-turn confidence threshold as semantic VAD eagerness: a higher threshold
    waits for more confidence, i.e. is less eager."""
    if threshold < 0.6:
        return "high"
    if threshold < 0.8:
        return "medium"
    return "low"


def _listen_problem(threshold: Any, timeout: Any) -> SettingsRejected | None:
    """Why `eot_threshold` / `eot_timeout_ms` cannot be honoured, or None."""
    if threshold is not None and not (_is_finite(threshold) and 0 <= threshold <= 1):
        return SettingsRejected(
            "invalid_client_message", "UpdateListen eot_threshold must be a number from 0 to 1."
        )
    if timeout is not None and not (_is_finite(timeout) and timeout > 0):
        return SettingsRejected(
            "invalid_client_message", "UpdateListen eot_timeout_ms must be a positive number."
        )
    return None


def _keyterms(value: Any) -> list[str] | None:
    if not isinstance(value, list):
        return None
    return [k for k in value if isinstance(k, str) and k.strip()]


def map_update_listen(message: dict[str, Any]) -> ListenChange | SettingsRejected:
    """`UpdateListen.listen.provider` (Deepgram v1 or Flux v2 shape) as turn-detection and
    transcription changes: `eot_threshold` -> semantic VAD eagerness, `eot_timeout_ms` ->
    server VAD `silence_duration_ms`, `language`, `keyterms` -> the transcription prompt.
    `model`, `eager_eot_threshold` and `language_hints` have no Realtime equivalent."""
    provider = _obj(message.get("listen")).get("provider")
    if not isinstance(provider, dict):
        return SettingsRejected(
            "invalid_client_message", "UpdateListen needs a 'listen.provider' object."
        )
    threshold = provider.get("eot_threshold")
    timeout = provider.get("eot_timeout_ms")
    problem = _listen_problem(threshold, timeout)
    if problem is not None:
        return problem
    low, high = EOT_TIMEOUT_BOUNDS_MS
    language = provider.get("language")
    return ListenChange(
        eot_timeout_ms=None if timeout is None else min(high, max(low, _round_half_up(timeout))),
        eagerness=None if threshold is None else _eagerness(threshold),
        language=language.strip() if isinstance(language, str) and language.strip() else None,
        keyterms=_keyterms(provider.get("keyterms")),
    )


def listen_session(
    change: ListenChange, turn_detection: dict[str, Any] | None, transcription: dict[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The complete `turn_detection` and `transcription` after a ListenChange (the upstream
    replaces these objects whole). Manual-commit mode keeps `turn_detection` null."""
    td = None if turn_detection is None else dict(turn_detection)
    if td is not None and change.eagerness is not None:
        td = {**SEMANTIC_VAD, "eagerness": change.eagerness}
    elif td is not None and change.eot_timeout_ms is not None:
        if td.get("type") != "server_vad":
            td = dict(DEFAULT_TURN_DETECTION)
        td["silence_duration_ms"] = change.eot_timeout_ms
    tr = dict(transcription)
    if change.language is not None:
        tr["language"] = change.language
    if change.keyterms is not None:
        tr["prompt"] = ", ".join(change.keyterms)
    return td, tr


# --- items ---------------------------------------------------------------------------------


def user_message_event(text: str) -> dict[str, Any]:
    """`conversation.item.create` for an InjectUserMessage."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def assistant_message_event(text: str) -> dict[str, Any]:
    """`conversation.item.create` for an InjectAgentMessage (voxgate, §2.4)."""
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        },
    }


def function_call_output(message: dict[str, Any]) -> str:
    """The `output` string for a FunctionCallResponse (§2.1): content, else error, else result."""
    content = message.get("content")
    if isinstance(content, str) and content:
        return content
    if message.get("error") is not None:
        return orjson.dumps({"error": message["error"]}).decode()
    result = message.get("result")
    if result is not None:
        return result if isinstance(result, str) else orjson.dumps(result).decode()
    return ""


def function_call_output_event(message: dict[str, Any]) -> dict[str, Any]:
    """`conversation.item.create` of a `function_call_output` item; `call_id` from `id`."""
    item: dict[str, Any] = {"type": "function_call_output"}
    if isinstance(message.get("id"), str):
        item["call_id"] = message["id"]
    item["output"] = function_call_output(message)
    return {"type": "conversation.item.create", "item": item}
