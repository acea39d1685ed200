"""Audio facts every simulator shares: PCM16 conversion, the G.711 codecs, the test tone and
energy-based voice detection.

Simulated upstreams have no speech model: "speech" is a window whose RMS energy passes a
threshold and their voice is a sine tone, so both simulators must agree on what a sample,
a codec and an energy are. Everything here is numpy only (``audioop`` is gone in 3.13).

G.711 follows the ITU-T G.191 reference software (``g711.c``), which is what "correct" means
on the two points where implementations disagree: a negative sample is taken as its one's
complement (``~x``) before quantising, and zero encodes as mu-law ``0xFF`` / A-law ``0xD5``.
Decoding returns the middle of each quantisation step.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "G711_ENCODINGS",
    "EnergyVad",
    "alaw_decode",
    "alaw_encode",
    "bytes_per_sample",
    "decode_audio",
    "encode_pcm16",
    "mulaw_decode",
    "mulaw_encode",
    "pcm16_samples",
    "rms",
    "rms_pcm16",
    "silence_pcm16",
    "tone_pcm16",
]

PCM16_FULL_SCALE = 32768.0
G711_ENCODINGS = ("mulaw", "alaw")

# ---------------------------------------------------------------------------------------
# PCM16


def pcm16_samples(pcm: bytes) -> np.ndarray:
    """PCM16 little-endian bytes as int16 samples (a trailing odd byte is ignored)."""
    return np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")


def tone_pcm16(
    duration_ms: float, *, rate: int = 24000, freq: float = 440.0, amplitude: float = 0.3
) -> bytes:
    """A sine tone as PCM16 little-endian mono (stands in for speech and for TTS)."""
    n = int(rate * duration_ms / 1000)
    t = np.arange(n, dtype=np.float64) / rate
    samples = np.sin(2 * np.pi * freq * t) * amplitude * 32767
    return samples.astype("<i2").tobytes()


def silence_pcm16(duration_ms: float, *, rate: int = 24000) -> bytes:
    return bytes(2 * int(rate * duration_ms / 1000))


def rms(samples: np.ndarray) -> float:
    """Root mean square of float samples in -1..1 (0.0 for no samples)."""
    if len(samples) == 0:
        return 0.0
    return float(np.sqrt(np.mean(samples * samples)))


def rms_pcm16(pcm: bytes) -> float:
    """Root mean square of PCM16 LE samples, scaled to 0.0 - 1.0 (odd tail byte ignored)."""
    return rms(pcm16_samples(pcm).astype(np.float64) / PCM16_FULL_SCALE)


# ---------------------------------------------------------------------------------------
# G.711 (ITU-T G.191 reference rules; see the module docstring)


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bit length of non-negative integers (0 for 0), exact for any int32."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int32)


def _sign_and_magnitude(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(samples).astype(np.int32)
    negative = x < 0
    return negative, np.where(negative, ~x, x)


def mulaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> mu-law codes (uint8)."""
    negative, mag = _sign_and_magnitude(samples)
    biased = np.minimum(mag, 32635) + 0x84  # 14-bit magnitude plus 33, as 16-bit
    exponent = _bit_length(biased) - 8
    mantissa = (biased >> (exponent + 3)) & 0x0F
    code = ~((exponent << 4) | mantissa) & 0x7F
    return np.where(negative, code, code | 0x80).astype(np.uint8)


def mulaw_decode(codes: np.ndarray) -> np.ndarray:
    """mu-law codes -> int16 samples (the middle of each step)."""
    u = ~np.asarray(codes).astype(np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mag = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -mag, mag).astype(np.int16)


def alaw_encode(samples: np.ndarray) -> np.ndarray:
    """int16 samples -> A-law codes (uint8)."""
    negative, mag = _sign_and_magnitude(samples)
    level = mag >> 4  # the 12 most significant bits: 0..2047
    segment = np.maximum(_bit_length(level) - 4, 0)
    mantissa = np.where(segment == 0, level, (level >> np.maximum(segment - 1, 0)) & 0x0F)
    code = (segment << 4) | mantissa
    return (np.where(negative, code, code | 0x80) ^ 0x55).astype(np.uint8)


def alaw_decode(codes: np.ndarray) -> np.ndarray:
    """A-law codes -> int16 samples (the middle of each step)."""
    a = np.asarray(codes).astype(np.int32) ^ 0x55
    segment = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(segment == 0, t + 8, (t + 0x108) << np.maximum(segment - 1, 0))
    return np.where(a & 0x80, t, -t).astype(np.int16)


def bytes_per_sample(encoding: str) -> int:
    """1 for G.711 (``mulaw``/``alaw``), else 2 (linear16)."""
    return 1 if encoding in G711_ENCODINGS else 2


def encode_pcm16(pcm: bytes, encoding: str) -> bytes:
    """PCM16 LE -> ``linear16`` (unchanged), ``mulaw`` or ``alaw``. Other encodings
    (mp3, opus, ...) are not synthesised: linear16 bytes are sent instead (simulator choice)."""
    if encoding not in G711_ENCODINGS:
        return pcm
    codec = mulaw_encode if encoding == "mulaw" else alaw_encode
    return codec(pcm16_samples(pcm)).tobytes()


def decode_audio(data: bytes, encoding: str) -> np.ndarray:
    """Bytes in ``encoding`` -> float samples in -1..1. Unknown encodings are read as
    linear16 (simulator choice); a trailing odd byte is ignored."""
    if encoding in G711_ENCODINGS:
        codes = np.frombuffer(data, dtype=np.uint8)
        pcm = mulaw_decode(codes) if encoding == "mulaw" else alaw_decode(codes)
    else:
        pcm = pcm16_samples(data)
    return pcm.astype(np.float64) / PCM16_FULL_SCALE


# ---------------------------------------------------------------------------------------
# Voice (energy) detection


class EnergyVad:
    """Cuts a sample stream into fixed windows and classifies each by RMS energy; stream
    time comes from sample counts, so results do not depend on how frames were cut."""

    def __init__(self, samples_per_second: int, *, window_s: float, threshold: float) -> None:
        self._rate = max(samples_per_second, 1)
        self._window = max(int(self._rate * window_s), 1)
        self._threshold = threshold
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
        return start, self.time, rms(window) >= self._threshold
