"""A simulated Deepgram: Voice Agent, live transcription ("listen") and streaming TTS ("speak").

voxgate's tests, benchmarks and ``voxgate demo`` need an upstream that speaks Deepgram's wire
protocol without keys or network, answers deterministically, can be told to misbehave, and
records what reached it. Message shapes follow Deepgram's published schemas (the Fern
definitions shipped in ``deepgram-sdk`` 7 and developers.deepgram.com); where the docs are
silent the choice is marked "simulator choice".

Routes: ``/v1/agent/converse``, ``/v1/listen``, ``/v1/speak``, and Flux's ``/v2/listen`` and
``/v2/speak`` (``voxgate.simulate.deepgram_v2``); anything else -> HTTP 404.
Auth: ``Authorization: Token <key>`` or the subprotocol pair ``token``, ``<key>`` (then
``token`` is echoed) -> otherwise HTTP 401, no 101, TCP closed.

Per-connection knobs (query parameters, ignored by the protocol logic):

- ``sim_fault=...`` (see ``voxgate.simulate.common``): ``refuse:<status>``, ``hang``,
  ``delay:<ms>`` happen at the handshake; after the 101 and the first server messages
  (Agent ``Welcome``, Speak ``Metadata``): ``close:<code>``, ``close_reason:<code>`` (reason
  text from ``sim_close_reason``, since the shared fault parser takes integer arguments
  only), ``drop`` (TCP closed, no close frame), ``garbage`` (one non-JSON text frame, then
  normal service), ``delay_updated:<ms>`` (Agent: ``SettingsApplied`` held back that long).
- ``sim_json_binary=1``: Agent ``ConversationText`` and ``FunctionCallRequest`` go out as
  JSON in BINARY frames, as real Deepgram occasionally does.

Protocol logic lives in sans-IO session classes (``AgentSession``, ``ListenSession``,
``SpeakSession``) driven by ``common.run_session``; ``DeepgramSimulator`` only routes,
authenticates and records.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import trio
import wsproto.events

from voxgate.simulate.common import (
    FAULT_KINDS,
    Close,
    ConnectionRecord,
    Drop,
    Fault,
    SimConnection,
    run_session,
    serve_websocket,
    tone_pcm16,
)

__all__ = [
    "AGENT_PATH",
    "CLOSE_REASON_PARAM",
    "DEEPGRAM_FAULT_KINDS",
    "JSON_BINARY_PARAM",
    "LISTEN_PATH",
    "LISTEN_V2_PATH",
    "NET0001_REASON",
    "SPEAK_PATH",
    "SPEAK_V2_PATH",
    "AgentSession",
    "DeepgramSimulator",
    "ListenOptions",
    "ListenSession",
    "SpeakSession",
    "decode_audio",
    "encode_pcm16",
    "run",
]

AGENT_PATH = "/v1/agent/converse"
LISTEN_PATH = "/v1/listen"
SPEAK_PATH = "/v1/speak"
LISTEN_V2_PATH = "/v2/listen"
SPEAK_V2_PATH = "/v2/speak"
PATHS = (AGENT_PATH, LISTEN_PATH, SPEAK_PATH, LISTEN_V2_PATH, SPEAK_V2_PATH)

JSON_BINARY_PARAM = "sim_json_binary"
CLOSE_REASON_PARAM = "sim_close_reason"
DEEPGRAM_FAULT_KINDS: dict[str, bool] = {**FAULT_KINDS, "close_reason": True}

#: Close reason Deepgram sends (code 1011) when a listen stream gets nothing for ~10 s.
NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)

GARBAGE_FRAME = "sim garbage: this frame is not JSON {"

# Agent behaviour (simulator choices, kept small so tests stay fast).
AGENT_AUDIO_MS = 600  # length of every agent reply tone
AUDIO_CHUNK_MS = 100  # agent/speak audio goes out in frames of this length
AGENT_END_OF_SPEECH_S = 0.6  # silence that ends a user turn on the agent path
SPEAK_MS_PER_CHAR = 50  # speak audio length per buffered character
INTERIM_INTERVAL_S = 0.5  # listen interim Results at most this often (stream time)
# Deepgram answers silence too: a final Results with an empty transcript once this much
# silence has streamed, or once the audio has paused this long (wall time) with silence
# not yet reported (simulator choices for "a short while").
SILENCE_RESULT_S = 2.0
SILENCE_PAUSE_S = 0.5
# Speak text without a Flush is spoken once no Speak arrived for this long: Flush only
# saves the wait for more text (Deepgram's starter apps never send it).
SPEAK_PAUSE_S = 0.5
VAD_WINDOW_S = 0.02
VAD_THRESHOLD = 0.02  # RMS (0..1) above which a window counts as speech

UNPARSABLE = "UNPARSABLE_CLIENT_MESSAGE"
UNPARSABLE_TEXT = "Text message received from client did not match any of the formats we expect."

Outgoing = str | bytes | dict | Close | Drop


# ---------------------------------------------------------------------------------------
# Audio: G.711 codecs and an energy VAD (numpy only; audioop is gone in 3.13)


def _mulaw_encode(x: np.ndarray) -> np.ndarray:
    v = x.astype(np.int32)
    sign = np.where(v < 0, 0x80, 0)
    mag = np.minimum(np.abs(v), 32635) + 0x84
    exponent = np.floor(np.log2(mag >> 7)).astype(np.int32)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _mulaw_decode(u: np.ndarray) -> np.ndarray:
    u = ~u.astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mag = (((u & 0x0F) << 3) + 0x84 << exponent) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _alaw_encode(x: np.ndarray) -> np.ndarray:
    v = x.astype(np.int32) >> 3
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_ALAW_SEG_END, v, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((v >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


def _alaw_decode(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def encode_pcm16(pcm: bytes, encoding: str) -> bytes:
    """PCM16 LE -> ``linear16`` (unchanged), ``mulaw`` or ``alaw``. Other encodings
    (mp3, opus, ...) are not synthesised: linear16 bytes are sent instead (simulator choice)."""
    if encoding not in ("mulaw", "alaw"):
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
    codec = _mulaw_encode if encoding == "mulaw" else _alaw_encode
    return codec(samples).tobytes()


def decode_audio(data: bytes, encoding: str) -> np.ndarray:
    """Bytes in ``encoding`` -> float samples in -1..1. Unknown encodings are read as
    linear16 (simulator choice); a trailing odd byte is ignored."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if encoding == "mulaw":
        pcm = _mulaw_decode(raw)
    elif encoding == "alaw":
        pcm = _alaw_decode(raw)
    else:
        pcm = np.frombuffer(data[: len(data) - len(data) % 2], dtype="<i2")
    return pcm.astype(np.float64) / 32768.0


