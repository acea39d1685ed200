"""Frame layer of the splice engine, close-code mapping, close reasons, connect errors."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voxgate.workers.closecodes import map_close_code, safe_reason
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseFrameError,
    FrameHeader,
    MaskKeys,
    build_close_payload,
    build_frame,
    build_header,
    build_masked_header,
    header_error,
    parse_client_data_header,
    parse_close_payload,
    parse_header,
    parse_server_data_header,
    xor_mask,
    xor_mask32,
    xor_mask_at,
)


def naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ k for b, k in zip(data, itertools.cycle(key)))


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("length,size", [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (1 << 40, 10)])
@pytest.mark.parametrize("mask", [None, b"\x01\x02\x03\x04"])
def test_header_round_trip_and_sizes(length, size, mask):
    head = build_header(OP_BINARY, length, fin=False, mask=mask)
    h = parse_header(head)
    assert h == FrameHeader(False, 0, OP_BINARY, mask, length, size + (4 if mask else 0))
    assert len(head) == h.size


@pytest.mark.parametrize("length", [0, 125, 126, 65535, 65536])
def test_header_is_none_until_complete(length):
    head = build_header(OP_TEXT, length, mask=b"abcd")
    for cut in range(len(head)):
        assert parse_header(head[:cut]) is None
        assert parse_header(b"xx" + head[:cut], 2) is None  # at an offset too
    assert parse_header(b"xx" + head + b"payload", 2).length == length


def test_header_matches_rfc_examples():
    # RFC 6455 §5.7: unmasked "Hello", masked "Hello", 256-byte and 64 KiB binary
    assert parse_header(bytes.fromhex("810548656c6c6f")) == FrameHeader(True, 0, OP_TEXT, None, 5, 2)
    h = parse_header(bytes.fromhex("818537fa213d7f9f4d5158"))
    assert (h.mask, h.length, h.size) == (bytes.fromhex("37fa213d"), 5, 6)
    assert xor_mask(bytes.fromhex("7f9f4d5158"), h.mask) == b"Hello"
    assert build_header(OP_BINARY, 256) == bytes.fromhex("827e0100")
    assert build_header(OP_BINARY, 65536) == bytes.fromhex("827f0000000000010000")
    assert build_frame(OP_PING, b"Hello") == bytes.fromhex("890548656c6c6f")


def test_header_keeps_rsv_and_unknown_opcodes_for_the_caller():
    h = parse_header(bytes([0x80 | 0x40 | 0x3, 0x00]))
    assert (h.rsv, h.opcode) == (0x40, 3)


@pytest.mark.parametrize(
    "first,second,masked,expected",
    [
        (0x81, 0x80, True, None),
        (0x81, 0x00, True, "unmasked frame"),
        (0x81, 0x80, False, "masked frame"),
        (0xC1, 0x80, True, "reserved bits set"),
        (0x91, 0x80, True, "reserved bits set"),
        (0x83, 0x80, True, "unknown opcode"),
        (0x8B, 0x80, True, "unknown opcode"),
        (0x89, 0x80 | 125, True, None),
        (0x89, 0x80 | 126, True, "control frame too long"),
        (0x09, 0x80, True, "fragmented control frame"),
        (0x08, 0x80, True, "fragmented control frame"),
        (0x00, 0x80, True, None),  # a continuation is fine at the header level
    ],
)
def test_header_errors(first, second, masked, expected):
    raw = bytes([first, second]) + (b"\x00\x7e" if (second & 0x7F) == 126 else b"") + b"abcd"
    h = parse_header(raw)
    assert header_error(h, masked=masked) == expected


def test_64_bit_length_with_msb_set_is_an_error():
    raw = bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + b"abcd"
    assert header_error(parse_header(raw), masked=True) == "invalid length"


# ---------------------------------------------------------------- header fast paths

# Headers near the interesting edges: any first byte (FIN, RSV, opcode), mask bit on or off,
# 7-, 16- and 64-bit lengths, cut anywhere, at an offset.
# (buffer, position of a header in it)
headers_at = st.builds(
    lambda b0, masked, length, key, tail, lead: (
        lead + bytes([b0]) + build_header(OP_BINARY, length, mask=key if masked else None)[1:] + tail,
        len(lead),
    ),
    st.one_of(st.sampled_from([0x00, 0x01, 0x02, 0x80, 0x81, 0x82]), st.integers(0, 255)),
    st.booleans(),
    st.one_of(st.integers(0, 130), st.integers(0, 0x10002), st.integers(0, 1 << 63)),
    st.binary(min_size=4, max_size=4),
    st.binary(max_size=12),
    st.binary(max_size=3),
)
random_at = st.tuples(st.binary(max_size=20), st.integers(0, 3))


def _fast_client_as_header(fast: tuple[int, int, int, int]) -> FrameHeader:
    b0, length, size, key = fast
    return FrameHeader(bool(b0 & 0x80), 0, b0 & 0x0F, key.to_bytes(4, "little"), length, size)


def _fast_server_as_header(fast: tuple[int, int, int]) -> FrameHeader:
    b0, length, size = fast
    return FrameHeader(bool(b0 & 0x80), 0, b0 & 0x0F, None, length, size)


def _common_data_frame(h: FrameHeader | None, masked: bool) -> bool:
    return (
        h is not None
        and header_error(h, masked=masked) is None
        and h.opcode in (OP_CONT, OP_TEXT, OP_BINARY)
        and h.length < 0x10000
    )


@given(st.one_of(headers_at, random_at))
def test_fast_client_header_equals_general_parser(case):
    """Whatever the fast path accepts, the general parser reads identically and accepts;
    and it accepts every common masked data frame with 8 bytes available."""
    raw, pos = case
    pos = min(pos, len(raw))
    fast = parse_client_data_header(raw, pos)
    h = parse_header(raw, pos)
    if fast is not None:
        assert h == _fast_client_as_header(fast)
        assert header_error(h, masked=True) is None
    elif _common_data_frame(h, masked=True):
        assert len(raw) - pos < 8  # only a short buffer sends a common frame the slow way


@given(st.one_of(headers_at, random_at))
def test_fast_server_header_equals_general_parser(case):
    raw, pos = case
    pos = min(pos, len(raw))
    fast = parse_server_data_header(raw, pos)
    h = parse_header(raw, pos)
    if fast is not None:
        assert h == _fast_server_as_header(fast)
        assert header_error(h, masked=False) is None
    elif _common_data_frame(h, masked=False):
        assert len(raw) - pos < 4


@pytest.mark.parametrize("opcode", [OP_CONT, OP_TEXT, OP_BINARY])
@pytest.mark.parametrize("fin", [True, False])
@pytest.mark.parametrize("length", [0, 2, 125, 126, 960, 65535])
def test_fast_headers_take_the_common_frames(opcode, fin, length):
    key = b"\x01\x02\x03\x04"
    client = build_header(opcode, length, fin=fin, mask=key) + b"\0\0"  # 8 bytes at least
    assert parse_client_data_header(client) == (
        (0x80 if fin else 0) | opcode, length, 6 if length < 126 else 8, 0x04030201
    )
    server = build_header(opcode, length, fin=fin) + b"\0\0"
    assert parse_server_data_header(server) == ((0x80 if fin else 0) | opcode, length, 2 if length < 126 else 4)


@pytest.mark.parametrize(
    "raw",
    [
        bytes([0x89, 0x80 | 5]) + b"abcd" + b"hello",  # ping: control frames take the general path
        bytes([0x88, 0x80 | 2]) + b"abcd\x03\xe8",  # close
        bytes([0xC2, 0x80 | 5]) + b"abcd" + b"hello",  # RSV1
        bytes([0x83, 0x80 | 5]) + b"abcd" + b"hello",  # unknown opcode
        bytes([0x82, 0x05]) + b"hello\0\0",  # unmasked client frame
        bytes([0x82, 0xFF]) + (1 << 16).to_bytes(8, "big") + b"abcd",  # 64-bit length
    ],
)
def test_fast_client_header_leaves_the_rest_to_the_general_parser(raw):
    assert parse_client_data_header(raw) is None


def test_fast_server_header_rejects_masked_and_control_frames():
    assert parse_server_data_header(bytes([0x82, 0x85]) + b"abcdhello") is None
    assert parse_server_data_header(bytes([0x8A, 0x02]) + b"hi") is None
    assert parse_server_data_header(bytes([0x82, 0x7F]) + bytes(8)) is None


@given(
    st.integers(0, 255) | st.sampled_from([0x00, 0x01, 0x02, 0x80, 0x81, 0x82]),
    st.one_of(st.integers(0, 0x10002), st.integers(0, 1 << 63)),
    st.integers(0, 0xFFFFFFFF),
)
def test_build_masked_header_equals_build_header(b0, length, key):
    if b0 & 0x70:
        b0 &= 0x8F  # the splice only re-emits frames without RSV bits
    expected = build_header(b0 & 0x0F, length, fin=bool(b0 & 0x80), mask=key.to_bytes(4, "little"))
    assert build_masked_header(b0, length, key) == expected


def test_build_header_unmasked_sizes_and_bytes():
    assert build_header(OP_TEXT, 5) == b"\x81\x05"
    assert build_header(OP_BINARY, 126, fin=False) == b"\x02\x7e\x00\x7e"
    assert build_header(OP_BINARY, 65536) == b"\x82\x7f" + (65536).to_bytes(8, "big")


# ---------------------------------------------------------------- masking


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 125, 639, 640, 641, 960, 4097, 65536, 65539])
def test_xor_mask_matches_naive(n):
    data = os.urandom(n)
    key = os.urandom(4)
    assert xor_mask(data, key) == naive_mask(data, key)
    assert xor_mask(memoryview(b"z" + data)[1:], key) == naive_mask(data, key)  # unaligned view
    assert xor_mask(xor_mask(data, key), key) == data


@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4))
def test_xor_mask_property(data, key):
    assert xor_mask(data, key) == naive_mask(data, key)


@given(st.binary(min_size=1, max_size=1500), st.binary(min_size=4, max_size=4), st.binary(min_size=4, max_size=4))
def test_remask_with_xor_of_keys_is_one_pass(payload, client_key, gateway_key):
    """The splice trick: client-masked bytes XOR (client key ^ gateway key) = gateway-masked."""
    combined = bytes(a ^ b for a, b in zip(client_key, gateway_key, strict=True))
    assert xor_mask(xor_mask(payload, client_key), combined) == xor_mask(payload, gateway_key)


@given(st.binary(max_size=2100), st.integers(0, 0xFFFFFFFF), st.integers(0, 7), st.integers(0, 7))
def test_xor_mask_at_equals_slice_then_mask(data, key, lead, trail):
    """The offset form, around both implementations (big-int below, numpy above the
    threshold), any alignment, every tail length."""
    buf = bytes(lead) + data + bytes(trail)
    expected = naive_mask(data, key.to_bytes(4, "little"))
    assert xor_mask_at(buf, lead, lead + len(data), key) == expected
    assert xor_mask_at(bytearray(buf), lead, lead + len(data), key) == expected
    assert xor_mask_at(memoryview(buf), lead, lead + len(data), key) == expected
    assert xor_mask32(data, key) == expected


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 383, 447, 448, 449, 450, 451, 511, 512, 513, 515, 960, 963, 65539])
def test_xor_mask32_sizes_around_the_thresholds(n):
    data = os.urandom(n)
    for key in (0, 0xFFFFFFFF, 0x04030201, int.from_bytes(os.urandom(4), "little")):
        assert xor_mask32(data, key) == naive_mask(data, key.to_bytes(4, "little"))


def test_bytearray_can_grow_after_masking():
    """The numpy path must not keep a view on the caller's buffer (the splice resizes it)."""
    buf = bytearray(os.urandom(2000))
    xor_mask_at(buf, 3, 1999, 0x12345678)
    del buf[:1000]
    buf += b"more"
    assert len(buf) == 1004


