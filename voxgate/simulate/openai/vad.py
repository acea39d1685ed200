"""Server VAD of the simulated Realtime session, energy based.

A 20 ms window of PCM16 24 kHz input whose RMS exceeds ``threshold * 0.05`` (full scale 1.0)
is speech; ``silence_duration_ms`` of quiet windows ends the turn. ``ServerVad`` is the state
machine only: the session turns its "started"/"stopped" into events, commits and responses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from voxgate.simulate.audio import rms_pcm16
from voxgate.simulate.openai.protocol import new_id
from voxgate.workers.openai.turn_detection import SERVER_VAD

__all__ = ["VAD_WINDOW_MS", "ServerVad"]

VAD_WINDOW_MS = 20
VAD_RMS_PER_THRESHOLD = 0.05
_WINDOW_BYTES = VAD_WINDOW_MS * 48  # PCM16 at 24 kHz


@dataclass
class ServerVad:
    """Turn state of one connection (``carry``: input bytes short of a whole window)."""

    speaking: bool = False
    item_id: str = ""
    start_ms: float = 0.0
    last_loud_end_ms: float = 0.0
    silence_ms: float = 0.0
    carry: bytearray = field(default_factory=bytearray)

    def windows(self, data: bytes) -> list[bytes]:
        """Whole windows completed by ``data``; the rest is carried to the next append."""
        self.carry += data
        out = []
        while len(self.carry) >= _WINDOW_BYTES:
            out.append(bytes(self.carry[:_WINDOW_BYTES]))
            del self.carry[:_WINDOW_BYTES]
        return out

    def step(
        self, chunk: bytes, start_ms: float, end_ms: float, td: dict[str, Any]
    ) -> Literal["started", "stopped"] | None:
        """Classify one window (audio clock ``start_ms``..``end_ms``); say whether a turn
        started or stopped with it."""
        loud = rms_pcm16(chunk) > float(td.get("threshold", 0.5)) * VAD_RMS_PER_THRESHOLD
        if not self.speaking:
            if not loud:
                return None
            self.speaking = True
            self.item_id = new_id("item")
            self.start_ms = start_ms
            self.last_loud_end_ms = end_ms
            self.silence_ms = 0.0
            return "started"
        if loud:
            self.last_loud_end_ms = end_ms
            self.silence_ms = 0.0
            return None
        self.silence_ms += VAD_WINDOW_MS
        if self.silence_ms < td.get("silence_duration_ms", SERVER_VAD["silence_duration_ms"]):
            return None
        self.speaking = False
        return "stopped"

    @property
    def heard_seconds(self) -> float:
        """Length of the last turn's speech, first loud window to last."""
        return (self.last_loud_end_ms - self.start_ms) / 1000
