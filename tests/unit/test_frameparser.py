"""FrameParser (frameparser.py) and the splice's two pumps (splice_pumps.py), without sockets.

Frames are built by tests/support/splice.py's `encode_frame` (masked with wsproto's masker),
so the parser is checked against bytes another implementation produces. Every wire is read
whole, in a few chunk sizes and byte by byte: the events must not depend on how TCP cut it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.splice import close_payload, encode_frame
from voxgate.workers.frameparser import (
    CloseFrame,
    ControlFrame,
    FrameParser,
    MessageTooLarge,
    ProtocolViolation,
)
from voxgate.workers.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MaskKeys,
    parse_header,
    xor_mask_at,
)
from voxgate.workers.legs import Leg
from voxgate.workers.splice import SpliceStats
from voxgate.workers.splice_pumps import ToClient, ToUpstream

KEY = b"\x37\xfa\x21\x3d"
STEPS = [1, 2, 3, 7, 64, 1 << 30]


def wire_frame(op: int, payload: bytes = b"", *, masked: bool, **kw: object) -> bytes:
    return encode_frame(op, payload, mask=KEY if masked else None, **kw)  # type: ignore[arg-type]


def read_all(parser: FrameParser, wire: bytes, step: int) -> list:
    """Feed `wire` in `step`-byte reads as a relay does (the unparsed rest is kept): data
    frames as ("data", fin, message opcode, unmasked payload), other events as they come."""
    out: list = []
    buf = b""
    for i in range(0, len(wire), step):
        buf += wire[i : i + step]
        pos = 0
        while pos < len(buf):
            ev = parser.next(buf, pos)
            if ev is None:
                break
            if type(ev) is tuple:
                b0, msg_op, start, ln, key = ev
                pos = start + ln
                out.append(("data", bool(b0 & 0x80), msg_op, xor_mask_at(buf, start, pos, key)))
            elif type(ev) is ControlFrame:
                pos = ev.end
                out.append((ev.opcode, ev.payload))
            else:
                out.append(ev)
                return out
        buf = buf[pos:]
    return out


def read_every_way(wire: bytes, **kw: object) -> list:
    """The events of `wire`, asserted equal for every chunking."""
    results = [read_all(FrameParser(**kw), wire, step) for step in STEPS]  # type: ignore[arg-type]
    for step, got in zip(STEPS, results, strict=True):
        assert got == results[-1], step
    return results[-1]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("size", [0, 1, 125, 126, 447, 448, 65535, 65536])
def test_data_frames_of_every_header_size(masked, size):
    payload = bytes((i * 7 + 1) & 0xFF for i in range(size))
    wire = wire_frame(OP_BINARY, payload, masked=masked) + wire_frame(OP_TEXT, b"{}", masked=masked)
    got = [read_all(FrameParser(masked=masked), wire, step) for step in (1, 1000, len(wire))]
    want = [("data", True, OP_BINARY, payload), ("data", True, OP_TEXT, b"{}")]
    assert got == [want, want, want]


@pytest.mark.parametrize("masked", [True, False])
def test_fragments_keep_their_message_opcode_and_control_frames_come_between(masked):
    wire = b"".join([
        wire_frame(OP_TEXT, b'{"a":', fin=False, masked=masked),
        wire_frame(OP_PING, b"x", masked=masked),
        wire_frame(OP_CONT, b"1", fin=False, masked=masked),
        wire_frame(OP_PONG, b"y", masked=masked),
        wire_frame(OP_CONT, b"}", masked=masked),
        wire_frame(OP_BINARY, b"\x00\x01", masked=masked),
        wire_frame(OP_CLOSE, close_payload(4001, "bye ✓".encode()), masked=masked),
        wire_frame(OP_TEXT, b"after the close: never read", masked=masked),
    ])
    assert read_every_way(wire, masked=masked) == [
        ("data", False, OP_TEXT, b'{"a":'),
        (OP_PING, b"x"),
        ("data", False, OP_TEXT, b"1"),
        (OP_PONG, b"y"),
        ("data", True, OP_TEXT, b"}"),
        ("data", True, OP_BINARY, b"\x00\x01"),
        CloseFrame(4001, "bye ✓".encode()),
    ]


def test_close_without_status_and_with_a_raw_reason():
    assert read_every_way(wire_frame(OP_CLOSE, masked=True), masked=True) == [CloseFrame(None, b"")]
    # The reason comes back raw: what invalid UTF-8 means is the caller's decision.
    bad = wire_frame(OP_CLOSE, close_payload(1000, b"\xff"), masked=False)
    assert read_every_way(bad, masked=False) == [CloseFrame(1000, b"\xff")]


def test_oversized_message_is_refused_from_the_header_alone():
    head_only = wire_frame(OP_BINARY, masked=True, length=1001)  # no payload byte yet
    assert read_every_way(head_only, masked=True, max_message=1000) == [MessageTooLarge()]
    huge = bytes([0x82, 0xFF]) + (1 << 62).to_bytes(8, "big") + KEY
    assert read_every_way(huge, masked=True, max_message=1000) == [MessageTooLarge()]
    crossing = wire_frame(OP_BINARY, b"a" * 600, fin=False, masked=True) + wire_frame(OP_CONT, masked=True, length=401)
    assert read_every_way(crossing, masked=True, max_message=1000) == [("data", False, OP_BINARY, b"a" * 600),
                                                                     MessageTooLarge()]
    exactly = wire_frame(OP_BINARY, b"a" * 1000, masked=True)
    assert read_every_way(exactly, masked=True, max_message=1000) == [("data", True, OP_BINARY, b"a" * 1000)]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("wire,reason", [
    (lambda m: wire_frame(OP_CONT, b"x", masked=m), "continuation without start"),
    (lambda m: wire_frame(OP_TEXT, b"a", fin=False, masked=m) + wire_frame(OP_TEXT, b"b", masked=m),
     "message inside fragmented message"),
    (lambda m: wire_frame(OP_PING, b"x", fin=False, masked=m), "fragmented control frame"),
    (lambda m: wire_frame(OP_PING, b"x" * 126, masked=m), "control frame too long"),
    (lambda m: wire_frame(OP_TEXT, b"x", rsv=4, masked=m), "reserved bits set"),
    (lambda m: wire_frame(OP_CLOSE, b"\x03", masked=m), "invalid close frame"),
    (lambda m: wire_frame(OP_CLOSE, struct.pack("!H", 1005), masked=m), "invalid close frame"),
    (lambda m: wire_frame(OP_CLOSE, struct.pack("!H", 999), masked=m), "invalid close frame"),
    (lambda m: wire_frame(OP_CLOSE, struct.pack("!H", 5000), masked=m), "invalid close frame"),
])
def test_protocol_violations(masked, wire, reason):
    """The stream ends at the violation (what came before it is still delivered)."""
    assert read_every_way(wire(masked), masked=masked)[-1] == ProtocolViolation(reason)


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes(opcode):
    assert read_every_way(wire_frame(opcode, b"x", masked=True), masked=True) == [ProtocolViolation("unknown opcode")]


def test_mask_bit_must_match_the_leg():
    assert read_every_way(wire_frame(OP_TEXT, b"{}", masked=False), masked=True) == [ProtocolViolation("unmasked frame")]
    assert read_every_way(wire_frame(OP_TEXT, b"{}", masked=True), masked=False) == [ProtocolViolation("masked frame")]


def test_stream_mode_returns_a_data_frame_from_its_header():
    """The upstream -> client pump forwards a payload while it arrives."""
    parser = FrameParser(masked=False, stream=True)
    wire = wire_frame(OP_TEXT, b"x" * 300, fin=False, masked=False)
    head = parse_header(wire)
    assert head is not None
    assert parser.next(wire[: head.size - 1], 0) is None
    assert parser.next(wire[: head.size], 0) == (OP_TEXT, OP_TEXT, head.size, 300, 0)
    assert parser.msg_op == OP_TEXT
    ping = wire_frame(OP_PING, b"p", masked=False)
    assert parser.next(ping[:-1], 0) is None  # control frames only whole
    assert parser.next(ping, 0) == ControlFrame(OP_PING, b"p", len(ping))
    last = wire_frame(OP_CONT, b"y", masked=False)
    assert parser.next(last[:2], 0) == (0x80, OP_TEXT, 2, 1, 0)
    assert parser.msg_op is None


def test_whole_message_fast_path_only_for_exactly_one_unfragmented_message():
    parser = FrameParser(masked=True, max_message=100)
    one = wire_frame(OP_BINARY, b"abc", masked=True)
    b0, op, start, ln, key = parser.whole_message(one)  # type: ignore[misc]
    assert (b0, op, ln, xor_mask_at(one, start, start + ln, key)) == (0x82, OP_BINARY, 3, b"abc")
    assert parser.whole_message(one + one) is None
    assert parser.whole_message(one[:-1]) is None
    assert parser.whole_message(wire_frame(OP_TEXT, b"a", fin=False, masked=True)) is None
    assert parser.whole_message(wire_frame(OP_PING, b"a", masked=True)) is None
    assert parser.whole_message(wire_frame(OP_BINARY, b"a" * 101, masked=True)) is None
    parser.next(wire_frame(OP_TEXT, b"a", fin=False, masked=True), 0)  # now inside a message
    assert parser.whole_message(one) is None


frames_st = st.lists(
    st.one_of(
        st.tuples(st.sampled_from([OP_TEXT, OP_BINARY]), st.binary(max_size=300), st.integers(0, 2)),
        st.tuples(st.sampled_from([OP_PING, OP_PONG]), st.binary(max_size=125), st.just(0)),
    ),
    max_size=12,
)


def build_wire(spec: list, masked: bool) -> tuple[bytes, list]:
    """Messages cut into 1 + `cuts` fragments, control frames between; and the expected events."""
    wire, want = [], []
    for op, payload, cuts in spec:
        if op >= 8:
            wire.append(wire_frame(op, payload, masked=masked))
            want.append((op, payload))
            continue
        bounds = [len(payload) * i // (cuts + 1) for i in range(cuts + 2)]
        for i in range(cuts + 1):
            part = payload[bounds[i] : bounds[i + 1]]
            wire.append(wire_frame(op if i == 0 else OP_CONT, part, fin=i == cuts, masked=masked))
            want.append(("data", i == cuts, op, part))
    return b"".join(wire), want


@settings(max_examples=60, deadline=None)
@given(frames_st, st.booleans(), st.integers(1, 50))
def test_any_frame_sequence_and_chunking(spec, masked, step):
    wire, want = build_wire(spec, masked)
    assert read_all(FrameParser(masked=masked), wire, step) == want


# ---------------------------------------------------------------- the pumps, sans-IO


def run_pump(pump: ToUpstream | ToClient, wire: bytes, step: int) -> tuple[bytes, bytes, object]:
    out, ctrl, stop = bytearray(), bytearray(), None
    for i in range(0, len(wire), step):
        o, c, stop = pump.frames(wire[i : i + step])
        out += o or b""
        ctrl += c or b""
        if stop is not None:
            break
    return bytes(out), bytes(ctrl), stop


def unmasked_events(data: bytes, masked: bool) -> list:
    return read_all(FrameParser(masked=masked), data, len(data) or 1)


@pytest.mark.parametrize("step", [1, 5, 100, 1 << 20])
def test_client_to_upstream_remasks_and_answers_pings(step):
    wire, want = build_wire([(OP_TEXT, b"hello", 1), (OP_PING, b"p", 0), (OP_BINARY, bytes(1000), 0)], True)
    stats = SpliceStats()
    pump = ToUpstream(Leg(), Leg(), MaskKeys(), stats, max_message=1 << 20, observer=None, answers=[])
    out, ctrl, stop = run_pump(pump, wire, step)
    assert stop is None
    assert unmasked_events(out, True) == want  # pings are forwarded too
    assert unmasked_events(ctrl, False) == [(OP_PONG, b"p")]
    assert (stats.frames_up, stats.bytes_up, stats.binary_up) == (3, 1005, 1000)


@pytest.mark.parametrize("step", [1, 5, 100, 1 << 20])
def test_client_to_upstream_stops_at_a_close_with_an_invalid_reason(step):
    wire = wire_frame(OP_TEXT, b"ok", masked=True) + wire_frame(OP_CLOSE, close_payload(1000, b"\xff"), masked=True)
    pump = ToUpstream(Leg(), Leg(), MaskKeys(), SpliceStats(), max_message=1 << 20, observer=None, answers=[])
    out, _, stop = run_pump(pump, wire, step)
    assert unmasked_events(out, True) == [("data", True, OP_TEXT, b"ok")]
    assert stop == ProtocolViolation("invalid close frame")


@pytest.mark.parametrize("step", [1, 5, 100, 1 << 20])
def test_upstream_to_client_streams_bytes_unchanged_and_cuts_out_control_frames(step):
    data = wire_frame(OP_BINARY, bytes(range(256)) * 4, masked=False) + wire_frame(OP_TEXT, b"{}", masked=False)
    wire = data + wire_frame(OP_PING, b"p", masked=False) + wire_frame(OP_CLOSE, close_payload(1001), masked=False)
    stats = SpliceStats()
    pump = ToClient(Leg(), Leg(), MaskKeys(), stats, observer=None, scrub=None)
    out, ctrl, stop = run_pump(pump, wire, step)
    assert out == data
    assert unmasked_events(ctrl, True) == [(OP_PONG, b"p")]
    assert stop == CloseFrame(1001, b"")
    assert (stats.frames_down, stats.bytes_down, stats.binary_down) == (2, 1026, 1024)


def test_pumps_need_no_event_loop():
    """Constructed and driven outside trio: nothing in them waits or reads a clock."""
    pump = ToUpstream(Leg(), Leg(), MaskKeys(), SpliceStats(), max_message=10, observer=None, answers=[])
    assert pump.frames(wire_frame(OP_BINARY, bytes(11), masked=True)) == (None, None, MessageTooLarge())