def _bytes_per_sample(encoding: str) -> int:
    return 1 if encoding in ("mulaw", "alaw") else 2


def _chunks(data: bytes, size: int) -> list[bytes]:
    size = max(size, 1)
    return [data[i : i + size] for i in range(0, len(data), size)]


class _EnergyVad:
    """Cuts a sample stream into fixed windows and classifies each by RMS energy; stream
    time comes from sample counts, so results do not depend on how frames were cut."""

    def __init__(self, samples_per_second: int) -> None:
        self._rate = max(samples_per_second, 1)
        self._window = max(int(self._rate * VAD_WINDOW_S), 1)
        self._pending = np.zeros(0, dtype=np.float64)
        self.samples = 0  # samples classified so far

    @property
    def time(self) -> float:
        return self.samples / self._rate

    def feed(self, samples: np.ndarray) -> list[tuple[float, float, bool]]:
        """Windows completed by these samples, as (start, end, is_speech) in seconds."""
        buf = np.concatenate([self._pending, samples])
        n_full = len(buf) // self._window
        out = [
            self._classify(buf[i * self._window : (i + 1) * self._window]) for i in range(n_full)
        ]
        self._pending = buf[n_full * self._window :]
        return out

    def flush(self) -> list[tuple[float, float, bool]]:
        """Classify the partial window left over (end of stream or Finalize)."""
        if len(self._pending) == 0:
            return []
        out = [self._classify(self._pending)]
        self._pending = np.zeros(0, dtype=np.float64)
        return out

    def _classify(self, window: np.ndarray) -> tuple[float, float, bool]:
        start = self.time
        self.samples += len(window)
        rms = float(np.sqrt(np.mean(window * window))) if len(window) else 0.0
        return start, self.time, rms >= VAD_THRESHOLD


# ---------------------------------------------------------------------------------------
# Sessions (sans-IO)


def _json_loads(message: str | bytes) -> dict[str, Any] | None:
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _r(x: float) -> float:
    return round(x, 3)