def test_mask_keys_as_uint32_are_fresh_and_match_bytes():
    keys = MaskKeys()
    drawn = [keys.next32() for _ in range(3000)]  # crosses several pool refills
    assert all(0 <= k <= 0xFFFFFFFF for k in drawn)
    assert len(set(drawn)) > 2900
    assert len({keys.next(), keys.next32().to_bytes(4, "little"), keys.next()}) == 3


def test_mask_keys_are_fresh_and_refill():
    keys = MaskKeys()
    drawn = [keys.next() for _ in range(3000)]  # crosses several pool refills
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 2900


def test_build_frame_masked_with_keys():
    keys = MaskKeys()
    frame = build_frame(OP_TEXT, b"hello", keys=keys)
    h = parse_header(frame)
    assert h.mask is not None and h.fin and h.opcode == OP_TEXT
    assert xor_mask(frame[h.size :], h.mask) == b"hello"
    assert build_frame(OP_CONT, b"", fin=False) == b"\x00\x00"
    assert build_frame(OP_PONG, b"") == b"\x8a\x00"


# ---------------------------------------------------------------- close payloads


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4000, 4999])
def test_close_payload_valid_codes(code):
    assert parse_close_payload(struct.pack("!H", code) + b"why") == (code, b"why")


def test_close_payload_empty_means_no_status():
    assert parse_close_payload(b"") == (None, b"")
    assert build_close_payload(None, "ignored") == b""


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
def test_close_payload_invalid_codes(code):
    with pytest.raises(CloseFrameError):
        parse_close_payload(struct.pack("!H", code))


