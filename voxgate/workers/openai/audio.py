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


_PCM16 = np.dtype("<i2")  # a dtype object, not a string: no parsing per call

_Tables = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

_TABLE_BUDGET = 4 << 20
"""Bytes of cached tables per process. A recurring 8 KiB chunk at 16 kHz (6,144 outputs) takes
147 KiB, a 20 ms frame at most 23 KiB; a push whose tables would take more than a quarter of the
budget builds them on the fly, uncached."""

_tables: dict[tuple[int, int, int, int], _Tables] = {}
"""(den, step, pos, count) -> gather indices and weights, shared by every resampler: a stream of
fixed-size frames reaches the same few (pos, count) pairs over and over (16k -> 24k 20 ms frames:
one pair), so the index arithmetic runs once per process instead of once per frame. Oldest
entries go first when the budget is full."""
_table_bytes = 0


def _build_tables(den: int, step: int, pos: int, count: int, dtype: type) -> _Tables:
    """Indices of the two neighbours of every output position and their doubled weights."""
    p = pos + np.arange(count, dtype=np.int64) * step
    i0 = p // den
    frac = p - i0 * den
    tables = (
        i0.astype(np.intp),
        (i0 + 1).astype(np.intp),
        (2 * (den - frac)).astype(dtype),
        (2 * frac).astype(dtype),
    )
    for table in tables:
        table.flags.writeable = False  # shared between sessions
    return tables


def _cached_tables(den: int, step: int, pos: int, count: int, dtype: type) -> _Tables:
    global _table_bytes
    key = (den, step, pos, count)
    tables = _tables.get(key)
    if tables is not None:
        return tables
    tables = _build_tables(den, step, pos, count, dtype)
    size = sum(table.nbytes for table in tables)
    if size <= _TABLE_BUDGET // 4:
        while _tables and _table_bytes + size > _TABLE_BUDGET:
            _table_bytes -= sum(t.nbytes for t in _tables.pop(next(iter(_tables))))
        _tables[key] = tables
        _table_bytes += size
    return tables


class StreamResampler:
    """Per-connection linear-interpolation resampler for mono little-endian PCM16.

    State: the not-yet-consumed tail of the input (at most one sample: positions advance past
    the last input sample before a push returns) and the fractional read position. Output sample
    values are s0 * (1 - f) + s1 * f rounded half up (as JavaScript's Math.round). That value lies
    between s0 and s1, so it is always a valid int16 and needs no clamping. A position that falls
    between the last input sample and the next one waits for that next sample; a position exactly
    on an input sample is produced at once (its value is that sample), which is why the cumulative
    count is the closed formula above.

    Per push: one copy of the input into a work buffer (after the carried sample), two gathers
    through cached index tables, and integer arithmetic in place: (2 * num + den) // (2 * den)
    with num = s0 * (den - frac) + s1 * frac, exactly the reference's rounding.
    """

    __slots__ = (
        "in_rate", "out_rate", "_den", "_step", "_dtype", "_half", "_div", "_work", "_carry", "_pos",
    )

    _WORK_SAMPLES = 16384  # the work buffer grows to the chunk size up to this; bigger: temporary

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(in_rate, out_rate)
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._den = den = out_rate // g  # position unit: 1/_den of an input sample
        self._step = in_rate // g  # position advance per output sample
        # 2 * den * 32768 + den must fit the arithmetic type
        self._dtype = dtype = np.int32 if den < 1 << 14 else np.int64
        self._half = np.array(den, dtype)  # 0-d arrays: cheaper in-place operands than ints
        self._div = np.array(2 * den, dtype)
        self._work = np.zeros(1, dtype)  # grows to the chunk size on the first push
        self._carry = 0  # carried samples (0 or 1), at the front of _work
        self._pos = 0  # numerator, relative to the first carried/incoming sample

    @property
    def passthrough(self) -> bool:
        """True when input and output rates are equal (the output is the input)."""
        return self.in_rate == self.out_rate

    def reset(self) -> None:
        """Forget carried samples and position (a new, unrelated stream follows)."""
        self._carry = 0
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
        return pcm16_bytes(self._count(self._carry + pcm16_samples(nbytes)))

    def push(self, pcm: bytes | bytearray | memoryview) -> bytes:
        """Feed one chunk of input PCM16; return the output PCM16 it completes (maybe b"").

        Raises ValueError on an odd byte length (the caller turns that into a client Error)."""
        n = len(pcm)
        if n & 1:
            raise ValueError("PCM16 chunk has an odd byte length")
        if not n:
            return b""
        carry = self._carry
        length = carry + (n >> 1)
        work = self._work
        if length >= len(work):  # one slot spare: the right neighbour of the last sample
            work = np.zeros(length + 1, self._dtype)
            work[:carry] = self._work[:carry]
            if length < self._WORK_SAMPLES:
                self._work = work  # reused by the next chunks of this size
        # The copy converts, so a buffer at an odd memory offset is never read in place.
        work[carry:length] = np.frombuffer(pcm, _PCM16)
        den = self._den
        step = self._step
        pos = self._pos
        limit = (length - 1) * den
        if pos <= limit:
            count = (limit - pos) // step + 1
            i0, i1, w0, w1 = _tables.get((den, step, pos, count)) or _cached_tables(
                den, step, pos, count, self._dtype
            )
            # i1 may be `length` where the weight is 0: that slot holds a stale int16 value or
            # 0, and the product is exactly 0.
            num = work[i0]
            num *= w0
            right = work[i1]
            right *= w1
            num += right
            num += self._half
            num //= self._div
            out = num.astype(_PCM16).tobytes()
            pos += count * step
        else:
            out = b""
        drop = pos // den
        if drop > length:
            drop = length
        keep = length - drop  # 0 or 1
        if keep:
            self._work[0] = work[drop]
        self._carry = keep
        self._pos = pos - drop * den
        return out
