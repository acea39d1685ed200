"""The simulated Deepgram's v2 APIs: Flux turn-based recognition (``/v2/listen``) and Flux
turn-based TTS (``/v2/speak``).

Message shapes follow the types of the official ``deepgram-sdk`` 7 (``listen.v2`` and
``speak.v2``), which are the contract voxgate's users code against; timing and "speech"
come from the same energy VAD as ``/v1/listen``. Where Deepgram's docs are silent the choice
is marked "simulator choice".

Flux (``FluxSession``): ``Connected``, then ``TurnInfo`` events driven by the VAD:
``StartOfTurn`` when speech begins, ``Update`` every ``FLUX_UPDATE_S`` of audio,
``EagerEndOfTurn``/``TurnResumed`` (only with ``eager_eot_threshold``) and ``EndOfTurn``
(trigger ``model``, ``timeout`` after ``eot_timeout_ms`` of silence, or ``manual`` after
``ForceEndTurn``). End-of-turn confidence rises linearly with trailing silence, reaching 1.0
after ``FLUX_FULL_CONFIDENCE_S``. ``Configure`` answers ``ConfigureSuccess`` or
``ConfigureFailure``; ``CloseStream`` ends an open turn and closes 1000. Out-of-range
query parameters get one ``Error`` and close 1008 (simulator choice: the SDK models a fatal
``Error``; a missing model or an unknown encoding is an HTTP 400 as on v1). No audio or
message for the idle timeout: ``Error`` (``NET-0001``), close 1011, as on v1 (there is no
``KeepAlive`` on Flux; an unknown message gets a ``Warning``).

Speak v2 (``SpeakV2Session``): ``Connected``; ``Speak`` buffers text; ``Flush`` speaks the
turn as ``SpeechStarted``, audio, ``SpeechMetadata``, then ``Flushed``; ``Configure``
changes the speed; ``Close`` sends ``SessionMetadata`` and closes 1000.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from voxgate.simulate.audio import decode_audio
from voxgate.simulate.deepgram.session import (
    NET0001_REASON,
    UNPARSABLE,
    UNPARSABLE_TEXT,
    BadRequest,
    DeepgramSession,
    energy_vad,
    json_object,
    query_dict,
    seconds,
)
from voxgate.simulate.deepgram.speak import SPEAK_ENCODINGS, SPEAK_MS_PER_CHAR
from voxgate.simulate.driver import Close
from voxgate.simulate.faults import Fault

__all__ = ["FluxOptions", "FluxParamError", "FluxSession", "SpeakV2Session"]

FLUX_ENCODINGS = ("linear16", "linear32", "mulaw", "alaw", "opus", "ogg-opus")
FLUX_UPDATE_S = 0.25  # an Update per this much transcribed audio (Deepgram's documented cadence)
FLUX_FULL_CONFIDENCE_S = 0.5  # trailing silence at which end-of-turn confidence reaches 1.0
FLUX_SPEECH_CONFIDENCE = 0.05  # end-of-turn confidence while the user is speaking
SPEAK_V2_SPEEDS = (0.7, 1.5)


class FluxParamError(ValueError):
    """A query value out of its documented range: answered with ``Error`` after the 101."""


def _threshold(q: dict[str, str], name: str, low: float, high: float, default: float | None) -> float | None:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise FluxParamError(f"Invalid value for {name}: {raw!r}") from None
    if not low <= value <= high:
        raise FluxParamError(f"{name} must be between {low:g} and {high:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class FluxOptions:
    """The ``/v2/listen`` query parameters the simulator acts on (ranges from Deepgram's
    end-of-turn configuration docs)."""

    model: str = "flux-general-en"
    encoding: str = "linear16"
    sample_rate: int = 16000
    eot_threshold: float = 0.7
    eager_eot_threshold: float | None = None
    eot_timeout_ms: int = 5000
    keyterms: tuple[str, ...] = ()

    @classmethod
    def from_query(cls, query: list[tuple[str, str]]) -> FluxOptions:
        """Raises BadRequest (HTTP 400) or FluxParamError (``Error`` after the 101)."""
        q = query_dict(query)
        model = q.get("model") or ""
        if not model.startswith("flux-"):
            raise BadRequest(f"A Flux model is required on /v2/listen, got {model!r}")
        encoding = q.get("encoding") or "linear16"
        if encoding not in FLUX_ENCODINGS:
            raise BadRequest(f"Unsupported encoding: {encoding!r}")
        raw_rate = q.get("sample_rate") or "16000"
        try:
            rate = int(raw_rate)
        except ValueError:
            raise BadRequest(f"Invalid value for sample_rate: {raw_rate!r}") from None
        if rate <= 0:
            raise BadRequest(f"Invalid value for sample_rate: {raw_rate!r}")
        eot = _threshold(q, "eot_threshold", 0.5, 1.0, 0.7)
        eager = _threshold(q, "eager_eot_threshold", 0.3, 0.9, None)
        if eager is not None and eot is not None and eager > eot:
            raise FluxParamError("eager_eot_threshold must not exceed eot_threshold")
        timeout = _threshold(q, "eot_timeout_ms", 500, 60000, 5000)
        return cls(
            model=model,
            encoding=encoding,
            sample_rate=rate,
            eot_threshold=eot if eot is not None else 0.7,
            eager_eot_threshold=eager,
            eot_timeout_ms=int(timeout if timeout is not None else 5000),
            keyterms=tuple(v for k, v in query if k == "keyterm"),
        )


class FluxSession(DeepgramSession):
    """Flux conversational recognition (``/v2/listen``); see the module docstring."""

    def __init__(
        self,
        *,
        now: float,
        options: FluxOptions | None = None,
        param_error: str | None = None,
        idle_timeout: float = 10.0,
        request_id: str | None = None,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.options = options or FluxOptions()
        self.request_id = request_id or str(uuid.uuid4())
        self._param_error = param_error
        self._sequence = 0
        self._idle_timeout = idle_timeout
        self._last_activity = now
        self._eot = self.options.eot_threshold
        self._eager = self.options.eager_eot_threshold
        self._eot_timeout_ms = self.options.eot_timeout_ms
        self._keyterms = list(self.options.keyterms)
        self._vad = energy_vad(self.options.sample_rate)
        self.turn_index = 0
        self._in_turn = False
        self._eager_sent = False
        self._turn_start = 0.0  # audio_window_start of the current turn
        self._speech_start = 0.0
        self._speech_end = 0.0
        self._silence = 0.0
        self._last_update = 0.0
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    def _start(self, now: float) -> None:
        self._send({"type": "Connected", "request_id": self.request_id})
        if self._param_error is not None:
            self._send({"type": "Error", "code": "INVALID_QUERY_PARAMETER", "description": self._param_error})
            self._end(Close(1008, "Invalid query parameter."))

    def _send(self, message: dict[str, Any]) -> None:
        """Every server message carries the next ``sequence_id`` (and the request id where
        the SDK's type has one)."""
        if message["type"] != "Error":
            message.setdefault("request_id", self.request_id)
        message["sequence_id"] = self._sequence
        self._sequence += 1
        self._emit(message)

    # -- input
    def _on_text(self, message: str, now: float) -> None:
        self._last_activity = now
        msg = json_object(message)
        kind = msg.get("type") if msg is not None else None
        if kind == "CloseStream":
            self._run_windows(self._vad.flush())
            if self._in_turn:
                self._end_of_turn("manual")
            self._end(Close(1000))
        elif kind == "ForceEndTurn":
            self._run_windows(self._vad.flush())
            if self._in_turn:
                self._end_of_turn("manual")
        elif kind == "Configure" and msg is not None:
            self._configure(msg)
        else:
            # Simulator choice: a Warning, connection kept open.
            self._send({"type": "Warning", "code": UNPARSABLE, "description": UNPARSABLE_TEXT})

    def _on_binary(self, message: bytes, now: float) -> None:
        self._last_activity = now
        self._run_windows(self._vad.feed(decode_audio(message, self.options.encoding)))

    def _configure(self, msg: dict[str, Any]) -> None:
        thresholds = msg.get("thresholds") or {}
        limits = {"eot_threshold": (0.5, 1.0), "eager_eot_threshold": (0.3, 0.9), "eot_timeout_ms": (500, 60000)}
        if not isinstance(thresholds, dict):
            thresholds = {"thresholds": thresholds}
        for name, value in thresholds.items():
            low, high = limits.get(name, (None, None))
            ok = low is not None and isinstance(value, int | float) and not isinstance(value, bool)
            if not ok or not low <= value <= high:
                self._send(
                    {
                        "type": "ConfigureFailure",
                        "code": "INVALID_THRESHOLD",
                        "description": f"Invalid value for thresholds.{name}: {value!r}",
                    }
                )
                return
        self._eot = float(thresholds.get("eot_threshold", self._eot))
        self._eager = thresholds.get("eager_eot_threshold", self._eager)
        self._eot_timeout_ms = int(thresholds.get("eot_timeout_ms", self._eot_timeout_ms))
        keyterms = msg.get("keyterms")
        if isinstance(keyterms, str):
            keyterms = [keyterms]
        if isinstance(keyterms, list):
            self._keyterms = [str(k) for k in keyterms]
        self._send(
            {
                "type": "ConfigureSuccess",
                "thresholds": {
                    "eot_threshold": self._eot,
                    "eager_eot_threshold": self._eager,
                    "eot_timeout_ms": self._eot_timeout_ms,
                },
                "keyterms": self._keyterms,
            }
        )

    # -- turn logic
    def _confidence(self) -> float:
        if self._silence <= 0:
            return FLUX_SPEECH_CONFIDENCE
        return round(min(1.0, self._silence / FLUX_FULL_CONFIDENCE_S), 3)

    def _run_windows(self, windows: list[tuple[float, float, bool]]) -> None:
        for start, end, speech in windows:
            if self._ended:
                return
            if speech:
                self._silence = 0.0
                if not self._in_turn:
                    self._in_turn = True
                    self._eager_sent = False
                    self._speech_start = start
                    self._speech_end = end
                    self._turn_info("StartOfTurn")
                    continue
                self._speech_end = end
                if self._eager_sent:
                    self._eager_sent = False
                    self._turn_info("TurnResumed")
                    continue
            elif self._in_turn:
                self._silence += end - start
                confidence = self._confidence()
                if self._silence * 1000 >= self._eot_timeout_ms:
                    self._end_of_turn("timeout")
                    continue
                if confidence >= self._eot:
                    self._end_of_turn("model")
                    continue
                if self._eager is not None and not self._eager_sent and confidence >= self._eager:
                    self._eager_sent = True
                    self._turn_info("EagerEndOfTurn")
                    continue
            if end - self._last_update >= FLUX_UPDATE_S:
                self._turn_info("Update")

    def _end_of_turn(self, trigger: str) -> None:
        self._turn_info("EndOfTurn", trigger=trigger)
        self.turn_index += 1
        self._in_turn = False
        self._eager_sent = False
        self._silence = 0.0
        self._turn_start = self._vad.time

    def _turn_info(self, event: str, trigger: str | None = None) -> None:
        now = self._vad.time
        self._last_update = now
        transcript, words = self._transcript()
        message: dict[str, Any] = {
            "type": "TurnInfo",
            "event": event,
            "turn_index": self.turn_index,
            "audio_window_start": seconds(self._turn_start),
            "audio_window_end": seconds(now),
            "transcript": transcript,
            "words": words,
            "end_of_turn_confidence": 1.0 if trigger else self._confidence(),
        }
        if trigger is not None:
            message["trigger"] = trigger
        self._send(message)

    def _transcript(self) -> tuple[str, list[dict[str, Any]]]:
        """``tone N.N seconds`` for the turn's speech, as on ``/v1/listen``."""
        if not self._in_turn:
            return "", []
        start, end = self._speech_start, self._speech_end
        words = ["tone", f"{end - start:.1f}", "seconds"]
        step = (end - start) / len(words)
        return " ".join(words), [
            {"word": w, "confidence": 0.99, "start": seconds(start + i * step), "end": seconds(start + (i + 1) * step)}
            for i, w in enumerate(words)
        ]

    # -- timers
    def _tick(self, now: float) -> None:
        if not self._ended and now >= self._last_activity + self._idle_timeout:
            self._send({"type": "Error", "code": "NET-0001", "description": NET0001_REASON})
            self._end(Close(1011, NET0001_REASON))

    def _deadline(self) -> float | None:
        return self._last_activity + self._idle_timeout


def _speed(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    return float(value) if SPEAK_V2_SPEEDS[0] <= value <= SPEAK_V2_SPEEDS[1] else None


class SpeakV2Session(DeepgramSession):
    """Flux turn-based TTS (``/v2/speak``); see the module docstring."""

    def __init__(
        self,
        *,
        now: float,
        model: str = "flux-alexis-en",
        encoding: str = "linear16",
        sample_rate: int = 24000,
        speed: float = 1.0,
        request_id: str | None = None,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.request_id = request_id or str(uuid.uuid4())
        self.model = model
        self.encoding = encoding
        self.sample_rate = sample_rate
        self.speed = speed
        self._buffer: list[str] = []
        self._turns = 0
        self._total_ms = 0
        self._total_chars = 0
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    @classmethod
    def from_query(cls, query: list[tuple[str, str]], **kwargs: Any) -> SpeakV2Session:
        q = query_dict(query)
        model = q.get("model") or ""
        if not model.startswith("flux-"):
            raise BadRequest(f"A Flux TTS model (flux-<voice>-<language>) is required on /v2/speak, got {model!r}")
        encoding = q.get("encoding") or "linear16"
        if encoding not in SPEAK_ENCODINGS:
            raise BadRequest(f"Unsupported encoding for streaming TTS: {encoding!r}")
        raw_rate = q.get("sample_rate") or ("8000" if encoding != "linear16" else "24000")
        allowed = ("8000", "16000") if encoding != "linear16" else ("8000", "16000", "24000", "32000", "44100", "48000")
        if raw_rate not in allowed:
            raise BadRequest(f"Invalid value for sample_rate: {raw_rate!r}")
        speed = 1.0
        if q.get("speed"):
            parsed = _speed(q["speed"])
            if parsed is None:
                raise BadRequest(f"Invalid value for speed: {q['speed']!r}")
            speed = parsed
        return cls(model=model, encoding=encoding, sample_rate=int(raw_rate), speed=speed, **kwargs)

    def _start(self, now: float) -> None:
        self._emit(
            {
                "type": "Connected",
                "request_id": self.request_id,
                "model_name": self.model,
                "model_version": "sim",
                "model_uuids": [str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-model:{self.model}"))],
            }
        )

    def _warning(self, description: str) -> None:
        self._emit({"type": "Warning", "code": UNPARSABLE, "description": description})

    def _on_binary(self, message: bytes, now: float) -> None:
        self._warning("Binary messages are not accepted on this endpoint.")

    def _on_text(self, message: str, now: float) -> None:
        msg = json_object(message)
        kind = msg.get("type") if msg is not None else None
        if msg is None or not isinstance(kind, str):
            self._warning(UNPARSABLE_TEXT)
        elif kind == "Speak":
            text = msg.get("text")
            if isinstance(text, str):
                self._buffer.append(text)
            else:
                self._warning("Speak messages need a text field.")
        elif kind == "Flush":
            self._flush()
        elif kind == "Configure":
            self._configure(msg)
        elif kind == "Interrupt":
            # Simulator choice: turns are synthesised at once, so there is never audio
            # left to interrupt; pending text is dropped.
            self._buffer.clear()
        elif kind == "Close":
            self._emit(
                {
                    "type": "SessionMetadata",
                    "total_audio_duration_ms": self._total_ms,
                    "total_input_character_count": self._total_chars,
                    "total_billable_character_count": self._total_chars,
                }
            )
            self._end(Close(1000))
        else:
            self._warning(UNPARSABLE_TEXT)

    def _configure(self, msg: dict[str, Any]) -> None:
        speed = _speed(msg.get("speed"))
        if speed is None:
            self._emit(
                {
                    "type": "ConfigureFailure",
                    "code": "SPEED_OUT_OF_RANGE",
                    "field": "speed",
                    "description": f"speed must be between {SPEAK_V2_SPEEDS[0]} and {SPEAK_V2_SPEEDS[1]}.",
                }
            )
            return
        self.speed = speed
        self._emit({"type": "ConfigureSuccess", "applied": {"speed": speed}})

    def audio_ms_for(self, text: str) -> int:
        """Length of the audio a turn of ``text`` produces at the current speed."""
        return int(len(text) * SPEAK_MS_PER_CHAR / self.speed)

    def _flush(self) -> None:
        text = "".join(self._buffer)
        self._buffer.clear()
        self._turns += 1
        speech_id = "dg_sp_" + uuid.uuid5(uuid.NAMESPACE_URL, f"{self.request_id}:{self._turns}").hex[:12]
        if text:
            duration = self.audio_ms_for(text)
            self._emit({"type": "SpeechStarted", "speech_id": speech_id})
            self._emit_tone(duration, rate=self.sample_rate, encoding=self.encoding, freq=330.0)
            self._total_ms += duration
            self._total_chars += len(text)
            self._emit(
                {
                    "type": "SpeechMetadata",
                    "speech_id": speech_id,
                    "audio_duration_ms": duration,
                    "input_character_count": len(text),
                    "billable_character_count": len(text),
                    "controls_applied": {
                        "pronunciations_applied": 0,
                        "breaks_applied": 0,
                        "pronunciation_warnings": 0,
                    },
                }
            )
        self._emit({"type": "Flushed", "speech_id": speech_id})
