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
    header_error,
    parse_close_payload,
    parse_header,
    xor_mask,
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