class _Session:
    """FIFO outbox with optional not-before times, plus the post-101 fault plan; what
    ``common.run_session`` drives."""

    def __init__(self, *, now: float, fault: Fault | None = None, close_reason: str = "") -> None:
        self._outbox: deque[tuple[float, Outgoing]] = deque()
        self._ended = False  # a Close/Drop is queued: ignore further input
        self._fault = fault
        self._close_reason = close_reason
        self._start(now)
        self._apply_fault()

    # -- subclass hooks
    def _start(self, now: float) -> None:
        """Queue what the server sends right after the 101."""

    def _on_text(self, message: str, now: float) -> None:
        raise NotImplementedError

    def _on_binary(self, message: bytes, now: float) -> None:
        raise NotImplementedError

    def _tick(self, now: float) -> None:
        """Queue time-driven output (timeouts)."""

    def _deadline(self) -> float | None:
        """When ``_tick`` next has something to do, if ever."""
        return None

    # -- SimSession protocol
    def receive(self, message: str | bytes, now: float) -> None:
        if self._ended:
            return
        if isinstance(message, str):
            self._on_text(message, now)
        else:
            self._on_binary(message, now)

    def next_output(self, now: float) -> Outgoing | float | None:
        self._tick(now)
        if self._outbox:
            at, item = self._outbox[0]
            if at > now:
                return at
            self._outbox.popleft()
            return item
        return None if self._ended else self._deadline()

    # -- helpers
    def _emit(self, item: Outgoing, at: float = 0.0) -> None:
        self._outbox.append((at, item))

    def _end(self, item: Close | Drop) -> None:
        self._emit(item)
        self._ended = True

    def _apply_fault(self) -> None:
        fault = self._fault
        if fault is None:
            return
        if fault.kind == "close":
            self._end(Close(fault.arg if fault.arg is not None else 1000))
        elif fault.kind == "close_reason":
            self._end(Close(fault.arg if fault.arg is not None else 1000, self._close_reason))
        elif fault.kind == "drop":
            self._end(Drop())
        elif fault.kind == "garbage":
            self._emit(GARBAGE_FRAME)


# --- Voice Agent --------------------------------------------------------------------


def _ack_when_object(field: str, reply: str) -> Any:
    """An Update* handler: acknowledge with ``reply`` when ``field`` holds an object."""

    def handler(session: AgentSession, msg: dict[str, Any]) -> None:
        if isinstance(msg.get(field), dict | list):
            session._emit({"type": reply})
        else:
            session._error(UNPARSABLE, UNPARSABLE_TEXT)

    return handler


