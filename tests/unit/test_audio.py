"""The streaming linear resampler and PCM helpers (openai-translator §2.3, D4, D5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxgate.workers.openai import audio
from voxgate.workers.openai.audio import (
    SUPPORTED_LINEAR16_RATES,
    StreamResampler,
    cumulative_output_samples,
    pcm16_bytes,
    pcm16_duration_ms,
    pcm16_samples,
    silence,
)


def pcm(samples: list[int] | np.ndarray) -> bytes:
    return np.asarray(samples, dtype="<i2").tobytes()


def samples_of(data: bytes) -> list[int]:
    return np.frombuffer(data, dtype="<i2").tolist()


class ReferenceResampler:
    """The first StreamResampler, kept as the oracle of the table-driven one: every output
    position computed from scratch in int64, then clipped. Slow and obviously right."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        g = math.gcd(in_rate, out_rate)
        self.den, self.step = out_rate // g, in_rate // g
        self.buf = np.zeros(0, dtype=np.int64)
        self.pos = 0

    def push(self, data: bytes) -> bytes:
        buf = np.concatenate((self.buf, np.frombuffer(data, dtype="<i2").astype(np.int64)))
        length, den, step = len(buf), self.den, self.step
        limit = (length - 1) * den
        count = 0 if length == 0 or self.pos > limit else (limit - self.pos) // step + 1
        out = b""
        if count:
            pos = self.pos + np.arange(count, dtype=np.int64) * step
            i0 = pos // den
            frac = pos - i0 * den
            i1 = np.minimum(i0 + 1, length - 1)
            num = buf[i0] * (den - frac) + buf[i1] * frac
            out = np.clip((2 * num + den) // (2 * den), -32768, 32767).astype("<i2").tobytes()
        new_pos = self.pos + count * step
        drop = min(new_pos // den, length)
        self.buf = buf[drop:].copy()
        self.pos = new_pos - drop * den
        return out


def test_empty_input_gives_empty_output():
    assert StreamResampler(16000, 24000).push(b"") == b""


def test_odd_byte_length_raises():
    with pytest.raises(ValueError):
        StreamResampler(16000, 24000).push(b"\x00\x00\x00")


def test_250_samples_give_374_samples():
    out = StreamResampler(16000, 24000).push(pcm([0] * 250))
    assert len(out) == 748


def test_two_4096_sample_chunks_give_12287_constant_samples():
    r = StreamResampler(16000, 24000)
    out = r.push(pcm([1234] * 4096)) + r.push(pcm([1234] * 4096))
    assert len(out) == 12287 * 2
    assert set(samples_of(out)) == {1234}


def test_960_bytes_at_16k_give_1438_bytes():
    # M1: 480 samples -> 719 samples at 24 kHz
    assert len(StreamResampler(16000, 24000).push(bytes(960))) == 1438


def test_interpolation_values_match_the_reference_positions():
    # outputs sit at input positions 0, 2/3, 4/3, 2, ... rounded half up
    out = samples_of(StreamResampler(16000, 24000).push(pcm([0, 3, 6, 9])))
    assert out == [0, 2, 4, 6, 8, 9][: len(out)]
    assert len(out) == cumulative_output_samples(4, 16000, 24000) == 5


def test_rounding_is_half_up_like_javascript():
    # 24k -> 16k: position 1.5 between 0 and 1 -> 0.5 -> 1; between -1 and 0 -> -0.5 -> 0
    assert samples_of(StreamResampler(24000, 16000).push(pcm([0, 0, 1, 0, 0]))) == [0, 1, 0]
    assert samples_of(StreamResampler(24000, 16000).push(pcm([0, -1, 0, 0])))[1] == 0


def test_extreme_values_stay_in_range():
    out = samples_of(StreamResampler(16000, 24000).push(pcm([32767, -32768] * 100)))
    assert max(out) <= 32767 and min(out) >= -32768


def test_buffer_at_an_odd_memory_offset_works():
    data = bytearray(b"\x00" + pcm(list(range(100))))
    view = memoryview(data)[1:]
    assert StreamResampler(16000, 24000).push(view) == StreamResampler(16000, 24000).push(
        pcm(list(range(100)))
    )


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 250, 479, 480, 8192])
def test_cumulative_count_formula_for_16k(total):
    r = StreamResampler(16000, 24000)
    produced = sum(len(r.push(pcm([7]))) for _ in range(total)) // 2
    assert produced == (total - 1) * 3 // 2 + 1 == cumulative_output_samples(total, 16000, 24000)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.integers(-32768, 32767), min_size=0, max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=8),
    rate=st.sampled_from(sorted(SUPPORTED_LINEAR16_RATES)),
    to_openai=st.booleans(),
)
def test_chunked_input_equals_one_buffer(data, cuts, rate, to_openai):
    in_rate, out_rate = (rate, 24000) if to_openai else (24000, rate)
    whole = StreamResampler(in_rate, out_rate).push(pcm(data))
    r = StreamResampler(in_rate, out_rate)
    bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
    chunked = b"".join(r.push(pcm(data[a:b])) for a, b in zip(bounds, bounds[1:], strict=False))
    assert chunked == whole
    assert len(whole) // 2 == cumulative_output_samples(len(data), in_rate, out_rate)


