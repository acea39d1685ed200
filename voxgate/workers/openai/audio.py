"""PCM16 helpers and the streaming linear resampler of the translator (openai-translator §2.3).

The resampler reproduces the reference's 16 kHz -> 24 kHz algorithm sample for sample, but keeps
the read position as an exact fraction instead of a float, so the output never depends on how
the input was chunked. It works for any integer rate pair (D4 input rates -> 24 kHz, D5 24 kHz ->
a client output rate). It never pitch-shifts: the step is always in_rate / out_rate.
"""

from __future__ import annotations

from math import gcd

import numpy as np

__all__ = [
    "OPENAI_RATE",
    "PCM16_SAMPLE_BYTES",
    "SUPPORTED_LINEAR16_RATES",
    "StreamResampler",
    "cumulative_output_samples",
    "pcm16_bytes",
    "pcm16_duration_ms",
    "pcm16_samples",
    "silence",
]

OPENAI_RATE = 24000
"""Sample rate of OpenAI Realtime `audio/pcm` in both directions."""

PCM16_SAMPLE_BYTES = 2

SUPPORTED_LINEAR16_RATES = frozenset({8000, 16000, 24000, 32000, 44100, 48000})
"""linear16 rates voxgate converts to/from 24 kHz (D4, D5); anything else is refused."""


def pcm16_samples(nbytes: int) -> int:
    """Whole mono PCM16 samples in `nbytes` bytes."""
    return nbytes // PCM16_SAMPLE_BYTES


def pcm16_bytes(samples: int) -> int:
    """Bytes taken by `samples` mono PCM16 samples."""
    return samples * PCM16_SAMPLE_BYTES


def pcm16_duration_ms(nbytes: int, rate: int) -> float:
    """Playback time of `nbytes` of mono PCM16 at `rate` Hz, in milliseconds."""
    return pcm16_samples(nbytes) * 1000.0 / rate


def silence(nbytes: int) -> bytes:
    """`nbytes` of PCM16 digital silence (zero samples); odd counts are rounded down."""
    return bytes(max(0, nbytes) & ~1)


def cumulative_output_samples(total_in: int, in_rate: int, out_rate: int) -> int:
    """Samples `StreamResampler` has produced after `total_in` input samples in total.

    Output sample k sits at input position k * in_rate / out_rate and exists once that position
    is <= the last input sample, so M >= 1 inputs give floor((M - 1) * out / in) + 1 outputs
    (16k -> 24k: floor((M - 1) * 3 / 2) + 1; 250 -> 374, 8192 -> 12287)."""
    if total_in <= 0:
        return 0
    return (total_in - 1) * out_rate // in_rate + 1


class StreamResampler:
    """Per-connection linear-interpolation resampler for mono little-endian PCM16.

    State: the not-yet-consumed tail of the input and the fractional read position. Output
    sample values are s0 * (1 - f) + s1 * f rounded half up (as JavaScript's Math.round) and
    clamped to int16. A position that falls between the last input sample and the next one waits
    for that next sample; a position exactly on an input sample is produced at once (its value is
    that sample), which is why the cumulative count is the closed formula above.
    """

    __slots__ = ("in_rate", "out_rate", "_den", "_step", "_buf", "_pos")

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._den = out_rate // g  # position unit: 1/_den of an input sample
        self._step = in_rate // g  # position advance per output sample
        self._buf = np.zeros(0, dtype=np.int64)
        self._pos = 0  # numerator, relative to _buf[0]

    @property
    def passthrough(self) -> bool:
        """True when input and output rates are equal (the output is the input)."""
        return self.in_rate == self.out_rate

    def reset(self) -> None:
        """Forget carried samples and position (a new, unrelated stream follows)."""
        self._buf = np.zeros(0, dtype=np.int64)
        self._pos = 0

    def _count(self, length: int) -> int:
        """Outputs available from position _pos in a buffer of `length` samples."""
        if length == 0:
            return 0
        limit = (length - 1) * self._den
        if self._pos > limit:
            return 0
        return (limit - self._pos) // self._step + 1

    def output_size(self, nbytes: int) -> int:
        """Bytes `push` would return for `nbytes` more input bytes, without changing state."""
        return pcm16_bytes(self._count(len(self._buf) + pcm16_samples(nbytes)))

    def push(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Feed one chunk of input PCM16; return the output PCM16 it completes (maybe b"").

        Raises ValueError on an odd byte length (the caller turns that into a client Error)."""
        n = len(pcm)
        if n % 2:
            raise ValueError("PCM16 chunk has an odd byte length")
        if n == 0:
            return b""
        # astype copies, so a buffer at an odd memory offset is never read in place.
        incoming = np.frombuffer(pcm, dtype="<i2").astype(np.int64)
        buf = np.concatenate((self._buf, incoming)) if len(self._buf) else incoming
        length = len(buf)
        count = self._count(length)
        den, step = self._den, self._step
        if count:
            pos = self._pos + np.arange(count, dtype=np.int64) * step
            i0 = pos // den
            frac = pos - i0 * den
            i1 = np.minimum(i0 + 1, length - 1)  # frac == 0 wherever i0 + 1 is out of range
            num = buf[i0] * (den - frac) + buf[i1] * frac
            out = np.clip((2 * num + den) // (2 * den), -32768, 32767).astype("<i2").tobytes()
        else:
            out = b""
        new_pos = self._pos + count * step
        drop = min(new_pos // den, length)
        self._buf = buf[drop:].copy()
        self._pos = new_pos - drop * den
        return out
