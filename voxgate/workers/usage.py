"""Usage metering of one session: audio seconds, OpenAI tokens, speak characters.

The hot paths only count bytes (the splice counts binary payload bytes per direction); this
module turns them into seconds when a report is taken, with the encoding and rate the session
declared. A declared format that changes mid-session folds the bytes so far at the old rate.
Encodings whose bytes cannot be turned into time (opus, mp3, containers) are reported in bytes
with `None` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from voxgate.workers.message_filter import MessageFilter

# bytes per sample of the raw encodings both providers declare
BYTES_PER_SAMPLE = {"linear16": 2, "pcm16": 2, "linear32": 4, "mulaw": 1, "alaw": 1, "g711_ulaw": 1, "g711_alaw": 1}
RESPONSE_DONE = MessageFilter("response.done")
TOKEN_KINDS = ("input_text", "input_audio", "output_text", "output_audio", "cached")


def bytes_per_second(encoding: Any, sample_rate: Any, channels: Any = 1) -> float | None:
    """PCM bytes per second of a declared format, or None when it cannot be known."""
    width = BYTES_PER_SAMPLE.get(str(encoding).lower()) if encoding else None
    try:
        rate = int(sample_rate)
        chans = int(channels or 1)
    except (TypeError, ValueError):
        return None
    if width is None or rate <= 0 or chans <= 0:
        return None
    return float(width * rate * chans)


class AudioMeter:
    """Seconds of audio one direction carried, from a byte count read at report time."""

    __slots__ = ("_read", "_rate", "_base", "_seconds", "_known")

    def __init__(self, read: Callable[[], int], rate: float | None = None) -> None:
        self._read = read
        self._rate = rate
        self._base = 0
        self._seconds = 0.0
        self._known = rate is not None

    def set_rate(self, rate: float | None, *, retroactive: bool = False) -> None:
        """The session declared (another) format: bytes so far count at the previous rate,
        or, `retroactive`, at this one (a protocol whose first message declares it)."""
        if rate == self._rate:
            return
        now = self._read()
        if retroactive:
            self._seconds = 0.0
            now = 0
        elif self._rate:
            self._seconds += (now - self._base) / self._rate
        self._base = now
        self._rate = rate
        self._known = self._known or rate is not None

    def bytes(self) -> int:
        return self._read()

    def seconds(self) -> float | None:
        if not self._known:
            return None
        extra = (self._read() - self._base) / self._rate if self._rate else 0.0
        return round(self._seconds + extra, 3)


class Usage:
    """Everything metered for one session; `snapshot()` is what reports and logs carry."""

    def __init__(self) -> None:
        self.audio_up: AudioMeter | None = None
        self.audio_down: AudioMeter | None = None
        self.tokens = dict.fromkeys(("input", "output", "total", *TOKEN_KINDS), 0)
        self.characters = 0

    def meter(self, up: Callable[[], int], down: Callable[[], int],
              up_rate: float | None = None, down_rate: float | None = None) -> None:
        self.audio_up = AudioMeter(up, up_rate)
        self.audio_down = AudioMeter(down, down_rate)

    def add_response_usage(self, usage: Any) -> None:
        """One `response.done`'s `usage` object (OpenAI Realtime)."""
        if not isinstance(usage, dict):
            return
        t = self.tokens
        for key in ("input", "output", "total"):
            value = usage.get(f"{key}_tokens")
            if isinstance(value, int):
                t[key] += value
        for side in ("input", "output"):
            details = usage.get(f"{side}_token_details")
            if not isinstance(details, dict):
                continue
            for kind in ("text", "audio"):
                value = details.get(f"{kind}_tokens")
                if isinstance(value, int):
                    t[f"{side}_{kind}"] += value
            if side == "input" and isinstance(details.get("cached_tokens"), int):
                t["cached"] += details["cached_tokens"]

    def snapshot(self) -> dict[str, Any]:
        up, down = self.audio_up, self.audio_down
        return {
            "audio_seconds": {
                "up": up.seconds() if up else None, "down": down.seconds() if down else None,
            },
            "audio_bytes": {"up": up.bytes() if up else 0, "down": down.bytes() if down else 0},
            "tokens": dict(self.tokens),
            "characters": self.characters,
        }


class ResponseDoneObserver:
    """Upstream observer of the raw relay: reads `usage` from `response.done` text messages and
    nothing else (a substring test rejects every other message before any decoding)."""

    wants_text = True

    def __init__(self, usage: Usage) -> None:
        self.usage = usage

    def observe_text(self, payload: bytes) -> list[bytes]:
        event = RESPONSE_DONE(payload)
        if event is not None and isinstance(event.get("response"), dict):
            self.usage.add_response_usage(event["response"].get("usage"))
        return []

    def observe_binary(self) -> None:
        pass