@pytest.mark.parametrize("rate", sorted(SUPPORTED_LINEAR16_RATES))
def test_constant_input_stays_constant_for_every_rate(rate):
    for in_rate, out_rate in ((rate, 24000), (24000, rate)):
        out = StreamResampler(in_rate, out_rate).push(pcm([-321] * 1000))
        assert set(samples_of(out)) == {-321}


@pytest.mark.parametrize("rate", [8000, 32000, 44100, 48000])
def test_duration_is_preserved_no_pitch_shift(rate):
    # one second in -> one second out, short only by the look-ahead held for the next chunk
    out = StreamResampler(rate, 24000).push(bytes(2 * rate))
    assert 0 <= 24000 - len(out) // 2 <= 24000 // rate


def test_same_rate_is_identity():
    r = StreamResampler(24000, 24000)
    assert r.passthrough
    data = pcm(list(range(-50, 50)))
    assert r.push(data) == data


def test_output_size_predicts_push_without_changing_state():
    r = StreamResampler(16000, 24000)
    r.push(pcm([1, 2, 3]))
    predicted = r.output_size(500)
    assert r.output_size(500) == predicted
    assert len(r.push(bytes(500))) == predicted


def test_reset_forgets_carried_samples():
    r = StreamResampler(16000, 24000)
    r.push(pcm([5, 5, 5]))
    r.reset()
    assert len(r.push(pcm([0] * 250))) == 748


def test_pcm_helpers():
    assert pcm16_samples(4801) == 2400
    assert pcm16_bytes(2400) == 4800
    assert pcm16_duration_ms(4800, 24000) == 100.0
    assert pcm16_duration_ms(48000, 24000) == 1000.0
    assert silence(4800) == bytes(4800)
    assert silence(5) == bytes(4)
    assert silence(-1) == b""
    assert cumulative_output_samples(0, 16000, 24000) == 0


def test_invalid_rates_rejected():
    with pytest.raises(ValueError):
        StreamResampler(0, 24000)


ANY_RATE = st.sampled_from(sorted(SUPPORTED_LINEAR16_RATES | {11025, 22050, 96000, 44101}))  # 44101: int64 path


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(st.integers(-32768, 32767), min_size=0, max_size=1500),
    sizes=st.lists(st.integers(0, 700), min_size=1, max_size=12),
    in_rate=ANY_RATE,
    out_rate=ANY_RATE,
    extremes=st.booleans(),
)
def test_fast_path_equals_reference_for_random_chunkings(data, sizes, in_rate, out_rate, extremes):
    # table cache, carried sample and work buffer must never change a single output byte
    if extremes:
        data = [32767 if v >= 0 else -32768 for v in data]
    fast, ref = StreamResampler(in_rate, out_rate), ReferenceResampler(in_rate, out_rate)
    at, i = 0, 0
    while at < len(data):
        chunk = pcm(data[at : at + sizes[i % len(sizes)]])
        at += sizes[i % len(sizes)]
        i += 1
        assert fast.output_size(len(chunk)) == len(ref_out := ref.push(chunk))
        assert fast.push(chunk) == ref_out
        if i > 200:
            break


@pytest.mark.parametrize(("in_rate", "out_rate"), [(16000, 24000), (24000, 16000), (44100, 24000)])
def test_recurring_frames_equal_reference(in_rate, out_rate):
    # the production shape: 20 ms frames, one after another, cached tables reused every frame
    rng = np.random.default_rng(7)
    fast, ref = StreamResampler(in_rate, out_rate), ReferenceResampler(in_rate, out_rate)
    for _ in range(60):
        frame = pcm(rng.integers(-32768, 32768, in_rate // 50))
        assert fast.push(frame) == ref.push(frame)


@pytest.mark.parametrize("budget", [4 << 20, 1 << 10])  # cached, or too big to cache
def test_push_larger_than_the_work_buffer(budget, monkeypatch):
    monkeypatch.setattr(audio, "_TABLE_BUDGET", budget)
    rng = np.random.default_rng(3)
    data = pcm(rng.integers(-32768, 32768, audio.StreamResampler._WORK_SAMPLES + 5))
    fast, ref = StreamResampler(16000, 24000), ReferenceResampler(16000, 24000)
    for chunk in (data[:6], data[6:], pcm([9, 9]), data[6:]):
        assert fast.push(chunk) == ref.push(chunk)


def test_table_cache_stays_within_its_budget_without_changing_output(monkeypatch):
    monkeypatch.setattr(audio, "_TABLE_BUDGET", 64 << 10)
    monkeypatch.setattr(audio, "_tables", {})  # start empty, whatever ran before
    monkeypatch.setattr(audio, "_table_bytes", 0)
    fast, ref = StreamResampler(24000, 16000), ReferenceResampler(24000, 16000)
    for size in range(1, 400, 3):  # many distinct chunk sizes: entries come and go
        chunk = pcm([(size * 37 + k * 101) % 65536 - 32768 for k in range(size)])
        assert fast.push(chunk) == ref.push(chunk)
        assert audio._table_bytes == sum(t.nbytes for v in audio._tables.values() for t in v)
        assert audio._table_bytes <= 64 << 10
