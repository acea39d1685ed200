"""MessageReader: the translator's message layer over the shared frame parser (frameparser.py).

Frames are built here by hand and masked with wsproto's masker (not frames.py), so the reader
is checked against bytes another implementation produces."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import XorMaskerSimple

from voxgate.workers.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)
from voxgate.workers.messages import (
    BinaryMessage,
    Message,
    MessageReader,
    PeerClosed,
    Ping,
    StreamFailed,
    TextMessage,
)

KEY = b"\x37\xfa\x21\x3d"


def frame(op: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True, rsv: int = 0,
          length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    mbit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if masked:
        return head + KEY + bytes(XorMaskerSimple(KEY).process(payload))
    return head + payload


def client_reader(limit: int = 1 << 20) -> MessageReader:
    return MessageReader(masked=True, max_message=limit)


def feed_bytewise(reader: MessageReader, data: bytes) -> list[Message]:
    return [e for i in range(len(data)) for e in reader.feed(data[i : i + 1])]


def test_text_and_binary_messages_in_one_read():
    wire = frame(OP_TEXT, "héllo €".encode()) + frame(OP_BINARY, bytes(range(256))) + frame(OP_TEXT, b"")
    assert client_reader().feed(wire) == [TextMessage("héllo €"), BinaryMessage(bytes(range(256))), TextMessage("")]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 447, 448, 960, 65535, 65536, 70001])
def test_every_split_point_gives_the_same_messages(size):
    payload = bytes((i * 13 + 5) & 0xFF for i in range(size))
    wire = frame(OP_BINARY, payload) + frame(OP_PING, b"p") + frame(OP_BINARY, payload[::-1])
    want = [BinaryMessage(payload), Ping(b"p"), BinaryMessage(payload[::-1])]
    cuts = sorted({0, 1, 2, 5, 9, 14, len(wire) // 2, len(wire) - 1})
    for cut in cuts:
        reader = client_reader()
        assert reader.feed(wire[:cut]) + reader.feed(wire[cut:]) == want, cut
    if size <= 960:
        assert feed_bytewise(client_reader(), wire) == want


def test_fragments_are_joined_and_pings_between_them_come_first():
    wire = (frame(OP_TEXT, b'{"a":', fin=False) + frame(OP_PING, b"x") + frame(OP_CONT, b"1", fin=False)
            + frame(OP_PONG, b"ignored") + frame(OP_CONT, b"}"))
    assert client_reader().feed(wire) == [Ping(b"x"), TextMessage('{"a":1}')]


def test_utf8_is_checked_per_message_even_across_fragments():
    euro = "€".encode()
    ok = frame(OP_TEXT, euro[:1], fin=False) + frame(OP_CONT, euro[1:])
    assert client_reader().feed(ok) == [TextMessage("€")]
    bad = frame(OP_TEXT, b"\xce", fin=False) + frame(OP_CONT, b"\x41")
    assert client_reader().feed(bad) == [StreamFailed(1007, "invalid UTF-8")]
    assert client_reader().feed(frame(OP_TEXT, b"ok \xf4\x90\x80\x80")) == [StreamFailed(1007, "invalid UTF-8")]


def test_binary_is_never_decoded():
    assert client_reader().feed(frame(OP_BINARY, b"\xff\xfe")) == [BinaryMessage(b"\xff\xfe")]


def test_oversized_message_is_refused_from_the_header_alone():
    reader = client_reader(limit=1000)
    head_only = frame(OP_BINARY, b"", length=1001)  # no payload byte has arrived yet
    assert reader.feed(frame(OP_TEXT, b"before") + head_only) == [TextMessage("before"), StreamFailed(1009, "message too large")]
    assert reader.feed(b"\x00" * 5000) == []  # nothing after the refusal
    huge = bytes([0x82, 0xFF]) + (1 << 62).to_bytes(8, "big") + KEY
    assert client_reader(limit=1000).feed(huge) == [StreamFailed(1009, "message too large")]


def test_oversized_fragmented_message_is_refused_at_the_fragment_that_crosses():
    reader = client_reader(limit=1000)
    first = reader.feed(frame(OP_BINARY, b"a" * 600, fin=False))
    assert first == []
    assert reader.feed(frame(OP_CONT, b"", length=401)) == [StreamFailed(1009, "message too large")]


@pytest.mark.parametrize("wire", [
    frame(OP_CONT, b"x"),
    frame(OP_TEXT, b"a", fin=False) + frame(OP_TEXT, b"b"),
    frame(OP_PING, b"x", fin=False),
    frame(OP_PING, b"x" * 126),
    frame(0x3, b"x"),
    frame(OP_TEXT, b"x", rsv=4),
    frame(OP_TEXT, b"{}", masked=False),
    frame(OP_CLOSE, b"\x03"),
    frame(OP_CLOSE, struct.pack("!H", 1005)),
])
def test_protocol_errors(wire):
    assert client_reader().feed(wire) == [StreamFailed(1002, "protocol error")]


def test_server_leg_must_not_mask():
    reader = MessageReader(masked=False, max_message=1 << 20)
    assert reader.feed(frame(OP_TEXT, b"{}", masked=False)) == [TextMessage("{}")]
    assert MessageReader(masked=False, max_message=99).feed(frame(OP_TEXT, b"{}")) == [StreamFailed(1002, "protocol error")]


def test_close_ends_the_stream():
    reader = client_reader()
    wire = frame(OP_CLOSE, struct.pack("!H", 4001) + "bye ✓".encode()) + frame(OP_TEXT, b"late")
    assert reader.feed(wire) == [PeerClosed(4001, "bye ✓")]
    assert reader.feed(frame(OP_TEXT, b"later")) == []
    assert client_reader().feed(frame(OP_CLOSE)) == [PeerClosed(None, "")]
    assert client_reader().feed(frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff")) == [StreamFailed(1007, "invalid UTF-8")]


@given(st.lists(st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.text(max_size=300)), max_size=8),
       st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=20))
def test_any_chunking_of_any_messages(messages, chunks):
    wire = b""
    want = []
    for op, text in messages:
        data = text.encode()
        half = len(data) // 2
        wire += frame(op, data[:half], fin=False) + frame(OP_CONT, data[half:])
        want.append(TextMessage(text) if op == OP_TEXT else BinaryMessage(data))
    reader = client_reader()
    got: list[Message] = []
    pos = 0
    i = 0
    while pos < len(wire):
        step = chunks[i % len(chunks)]
        got += reader.feed(wire[pos : pos + step])
        pos += step
        i += 1
    assert got == want