def test_close_payload_length_one_is_invalid():
    with pytest.raises(CloseFrameError):
        parse_close_payload(b"\x03")


def test_build_close_payload_limits_reason():
    payload = build_close_payload(4001, "€" * 60)  # 180 bytes
    assert len(payload) <= 125
    assert payload[:2] == b"\x0f\xa1"
    assert payload[2:].decode() == "€" * 41
    assert build_frame(OP_CLOSE, build_close_payload(1000, "")) == b"\x88\x02\x03\xe8"


# ---------------------------------------------------------------- close-code mapping


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4001, 4999])
@pytest.mark.parametrize("toward", ["client", "upstream"])
def test_map_close_code_passes_sendable_codes(code, toward):
    assert map_close_code(code, toward=toward) == code


@pytest.mark.parametrize("code", [None, 1005])
@pytest.mark.parametrize("toward", ["client", "upstream"])
def test_map_close_code_no_status_is_normal(code, toward):
    assert map_close_code(code, toward=toward) == 1000


@pytest.mark.parametrize("code", [1006, 1015, 1004, 1016, 2000, 2999, 999, 0, -1, 5000, 65535])
def test_map_close_code_unsendable(code):
    assert map_close_code(code, toward="client") == 1011
    assert map_close_code(code, toward="upstream") == 1000


