"""The simulated Deepgram streaming TTS, v1 (``/v1/speak``).

``Metadata`` after the 101; ``Speak`` buffers text, ``Flush`` returns a tone of
``SPEAK_MS_PER_CHAR`` per character then ``Flushed``; text left buffered is spoken (without
``Flushed``) once no ``Speak`` came for ``SPEAK_PAUSE_S``; ``Clear`` -> ``Cleared``,
``Close`` -> 1000.
"""

from __future__ import annotations

import uuid
from typing import Any

from voxgate.simulate.audio import bytes_per_sample
from voxgate.simulate.deepgram.session import (
    UNPARSABLE,
    UNPARSABLE_TEXT,
    BadRequest,
    DeepgramSession,
    json_object,
    query_dict,
)
from voxgate.simulate.driver import Close
from voxgate.simulate.faults import Fault

__all__ = ["SPEAK_ENCODINGS", "SPEAK_MS_PER_CHAR", "SpeakSession"]

SPEAK_ENCODINGS = ("linear16", "mulaw", "alaw")
SPEAK_MS_PER_CHAR = 50  # speak audio length per buffered character
# Speak text without a Flush is spoken once no Speak arrived for this long: Flush only
# saves the wait for more text (Deepgram's starter apps never send it).
SPEAK_PAUSE_S = 0.5


class SpeakSession(DeepgramSession):
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
        q = query_dict(query)
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
        msg = json_object(message)
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
        return samples * bytes_per_sample(self.encoding)

    def _speak_buffer(self) -> None:
        text = "".join(self._buffer)
        self._buffer.clear()
        if text:
            self._emit_tone(len(text) * SPEAK_MS_PER_CHAR, rate=self.sample_rate, encoding=self.encoding, freq=330.0)

    def _flush(self) -> None:
        self._speak_buffer()
        self._emit({"type": "Flushed", "sequence_id": self._next_sequence()})

    def _tick(self, now: float) -> None:
        if not self._ended and self._buffer and now >= self._last_speak + SPEAK_PAUSE_S:
            self._speak_buffer()

    def _deadline(self) -> float | None:
        return self._last_speak + SPEAK_PAUSE_S if self._buffer else None
