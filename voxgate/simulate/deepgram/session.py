"""What every simulated Deepgram endpoint shares: the sans-IO session base (an outbox with
not-before times and the post-101 fault plan), the error texts, and small parsing helpers.

Each endpoint module (``agent``, ``listen``, ``speak``, ``flux``) subclasses
``DeepgramSession`` and fills in its hooks; ``voxgate.simulate.driver.run_session`` drives it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson

from voxgate.simulate.audio import EnergyVad, bytes_per_sample, encode_pcm16, tone_pcm16
from voxgate.simulate.driver import Close, Drop, Outgoing
from voxgate.simulate.faults import Fault

__all__ = [
    "AUDIO_CHUNK_MS",
    "GARBAGE_FRAME",
    "NET0001_REASON",
    "UNPARSABLE",
    "UNPARSABLE_TEXT",
    "BadRequest",
    "DeepgramSession",
    "energy_vad",
    "json_object",
    "query_dict",
    "seconds",
    "truthy",
]

#: Close reason Deepgram sends (code 1011) when a listen stream gets nothing for ~10 s.
NET0001_REASON = (
    "Deepgram did not receive audio data or a text message within the timeout window. "
    "See https://dpgr.am/net0001"
)

GARBAGE_FRAME = "sim garbage: this frame is not JSON {"

AUDIO_CHUNK_MS = 100  # agent/speak audio goes out in frames of this length
VAD_WINDOW_S = 0.02
VAD_THRESHOLD = 0.02  # RMS (0..1) above which a window counts as speech

UNPARSABLE = "UNPARSABLE_CLIENT_MESSAGE"
UNPARSABLE_TEXT = "Text message received from client did not match any of the formats we expect."


class BadRequest(ValueError):
    """A query the real API refuses at the handshake (HTTP 400)."""


def energy_vad(samples_per_second: int) -> EnergyVad:
    """The "listener" of every Deepgram endpoint (20 ms windows, RMS >= 0.02 is speech)."""
    return EnergyVad(samples_per_second, window_s=VAD_WINDOW_S, threshold=VAD_THRESHOLD)


def json_object(message: str | bytes) -> dict[str, Any] | None:
    """The message as a JSON object, or None (not JSON, or not an object)."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def query_dict(query: list[tuple[str, str]]) -> dict[str, str]:
    """Query pairs as a dict; the first value of a repeated name wins."""
    q: dict[str, str] = {}
    for k, v in query:
        q.setdefault(k, v)
    return q


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def seconds(x: float) -> float:
    """A time as Deepgram reports it (milliseconds precision)."""
    return round(x, 3)


def _chunks(data: bytes, size: int) -> list[bytes]:
    size = max(size, 1)
    return [data[i : i + size] for i in range(0, len(data), size)]


class DeepgramSession:
    """FIFO outbox with optional not-before times, plus the post-101 fault plan; what
    ``run_session`` drives."""

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

    def _emit_tone(self, duration_ms: float, *, rate: int, encoding: str, freq: float) -> None:
        """Queue the simulated voice: a tone in ``encoding``, as binary frames of
        ``AUDIO_CHUNK_MS`` each."""
        audio = encode_pcm16(tone_pcm16(duration_ms, rate=rate, freq=freq), encoding)
        for frame in _chunks(audio, rate * AUDIO_CHUNK_MS // 1000 * bytes_per_sample(encoding)):
            self._emit(frame)