class AgentSession(_Session):
    """Voice Agent V1 (``/v1/agent/converse``): Settings, injections, function calls,
    prompt/speak updates, and an energy-VAD "listener" for binary mic audio."""

    def __init__(
        self,
        *,
        now: float,
        request_id: str | None = None,
        json_binary: bool = False,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.request_id = request_id or str(uuid.uuid4())
        self._json_binary = json_binary
        self._settings_delay = (
            (fault.arg or 0) / 1000 if fault is not None and fault.kind == "delay_updated" else 0.0
        )
        self.settings: dict[str, Any] | None = None
        self._in_encoding = "linear16"
        self._out_encoding = "linear16"
        self._out_rate = 24000
        self._functions: dict[str, bool] = {}  # name -> client_side
        self._pending_calls: dict[str, str] = {}  # id -> name
        self._call_seq = 0
        self._vad: _EnergyVad | None = None
        self._user_speaking = False
        self._speech_start = 0.0
        self._speech_end = 0.0
        self._silence = 0.0
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    def _start(self, now: float) -> None:
        self._emit({"type": "Welcome", "request_id": self.request_id})

    # -- output helpers
    def _error(self, code: str, description: str) -> None:
        self._emit({"type": "Error", "description": description, "code": code})

    def _maybe_binary(self, obj: dict[str, Any]) -> None:
        self._emit(orjson.dumps(obj) if self._json_binary else obj)

    def _conversation_text(self, role: str, content: str) -> None:
        self._maybe_binary({"type": "ConversationText", "role": role, "content": content})

    def _speak(self, text: str, *, latency: bool = True) -> None:
        """One agent turn: assistant text, AgentStartedSpeaking, tone audio, AgentAudioDone."""
        self._conversation_text("assistant", text)
        self._emit(
            {
                "type": "AgentStartedSpeaking",
                "total_latency": 0.25 if latency else 0.0,
                "tts_latency": 0.05 if latency else 0.0,
                "ttt_latency": 0.2 if latency else 0.0,
            }
        )
        pcm = tone_pcm16(AGENT_AUDIO_MS, rate=self._out_rate, freq=440.0)
        audio = encode_pcm16(pcm, self._out_encoding)
        chunk = self._out_rate * AUDIO_CHUNK_MS // 1000 * _bytes_per_sample(self._out_encoding)
        for frame in _chunks(audio, chunk):
            self._emit(frame)
        self._emit({"type": "AgentAudioDone"})

    def _think(self, user_text: str) -> None:
        """Answer a user turn: a function call when the text names a declared function,
        otherwise a deterministic reply."""
        lowered = user_text.lower()
        called = next((n for n in self._functions if n and n.lower() in lowered), None)
        if called is None:
            self._speak(f"You said: {user_text}")
            return
        self._call_seq += 1
        call_id = f"call_{self._call_seq}"
        client_side = self._functions[called]
        self._emit({"type": "AgentThinking", "content": f"I should call {called}."})
        self._maybe_binary(
            {
                "type": "FunctionCallRequest",
                "functions": [
                    {
                        "id": call_id,
                        "name": called,
                        "arguments": orjson.dumps({"text": user_text}).decode(),
                        "client_side": client_side,
                    }
                ],
            }
        )
        if client_side:
            self._pending_calls[call_id] = called
        else:
            result = "simulated server-side result"
            self._emit(
                {"type": "FunctionCallResponse", "id": call_id, "name": called, "content": result}
            )
            self._speak(f"The {called} function returned: {result}")

    # -- input
    def _on_text(self, message: str, now: float) -> None:
        msg = _json_loads(message)
        kind = msg.get("type") if msg is not None else None
        if msg is None or not isinstance(kind, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        if kind == "KeepAlive":
            return
        if kind == "Settings":
            self._on_settings(msg, now)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
        elif self.settings is None:
            self._error("SETTINGS_REQUIRED", f"Received {kind} before Settings.")
        else:
            handler(self, msg)

    def _on_binary(self, message: bytes, now: float) -> None:
        if self.settings is None or self._vad is None:
            self._error("SETTINGS_REQUIRED", "Received audio before Settings.")
            return
        for start, end, speech in self._vad.feed(decode_audio(message, self._in_encoding)):
            if speech:
                if not self._user_speaking:
                    self._user_speaking = True
                    self._speech_start = start
                    self._emit({"type": "UserStartedSpeaking"})
                self._speech_end = end
                self._silence = 0.0
            elif self._user_speaking:
                self._silence += end - start
                if self._silence >= AGENT_END_OF_SPEECH_S:
                    self._user_speaking = False
                    heard = self._speech_end - self._speech_start
                    text = f"audio of {heard:.1f} seconds"
                    self._conversation_text("user", text)
                    self._think(text)

    def _on_settings(self, msg: dict[str, Any], now: float) -> None:
        if self.settings is not None:
            self._error("SETTINGS_ALREADY_APPLIED", "Settings have already been applied.")
            return
        problem = _settings_problem(msg)
        if problem is not None:
            self._error(
                UNPARSABLE,
                f"Error parsing client message. Check the {problem} field against the API spec.",
            )
            return
        self.settings = msg
        audio = msg["audio"]
        inp = audio.get("input") or {}
        out = audio.get("output") or {}
        self._in_encoding = inp.get("encoding", "linear16")
        in_rate = int(inp.get("sample_rate", 24000))
        self._out_encoding = out.get("encoding") or "linear16"
        self._out_rate = int(out.get("sample_rate") or 24000)
        self._vad = _EnergyVad(in_rate)
        agent = msg["agent"]
        if isinstance(agent, dict):
            self._functions = _declared_functions(agent.get("think"))
        self._emit({"type": "SettingsApplied"}, at=now + self._settings_delay)
        greeting = agent.get("greeting") if isinstance(agent, dict) else None
        if isinstance(greeting, str) and greeting:
            self._speak(greeting, latency=False)

    def _on_inject_user(self, msg: dict[str, Any]) -> None:
        content = msg.get("content")
        if not isinstance(content, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        self._conversation_text("user", content)
        self._think(content)

    def _on_inject_agent(self, msg: dict[str, Any]) -> None:
        text = msg.get("message")
        if not isinstance(text, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
        elif self._user_speaking:
            self._emit({"type": "InjectionRefused", "message": "The user is currently speaking."})
        else:
            self._speak(text, latency=False)

    def _on_function_response(self, msg: dict[str, Any]) -> None:
        name, content = msg.get("name"), msg.get("content")
        if not isinstance(content, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        call_id = msg.get("id")
        known = self._pending_calls.pop(call_id, None) if isinstance(call_id, str) else None
        self._speak(f"The {known or name} function returned: {content}")

    def _on_update_prompt(self, msg: dict[str, Any]) -> None:
        if isinstance(msg.get("prompt"), str):
            self._emit({"type": "PromptUpdated"})
        else:
            self._error(UNPARSABLE, UNPARSABLE_TEXT)

    _HANDLERS = {
        "InjectUserMessage": _on_inject_user,
        "InjectAgentMessage": _on_inject_agent,
        "FunctionCallResponse": _on_function_response,
        "UpdatePrompt": _on_update_prompt,
        "UpdateSpeak": _ack_when_object("speak", "SpeakUpdated"),
        "UpdateThink": _ack_when_object("think", "ThinkUpdated"),
        "UpdateListen": _ack_when_object("listen", "ListenUpdated"),
    }


def _settings_problem(msg: Mapping[str, Any]) -> str | None:
    """Name of the first field the real API would refuse to parse, or None."""
    audio = msg.get("audio")
    if not isinstance(audio, dict):
        return "audio"
    inp = audio.get("input")
    if inp is not None:
        if not isinstance(inp, dict):
            return "audio.input"
        if not isinstance(inp.get("encoding"), str):
            return "audio.input.encoding"
        rate = inp.get("sample_rate")
        if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
            return "audio.input.sample_rate"
    out = audio.get("output")
    if out is not None:
        if not isinstance(out, dict):
            return "audio.output"
        if "encoding" in out and not isinstance(out["encoding"], str):
            return "audio.output.encoding"
        rate = out.get("sample_rate")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0):
            return "audio.output.sample_rate"
    agent = msg.get("agent")
    if isinstance(agent, str):
        return None
    if not isinstance(agent, dict):
        return "agent"
    think = agent.get("think")
    for provider in think if isinstance(think, list) else [think] if think is not None else []:
        if not isinstance(provider, dict):
            return "agent.think"
        functions = provider.get("functions", [])
        # A function is client-side by having no ``endpoint``; the schema has no
        # ``client_side`` flag and the live API refuses Settings that carry one.
        if not isinstance(functions, list) or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and "client_side" not in f
            for f in functions
        ):
            return "agent.think.functions"
    if "greeting" in agent and not isinstance(agent["greeting"], str):
        return "agent.greeting"
    return None


def _declared_functions(think: Any) -> dict[str, bool]:
    """Function name -> client_side (a function without an ``endpoint`` runs on the client)."""
    found: dict[str, bool] = {}
    for provider in think if isinstance(think, list) else [think]:
        if isinstance(provider, dict):
            for f in provider.get("functions") or []:
                found.setdefault(f["name"], "endpoint" not in f)
    return found


# --- Listen -------------------------------------------------------------------------


class BadRequest(ValueError):
    """A query the real API refuses at the handshake (HTTP 400)."""


@dataclass(frozen=True)
class ListenOptions:
    """The listen query parameters the simulator acts on."""

    model: str = "general"
    encoding: str = "linear16"
    sample_rate: int = 16000
    channels: int = 1
    interim_results: bool = False
    vad_events: bool = False
    utterance_end_ms: int | None = None
    endpointing_ms: int | None = 10  # None = endpointing=false

    @classmethod
    def from_query(cls, query: list[tuple[str, str]]) -> ListenOptions:
        q: dict[str, str] = {}
        for k, v in query:
            q.setdefault(k, v)

        def number(name: str, default: int | None) -> int | None:
            raw = q.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = int(raw)
            except ValueError:
                raise BadRequest(f"Invalid value for {name}: {raw!r}") from None
            if value < 0:
                raise BadRequest(f"Invalid value for {name}: {raw!r}")
            return value

        endpointing_raw = q.get("endpointing", "").strip().lower()
        if endpointing_raw == "false":
            endpointing: int | None = None
        elif endpointing_raw == "true":
            endpointing = 10
        else:
            endpointing = number("endpointing", 10)
        return cls(
            model=q.get("model") or "general",
            encoding=q.get("encoding") or "linear16",
            sample_rate=number("sample_rate", 16000) or 16000,
            channels=number("channels", 1) or 1,
            interim_results=_truthy(q.get("interim_results")),
            vad_events=_truthy(q.get("vad_events")),
            utterance_end_ms=number("utterance_end_ms", None),
            endpointing_ms=endpointing,
        )


class ListenSession(_Session):
    """Live transcription (``/v1/listen``): energy-VAD "transcripts" of the form
    ``tone 1.0 seconds`` (empty for silence), interim/final Results, SpeechStarted,
    UtteranceEnd, Finalize, CloseStream and the NET-0001 idle timeout."""

    def __init__(
        self,
        *,
        now: float,
        options: ListenOptions | None = None,
        idle_timeout: float = 10.0,
        request_id: str | None = None,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.options = options or ListenOptions()
        self.request_id = request_id or str(uuid.uuid4())
        self._idle_timeout = idle_timeout
        self._last_activity = now
        self._created = _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")
        self._created = self._created.replace("+00:00", "Z")
        self._model_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-model:{self.options.model}"))
        self._sha = hashlib.sha256()
        self._got_audio = False
        self._vad = _EnergyVad(self.options.sample_rate * self.options.channels)
        self._segment_start = 0.0
        self._speech_start: float | None = None
        self._speech_end = 0.0
        self._in_speech = False
        self._silence = 0.0
        self._last_result_t = 0.0
        self._last_word_end = 0.0
        self._utterance_open = False  # speech seen since the last UtteranceEnd
        self._last_audio = now
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    # -- input
    def _on_text(self, message: str, now: float) -> None:
        self._last_activity = now
        msg = _json_loads(message)
        kind = msg.get("type") if msg is not None else None
        if kind == "KeepAlive":
            return
        if kind == "Finalize":
            self._run_windows(self._vad.flush())
            self._final(speech_final=False, from_finalize=True)
        elif kind == "CloseStream":
            self._close_stream()
        else:
            # Simulator choice: the ListenV1Error shape, connection kept open.
            self._emit(
                {
                    "type": "Error",
                    "variant": "UnknownMessage",
                    "description": UNPARSABLE_TEXT,
                    "message": "Unknown control message.",
                }
            )

    def _on_binary(self, message: bytes, now: float) -> None:
        self._last_activity = now
        if not message:  # a zero-length frame is the legacy way to end the stream
            self._close_stream()
            return
        self._got_audio = True
        self._last_audio = now
        self._sha.update(message)
        self._run_windows(self._vad.feed(decode_audio(message, self.options.encoding)))
        if self._silence_unreported() and self._vad.time - self._segment_start >= SILENCE_RESULT_S:
            self._final(speech_final=False, from_finalize=False)
        opts = self.options
        if (
            opts.interim_results
            and self._in_speech
            and self._vad.time - self._last_result_t >= INTERIM_INTERVAL_S
        ):
            self._results(is_final=False, speech_final=False, from_finalize=False)
            self._last_result_t = self._vad.time

    def _run_windows(self, windows: list[tuple[float, float, bool]]) -> None:
        opts = self.options
        for start, end, speech in windows:
            if speech:
                if self._speech_start is None:
                    self._speech_start = start
                    if opts.vad_events:
                        self._emit(
                            {
                                "type": "SpeechStarted",
                                "channel": self._channel(),
                                "timestamp": _r(start),
                            }
                        )
                self._speech_end = end
                self._last_word_end = end
                self._in_speech = True
                self._utterance_open = True
                self._silence = 0.0
                continue
            if self._in_speech:
                self._silence += end - start
                if opts.endpointing_ms is not None and self._silence * 1000 >= opts.endpointing_ms:
                    self._final(speech_final=True, from_finalize=False, end=end)
            if (
                opts.utterance_end_ms is not None
                and self._utterance_open
                and (end - self._last_word_end) * 1000 >= opts.utterance_end_ms
            ):
                self._utterance_open = False
                self._emit(
                    {
                        "type": "UtteranceEnd",
                        "channel": self._channel(),
                        "last_word_end": _r(self._last_word_end),
                    }
                )

    def _close_stream(self) -> None:
        self._run_windows(self._vad.flush())
        if self._vad.time > self._segment_start or self._speech_start is not None:
            self._final(speech_final=self._speech_start is not None, from_finalize=False)
        self._emit(self._metadata())
        self._end(Close(1000))

    # -- timers
    def _silence_unreported(self) -> bool:
        """Audio since the last final that holds no speech (Deepgram still answers it)."""
        return self._got_audio and self._speech_start is None and self._vad.time > self._segment_start

    def _tick(self, now: float) -> None:
        if self._ended:
            return
        if self._silence_unreported() and now >= self._last_audio + SILENCE_PAUSE_S:
            self._final(speech_final=False, from_finalize=False)
        if now >= self._last_activity + self._idle_timeout:
            self._emit(self._metadata())
            self._end(Close(1011, NET0001_REASON))

    def _deadline(self) -> float | None:
        idle = self._last_activity + self._idle_timeout
        if self._silence_unreported():
            return min(idle, self._last_audio + SILENCE_PAUSE_S)
        return idle

    # -- output
    def _channel(self) -> list[int]:
        return [0, self.options.channels]

    def _transcript(self) -> tuple[str, list[dict[str, Any]]]:
        if self._speech_start is None:
            return "", []
        start, end = self._speech_start, self._speech_end
        words = ["tone", f"{end - start:.1f}", "seconds"]
        step = (end - start) / len(words)
        return " ".join(words), [
            {
                "word": w,
                "start": _r(start + i * step),
                "end": _r(start + (i + 1) * step),
                "confidence": 0.99,
                "punctuated_word": w,
            }
            for i, w in enumerate(words)
        ]

    def _results(
        self, *, is_final: bool, speech_final: bool, from_finalize: bool, end: float | None = None
    ) -> None:
        end = self._vad.time if end is None else end
        transcript, words = self._transcript()
        self._emit(
            {
                "type": "Results",
                "channel_index": self._channel(),
                "duration": _r(end - self._segment_start),
                "start": _r(self._segment_start),
                "is_final": is_final,
                "speech_final": speech_final,
                "channel": {
                    "alternatives": [
                        {
                            "transcript": transcript,
                            "confidence": 0.99 if words else 0.0,
                            "words": words,
                        }
                    ]
                },
                "metadata": {
                    "request_id": self.request_id,
                    "model_info": self._model_info(),
                    "model_uuid": self._model_uuid,
                },
                "from_finalize": from_finalize,
            }
        )

    def _final(self, *, speech_final: bool, from_finalize: bool, end: float | None = None) -> None:
        end = self._vad.time if end is None else end
        self._results(
            is_final=True, speech_final=speech_final, from_finalize=from_finalize, end=end
        )
        self._segment_start = end
        self._last_result_t = end
        self._speech_start = None
        self._in_speech = False
        self._silence = 0.0

    def _model_info(self) -> dict[str, str]:
        return {"name": self.options.model, "version": "sim", "arch": "sim"}

    def _metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": self._sha.hexdigest(),
            "created": self._created,
            "duration": round(self._vad.time, 6),
            "channels": self.options.channels,
        }
        if self._got_audio:
            meta["models"] = [self._model_uuid]
            meta["model_info"] = {self._model_uuid: self._model_info()}
        return meta


# --- Speak --------------------------------------------------------------------------

SPEAK_ENCODINGS = ("linear16", "mulaw", "alaw")


class SpeakSession(_Session):
    """Streaming TTS (``/v1/speak``): Speak buffers text, Flush returns a tone of
    ``SPEAK_MS_PER_CHAR`` per character then ``Flushed``; text left buffered is spoken
    (without ``Flushed``) once no Speak came for ``SPEAK_PAUSE_S``; Clear -> ``Cleared``,
    Close -> 1000."""

    def __init__(
        self,
        *,
        now: float,
        model: str = "aura-2-thalia-en",
        encoding: str = "linear16",
        sample_rate: int = 24000,
        request_id: str | None = None,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.request_id = request_id or str(uuid.uuid4())
        self.model = model
        self.encoding = encoding
        self.sample_rate = sample_rate
        self._buffer: list[str] = []
        self._sequence = 0
        self._last_speak = now
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    @classmethod
    def from_query(cls, query: list[tuple[str, str]], **kwargs: Any) -> SpeakSession:
        q: dict[str, str] = {}
        for k, v in query:
            q.setdefault(k, v)
        encoding = q.get("encoding") or "linear16"
        if encoding not in SPEAK_ENCODINGS:
            raise BadRequest(f"Unsupported encoding for streaming TTS: {encoding!r}")
        raw_rate = q.get("sample_rate") or ("8000" if encoding != "linear16" else "24000")
        try:
            rate = int(raw_rate)
        except ValueError:
            raise BadRequest(f"Invalid value for sample_rate: {raw_rate!r}") from None
        if rate <= 0:
            raise BadRequest(f"Invalid value for sample_rate: {raw_rate!r}")
        return cls(
            model=q.get("model") or "aura-2-thalia-en",
            encoding=encoding,
            sample_rate=rate,
            **kwargs,
        )

    def _start(self, now: float) -> None:
        self._emit(
            {
                "type": "Metadata",
                "request_id": self.request_id,
                "model_name": self.model,
                "model_version": "sim",
                "model_uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-model:{self.model}")),
            }
        )

    def _warning(self, description: str) -> None:
        self._emit({"type": "Warning", "description": description, "code": UNPARSABLE})

    def _on_binary(self, message: bytes, now: float) -> None:
        self._warning("Binary messages are not accepted on this endpoint.")

    def _on_text(self, message: str, now: float) -> None:
        msg = _json_loads(message)
        kind = msg.get("type") if msg is not None else None
        if msg is None or not isinstance(kind, str):
            self._warning(UNPARSABLE_TEXT)
        elif kind == "Speak":
            text = msg.get("text")
            if isinstance(text, str):
                self._buffer.append(text)
                self._last_speak = now
            else:
                self._warning("Speak messages need a text field.")
        elif kind == "Flush":
            self._flush()
        elif kind == "Clear":
            self._buffer.clear()
            self._emit({"type": "Cleared", "sequence_id": self._next_sequence()})
        elif kind == "Close":
            self._end(Close(1000))
        else:
            self._warning(UNPARSABLE_TEXT)

    def _next_sequence(self) -> int:
        seq = self._sequence
        self._sequence += 1
        return seq

    def audio_bytes_for(self, text: str) -> int:
        """How many audio bytes a Flush of ``text`` produces (for tests and benchmarks)."""
        samples = int(self.sample_rate * (len(text) * SPEAK_MS_PER_CHAR) / 1000)
        return samples * _bytes_per_sample(self.encoding)

    def _speak_buffer(self) -> None:
        text = "".join(self._buffer)
        self._buffer.clear()
        if text:
            pcm = tone_pcm16(len(text) * SPEAK_MS_PER_CHAR, rate=self.sample_rate, freq=330.0)
            audio = encode_pcm16(pcm, self.encoding)
            chunk = self.sample_rate * AUDIO_CHUNK_MS // 1000 * _bytes_per_sample(self.encoding)
            for frame in _chunks(audio, chunk):
                self._emit(frame)

    def _flush(self) -> None:
        self._speak_buffer()
        self._emit({"type": "Flushed", "sequence_id": self._next_sequence()})

    def _tick(self, now: float) -> None:
        if not self._ended and self._buffer and now >= self._last_speak + SPEAK_PAUSE_S:
            self._speak_buffer()

    def _deadline(self) -> float | None:
        return self._last_speak + SPEAK_PAUSE_S if self._buffer else None


# ---------------------------------------------------------------------------------------
# Server


class _ConnectionList(list[ConnectionRecord]):
    """The simulator's ``connections``; appending wakes ``wait_connection``."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = trio.Event()

    def append(self, record: ConnectionRecord) -> None:
        super().append(record)
        self.changed.set()
        self.changed = trio.Event()


class _PingTap:
    """Stands in for a connection's wsproto object to see Ping events (trio-websocket
    answers pings internally and offers no hook)."""

    def __init__(self, inner: Any, on_ping: Any) -> None:
        self._inner = inner
        self._on_ping = on_ping

    def events(self) -> Any:
        for event in self._inner.events():
            if isinstance(event, wsproto.events.Ping):
                self._on_ping(bytes(event.payload))
            yield event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class DeepgramSimulator:
    """Serves the Deepgram WebSocket APIs (agent, listen and speak v1, Flux v2) and records
    every connection."""

    def __init__(self, *, api_key: str, listen_idle_timeout: float = 10.0) -> None:
        self._api_key = api_key
        self._listen_idle_timeout = listen_idle_timeout
        self.connections: list[ConnectionRecord] = _ConnectionList()
        self._pings: dict[int, list[bytes]] = {}

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; ``task_status.started(bound_port)``."""
        await serve_websocket(
            self._handle,
            self.connections,
            host,
            port,
            task_status=task_status,
            fault_kinds=DEEPGRAM_FAULT_KINDS,
        )

    def pings(self, record: ConnectionRecord) -> list[bytes]:
        """Payloads of the pings received on that connection, in order."""
        return self._pings.setdefault(id(record), [])

    async def wait_connection(self, index: int = 0) -> ConnectionRecord:
        """The ``index``-th connection, once it has sent its request head."""
        conns = self.connections
        assert isinstance(conns, _ConnectionList)
        while len(conns) <= index:
            await conns.changed.wait()
        return conns[index]

    # -- per connection
    def _authenticate(self, record: ConnectionRecord) -> str | None | bool:
        """False = refuse; otherwise the subprotocol to echo (None = none)."""
        key = self._api_key.encode()
        header = record.header("authorization") or ""
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() == "token" and hmac.compare_digest(credential.strip().encode(), key):
            return None
        offered = record.subprotocols
        for i, proto in enumerate(offered[:-1]):
            if proto.lower() == "token" and hmac.compare_digest(offered[i + 1].encode(), key):
                return proto
        return False

    def _tap_pings(self, conn: SimConnection) -> None:
        ws = getattr(conn.request, "_connection", None)
        inner = getattr(ws, "_wsproto", None)
        if inner is None:
            return
        record = conn.record
        pings = self.pings(record)

        def on_ping(payload: bytes) -> None:
            pings.append(payload)
            record.notify()

        ws._wsproto = _PingTap(inner, on_ping)  # type: ignore[union-attr]

    def _session(self, record: ConnectionRecord, now: float) -> _Session:
        fault = record.fault
        common: dict[str, Any] = {
            "now": now,
            "fault": fault,
            "close_reason": record.query_value(CLOSE_REASON_PARAM) or "simulated close",
        }
        if record.path == AGENT_PATH:
            return AgentSession(
                json_binary=_truthy(record.query_value(JSON_BINARY_PARAM)), **common
            )
        if record.path == LISTEN_PATH:
            return ListenSession(
                options=ListenOptions.from_query(record.query),
                idle_timeout=self._listen_idle_timeout,
                **common,
            )
        if record.path in (LISTEN_V2_PATH, SPEAK_V2_PATH):
            from voxgate.simulate import deepgram_v2

            if record.path == SPEAK_V2_PATH:
                return deepgram_v2.SpeakV2Session.from_query(record.query, **common)
            try:
                options, problem = deepgram_v2.FluxOptions.from_query(record.query), None
            except deepgram_v2.FluxParamError as exc:
                options, problem = None, str(exc)
            return deepgram_v2.FluxSession(
                options=options,
                param_error=problem,
                idle_timeout=self._listen_idle_timeout,
                **common,
            )
        return SpeakSession.from_query(record.query, **common)

    async def _handle(self, conn: SimConnection) -> None:
        record = conn.record
        request_id = str(uuid.uuid4())
        if record.path not in PATHS:
            await conn.reject(
                404, {"err_code": "NOT_FOUND", "err_msg": "Not Found", "request_id": request_id}
            )
            return
        subprotocol = self._authenticate(record)
        if subprotocol is False:
            await conn.reject(
                401,
                {
                    "err_code": "INVALID_AUTH",
                    "err_msg": "Invalid credentials.",
                    "request_id": request_id,
                },
            )
            return
        try:
            session = self._session(record, trio.current_time())
        except BadRequest as exc:
            await conn.reject(
                400, {"err_code": "Bad Request", "err_msg": str(exc), "request_id": request_id}
            )
            return
        self._tap_pings(conn)
        await conn.accept(subprotocol or None)
        await run_session(conn, session)


async def run(host: str, port: int, api_key: str) -> None:
    """Serve until cancelled (``voxgate simulate deepgram``); prints the URL once bound."""
    simulator = DeepgramSimulator(api_key=api_key)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(simulator.serve, host, port)
        print(f"deepgram simulator listening on ws://{host}:{bound}", flush=True)
