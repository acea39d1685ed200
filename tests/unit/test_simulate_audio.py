"""The simulators' one set of audio facts (voxgate.simulate.audio): G.711 as the ITU-T G.191
reference software computes it, and both simulators putting exactly that on the wire."""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import pytest

from voxgate.simulate.audio import (
    alaw_decode,
    alaw_encode,
    decode_audio,
    encode_pcm16,
    mulaw_decode,
    mulaw_encode,
    rms_pcm16,
    tone_pcm16,
)
from voxgate.simulate.deepgram.speak import SPEAK_MS_PER_CHAR, SpeakSession
from voxgate.simulate.openai.session import RealtimeSession

EVERY_SAMPLE = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
EVERY_CODE = np.arange(256, dtype=np.uint8)
MULAW_OVERLOAD = 32635  # G.711 mu-law's largest magnitude (8159 in 14 bits), in 16 bits


def reference_mulaw(x: int) -> int:
    """G.191 ``ulaw_compress``, sample by sample: one's complement for negative samples,
    14-bit magnitude plus 33, segment by bit length, both nibbles complemented."""
    magnitude = ((~x if x < 0 else x) >> 2) + 33
    magnitude = min(magnitude, 0x1FFF)
    segment = 1
    rest = magnitude >> 6
    while rest:
        segment += 1
        rest >>= 1
    code = ((8 - segment) << 4) | (15 - ((magnitude >> segment) & 0x0F))
    return code | 0x80 if x >= 0 else code


def reference_alaw(x: int) -> int:
    """G.191 ``alaw_compress``, sample by sample: one's complement for negative samples, 12
    significant bits, exponent by repeated halving, even bits toggled."""
    level = (~x if x < 0 else x) >> 4
    if level > 15:
        exponent = 1
        while level > 31:
            level >>= 1
            exponent += 1
        level = (level - 16) + (exponent << 4)
    if x >= 0:
        level |= 0x80
    return level ^ 0x55


def test_g711_matches_the_itu_reference_for_every_sample() -> None:
    mu = mulaw_encode(EVERY_SAMPLE)
    a = alaw_encode(EVERY_SAMPLE)
    samples = EVERY_SAMPLE.tolist()
    assert mu.tolist() == [reference_mulaw(x) for x in samples]
    assert a.tolist() == [reference_alaw(x) for x in samples]


@pytest.mark.parametrize(
    ("sample", "mu", "a"),
    [
        (0, 0xFF, 0xD5),  # silence
        (-1, 0x7F, 0x55),  # negative zero codes
        (8, 0xFE, 0xD5),
        (32767, 0x80, 0xAA),  # positive full scale
        (-32768, 0x00, 0x2A),  # negative full scale
    ],
)
def test_g711_known_code_points(sample: int, mu: int, a: int) -> None:
    x = np.array([sample], dtype=np.int16)
    assert int(mulaw_encode(x)[0]) == mu
    assert int(alaw_encode(x)[0]) == a


@pytest.mark.parametrize(
    ("decode", "code", "value"),
    [
        (mulaw_decode, 0xFF, 0),
        (mulaw_decode, 0x7F, 0),
        (mulaw_decode, 0x80, 32124),
        (mulaw_decode, 0x00, -32124),
        (alaw_decode, 0xD5, 8),
        (alaw_decode, 0x55, -8),
        (alaw_decode, 0xAA, 32256),
        (alaw_decode, 0x2A, -32256),
    ],
)
def test_g711_decoding_table_points(decode: Any, code: int, value: int) -> None:
    assert int(decode(np.array([code], dtype=np.uint8))[0]) == value


def test_every_code_survives_decode_then_encode() -> None:
    mu = mulaw_encode(mulaw_decode(EVERY_CODE))
    expected_mu = EVERY_CODE.copy()
    expected_mu[0x7F] = 0xFF  # both zeros decode to 0, which encodes as the positive zero
    assert mu.tolist() == expected_mu.tolist()
    assert alaw_encode(alaw_decode(EVERY_CODE)).tolist() == EVERY_CODE.tolist()


def test_round_trip_error_is_at_most_half_a_quantisation_step() -> None:
    x = EVERY_SAMPLE.astype(np.int64)
    mu = mulaw_encode(EVERY_SAMPLE)
    mu_error = np.abs(mulaw_decode(mu).astype(np.int64) - x)
    mu_half_step = 4 << ((~mu.astype(np.int64) >> 4) & 0x07)
    in_range = np.abs(x) <= MULAW_OVERLOAD
    assert (mu_error[in_range] <= mu_half_step[in_range]).all()
    assert set(np.abs(mulaw_decode(mu[~in_range])).tolist()) == {32124}  # overload clips

    a = alaw_encode(EVERY_SAMPLE)
    a_error = np.abs(alaw_decode(a).astype(np.int64) - x)
    segment = ((a.astype(np.int64) ^ 0x55) >> 4) & 0x07
    a_half_step = 8 << np.maximum(segment - 1, 0)
    assert (a_error <= a_half_step).all()


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_decode_audio_reads_back_what_encode_pcm16_wrote(encoding: str) -> None:
    pcm = tone_pcm16(100, rate=8000)
    samples = decode_audio(encode_pcm16(pcm, encoding), encoding)
    assert len(samples) == 800
    assert abs(float(np.sqrt(np.mean(samples**2))) - rms_pcm16(pcm)) < 0.005


def drain(session: Any, now: float) -> list[str | bytes | dict]:
    """Every message a sans-IO simulator session has ready at ``now``."""
    out: list[str | bytes | dict] = []
    for _ in range(1000):
        item = session.next_output(now)
        if not isinstance(item, str | bytes | dict):
            return out
        out.append(item)
    raise AssertionError("session never went quiet")


@pytest.mark.parametrize(("fmt", "encoding"), [("audio/pcmu", "mulaw"), ("audio/pcma", "alaw")])
def test_openai_simulator_sends_the_shared_codec(fmt: str, encoding: str) -> None:
    session = RealtimeSession()
    update = {
        "type": "session.update",
        "session": {"type": "realtime", "audio": {"output": {"format": {"type": fmt}}}},
    }
    session.receive(json.dumps(update), 0.0)
    session.receive(json.dumps({"type": "response.create"}), 0.0)
    events = [json.loads(m) for m in drain(session, 0.0) if isinstance(m, str)]
    audio = b"".join(
        base64.b64decode(e["delta"]) for e in events if e["type"] == "response.output_audio.delta"
    )
    assert audio == encode_pcm16(tone_pcm16(300, rate=8000, freq=440.0), encoding)


@pytest.mark.parametrize("encoding", ["mulaw", "alaw"])
def test_deepgram_simulator_sends_the_shared_codec(encoding: str) -> None:
    query = [("encoding", encoding), ("sample_rate", "8000")]
    session = SpeakSession.from_query(query, now=0.0)
    session.receive(json.dumps({"type": "Speak", "text": "Hi there"}), 0.0)
    session.receive(json.dumps({"type": "Flush"}), 0.0)
    audio = b"".join(m for m in drain(session, 0.0) if isinstance(m, bytes))
    tone = tone_pcm16(len("Hi there") * SPEAK_MS_PER_CHAR, rate=8000, freq=330.0)
    assert audio == encode_pcm16(tone, encoding)
