"""The size guard stops a client byte stream at the header of an over-size message."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support.rawws import frame
from voxgate.workers.sizeguard import SizeGuard

HEAD = b"GET / HTTP/1.1\r\n\r\n"


def feed_all(guard: SizeGuard, data: bytes, cuts: list[int]) -> bytes:
    out = bytearray()
    bounds = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        out += guard.feed(data[start:end])
    return bytes(out)


@given(cuts=st.lists(st.integers(0, 400), max_size=8))
def test_messages_within_the_limit_pass_whole(cuts):
    data = HEAD + frame(0x1, b"a" * 100) + frame(0x9, b"p") + frame(0x2, b"b" * 60, fin=False) + frame(0x0, b"c" * 40)
    guard = SizeGuard(100, skip=len(HEAD))
    assert feed_all(guard, data, cuts) == data and not guard.tripped


@given(cuts=st.lists(st.integers(0, 400), max_size=8))
def test_a_frame_announcing_too_much_stops_the_stream_at_its_header(cuts):
    ok = HEAD + frame(0x1, b"a" * 10)
    big = frame(0x2, b"x" * 200)
    guard = SizeGuard(100, skip=len(HEAD))
    assert feed_all(guard, ok + big + frame(0x1, b"later"), cuts) == ok and guard.tripped
    assert guard.feed(b"more") == b""


def test_the_fragment_that_passes_the_limit_is_stopped():
    first, second = frame(0x2, b"x" * 60, fin=False), frame(0x0, b"y" * 60)
    guard = SizeGuard(100)
    assert guard.feed(first + second) == first and guard.tripped