def test_map_close_code_direction_is_checked():
    with pytest.raises(ValueError):
        map_close_code(1000, toward="sideways")


# ---------------------------------------------------------------- reasons


def test_safe_reason_basics():
    assert safe_reason(None) == ""
    assert safe_reason("") == ""
    assert safe_reason(b"", "upstream error") == "upstream error"
    assert safe_reason(None, "x") == "x"
    assert safe_reason("NET-0001 timeout") == "NET-0001 timeout"
    assert safe_reason(b"NET-0001") == "NET-0001"
    assert safe_reason("a" * 123) == "a" * 123
    assert safe_reason("a" * 124) == "a" * 123


def test_safe_reason_cuts_on_a_character_boundary():
    assert safe_reason("é" * 100) == "é" * 61  # 122 bytes: the 62nd would make 124
    assert safe_reason("a" + "€" * 50) == "a" + "€" * 40  # 121 bytes
    assert safe_reason("😀" * 40) == "😀" * 30  # 120 bytes


def test_safe_reason_repairs_invalid_utf8():
    assert safe_reason(b"ok\xff") == "ok\ufffd"
    assert safe_reason("lone \ud800 surrogate").encode("utf-8")
    assert safe_reason(b"x" * 122 + "é".encode()) == "x" * 122  # cut inside the é


@given(st.one_of(st.text(max_size=200), st.binary(max_size=300)))
def test_safe_reason_property(reason):
    out = safe_reason(reason)
    raw = out.encode("utf-8")
    assert len(raw) <= 123
    if isinstance(reason, str) and len(reason.encode("utf-8", "replace")) <= 123:
        assert out == reason.encode("utf-8", "replace").decode("utf-8")


# ---------------------------------------------------------------- connect errors


def test_upstream_connect_error_is_generic():
    err = UpstreamConnectError("rejected", 401)
    assert (err.kind, err.status, err.auth) == ("rejected", 401, True)
    assert str(err) == "upstream connect failed: rejected (HTTP 401)"
    assert UpstreamConnectError("rejected", 403).auth
    assert not UpstreamConnectError("rejected", 500).auth
    timeout = UpstreamConnectError("timeout")
    assert (timeout.status, timeout.auth, str(timeout)) == (None, False, "upstream connect failed: timeout")
    assert UpstreamConnectError("wss://api.example/?key=sk-secret").kind == "protocol"
    assert "sk-" not in str(UpstreamConnectError("wss://api.example/?key=sk-secret"))
    assert "sk-" not in repr(UpstreamConnectError("wss://api.example/?key=sk-secret"))
