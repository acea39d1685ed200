"""The simulated Deepgram live transcription, v1 (``/v1/listen``).

Energy-VAD "transcripts" of the form ``tone 1.0 seconds`` (empty for silence), interim and
final ``Results``, ``SpeechStarted``, ``UtteranceEnd``, ``Finalize``, ``CloseStream`` and the
NET-0001 idle timeout, all in stream time counted from the samples received.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from voxgate.simulate.audio import decode_audio
from voxgate.simulate.deepgram.session import (
    NET0001_REASON,
    UNPARSABLE_TEXT,
    BadRequest,
    DeepgramSession,
    energy_vad,
    json_object,
    query_dict,
    seconds,
    truthy,
)
from voxgate.simulate.driver import Close
from voxgate.simulate.faults import Fault

__all__ = ["ListenOptions", "ListenSession"]

INTERIM_INTERVAL_S = 0.5  # listen interim Results at most this often (stream time)
# Deepgram answers silence too: a final Results with an empty transcript once this much
# silence has streamed, or once the audio has paused this long (wall time) with silence
# not yet reported (simulator choices for "a short while").
SILENCE_RESULT_S = 2.0
SILENCE_PAUSE_S = 0.5


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
        q = query_dict(query)

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
            interim_results=truthy(q.get("interim_results")),
            vad_events=truthy(q.get("vad_events")),
            utterance_end_ms=number("utterance_end_ms", None),
            endpointing_ms=endpointing,
        )


class ListenSession(DeepgramSession):
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
        self._vad = energy_vad(self.options.sample_rate * self.options.channels)
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
        msg = json_object(message)
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
                                "timestamp": seconds(start),
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
                        "last_word_end": seconds(self._last_word_end),
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
                "start": seconds(start + i * step),
                "end": seconds(start + (i + 1) * step),
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
                "duration": seconds(end - self._segment_start),
                "start": seconds(self._segment_start),
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
