"""Masking a provider key in text streamed in arbitrary cuts (keyscrub.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.deepgram_helpers import key_leaks
from voxgate.workers.keyscrub import PIECE, KeyScrubber, generic_close_reason

SECRET = "sk-proj-Rf4Kw9Zq2Xm7Tn3Vb8Lp5Hy6Jd1Gs0Wc"
SCRUB = KeyScrubber(SECRET)


def stream_mask(message: bytes, cuts: list[int]) -> bytes:
    """Mask `message` as the splice does: chunk by chunk, with the forwarded context."""
    out = bytearray()
    ctx = b""
    bounds = [0, *sorted(set(cuts)), len(message)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        chunk = message[start:end]
        masked = SCRUB.mask(chunk, ctx)
        out += chunk if masked is None else masked
        ctx = (ctx + chunk)[1 - PIECE :]
    return bytes(out)


@settings(max_examples=300, deadline=None)
@given(
    before=st.binary(max_size=40),
    after=st.binary(max_size=40),
    start=st.integers(0, len(SECRET) - PIECE),
    size=st.integers(PIECE, len(SECRET)),
    cuts=st.lists(st.integers(0, 200), max_size=6),
)
def test_no_piece_survives_any_cut(before, after, start, size, cuts):
    piece = SECRET[start : start + size].encode()
    message = before.replace(b"*", b"") + piece + after.replace(b"*", b"")
    got = stream_mask(message, [c for c in cuts if c <= len(message)])
    assert len(got) == len(message)
    assert not key_leaks(SECRET, got)
    # Only key bytes were touched.
    changed = [i for i, (a, b) in enumerate(zip(message, got, strict=True)) if a != b]
    assert changed and all(got[i] == ord("*") for i in changed)


def test_text_without_the_key_is_not_copied():
    assert SCRUB.mask(b'{"type":"Results","transcript":"hello sk-pr there"}') is None
    assert SCRUB.mask(b"Rf4Kw") is None  # five bytes are not a piece


def test_close_reasons_are_generic():
    assert generic_close_reason(1011, b"NET-0001 no audio", SCRUB) == "NET-0001"
    assert generic_close_reason(1011, b"No audio. See https://dpgr.am/net0001", SCRUB) == "NET-0001"
    assert generic_close_reason(1011, f"bad key {SECRET}".encode(), SCRUB) == "upstream error"
    assert generic_close_reason(1000, b"bye", SCRUB) == ""
    assert generic_close_reason(4001, b"whatever", None) == "upstream error"
