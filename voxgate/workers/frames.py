"""WebSocket frame layer of both relays (RFC 6455 §5), sans-IO.

The splice parses only headers and treats payloads as opaque bytes: text payloads are never
UTF-8 validated there (the endpoints do that, and the gateway must not pay for it per frame).
Reading frames out of a byte stream is `frameparser.FrameParser` (both splice directions);
the translator reads complete messages with `messages.MessageReader`, which decodes (and so
validates) text, because its core needs the JSON.
Close *reasons* are sanitized (`safe_reason`) only when the gateway re-emits them.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import NamedTuple

import numpy as np

from voxgate.workers.closecodes import MAX_REASON_BYTES, map_close_code, safe_reason

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "FrameHeader", "parse_header", "header_error", "build_header", "build_frame",
    "parse_client_data_header", "parse_server_data_header", "build_masked_header",
    "xor_mask", "xor_mask32", "xor_mask_at", "MaskKeys", "parse_close_payload", "build_close_payload",
    "CloseFrameError", "is_valid_wire_close_code", "map_close_code", "safe_reason",
    "MAX_CONTROL_PAYLOAD",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MAX_CONTROL_PAYLOAD = 125
_KNOWN_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))


class FrameHeader(NamedTuple):
    fin: bool
    rsv: int  # the three RSV bits, as bits 4..6 of the first byte (0 when none is set)
    opcode: int
    mask: bytes | None  # 4-byte masking key, None for an unmasked frame
    length: int  # payload length
    size: int  # header length in bytes (2..14)


def parse_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> FrameHeader | None:
    """Parse the frame header starting at `buf[pos]`; None when the header is incomplete.

    Never raises for malformed headers: the caller decides what is an error
    (`header_error`), because the rules differ for client and server frames."""
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    size = 2
    if length == 126:
        if avail < 4:
            return None
        length = (buf[pos + 2] << 8) | buf[pos + 3]
        size = 4
    elif length == 127:
        if avail < 10:
            return None
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        size = 10
    if b1 & 0x80:
        if avail < size + 4:
            return None
        mask = bytes(buf[pos + size : pos + size + 4])
        size += 4
    else:
        mask = None
    return FrameHeader(bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F, mask, length, size)


def header_error(h: FrameHeader, *, masked: bool) -> str | None:
    """Header-level protocol error, or None. `masked` is what the sender must do
    (True for client frames, False for server frames). No extension is negotiated on
    either leg (P31), so any RSV bit is an error."""
    if (h.mask is not None) != masked:
        return "unmasked frame" if masked else "masked frame"
    if h.rsv:
        return "reserved bits set"
    if h.opcode not in _KNOWN_OPCODES:
        return "unknown opcode"
    if h.length >> 63:
        return "invalid length"
    if h.opcode & 0x8:
        if h.length > MAX_CONTROL_PAYLOAD:
            return "control frame too long"
        if not h.fin:
            return "fragmented control frame"
    return None


# First header bytes of the data frames the fast parsers accept: opcode CONT/TEXT/BINARY,
# FIN set or not, no RSV bit. Everything else goes through the general parser.
_DATA_B0 = frozenset((0x00, 0x01, 0x02, 0x80, 0x81, 0x82))
_CLIENT6 = struct.Struct("<BBI").unpack_from  # b0, b1, masking key (7-bit length)
_CLIENT8 = struct.Struct("<BxBBI").unpack_from  # b0, length hi, lo, masking key (16-bit)
_SERVER4 = struct.Struct(">BBH").unpack_from  # b0, b1, 16-bit length (or payload bytes)


def parse_client_data_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, int, int] | None:
    """Fast path for the usual client frame: a masked data frame (continuation, text or
    binary, FIN or not, no RSV bit) with a 7- or 16-bit length and at least 8 bytes
    available. Returns (first header byte, payload length, header size, masking key as a
    little-endian uint32, see `xor_mask32`); None means "use parse_header", never "error".
    Whatever it accepts, parse_header + header_error(masked=True) accept identically."""
    if len(buf) - pos < 8:
        return None
    b1 = buf[pos + 1]
    if b1 == 0xFE:
        b0, hi, lo, key = _CLIENT8(buf, pos)
        if b0 in _DATA_B0:
            return b0, (hi << 8) | lo, 8, key
    elif 0x80 <= b1 < 0xFE:
        b0, b1, key = _CLIENT6(buf, pos)
        if b0 in _DATA_B0:
            return b0, b1 & 0x7F, 6, key
    return None


def parse_server_data_header(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, int] | None:
    """Fast path for the usual server frame: an unmasked data frame (as above) with a 7- or
    16-bit length and at least 4 bytes available. Returns (first header byte, payload
    length, header size); None means "use parse_header"."""
    if len(buf) - pos < 4:
        return None
    b0, b1, ext = _SERVER4(buf, pos)
    if b0 not in _DATA_B0 or b1 > 126:
        return None
    if b1 < 126:
        return b0, b1, 2
    return b0, ext, 4


_PACK2 = struct.Struct(">BB").pack
_PACK4 = struct.Struct(">BBH").pack
_PACK10 = struct.Struct(">BBQ").pack
_PACK6_MASKED = struct.Struct("<BBI").pack
_PACK8_MASKED = struct.Struct("<BBBBI").pack


def build_header(opcode: int, length: int, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """Header for a frame; `mask` is the 4-byte masking key (client-to-server frames)."""
    b0 = (0x80 | opcode) if fin else opcode
    if mask is None:
        if length < 126:
            return _PACK2(b0, length)
        if length < 0x10000:
            return _PACK4(b0, 126, length)
        return _PACK10(b0, 127, length)
    if length < 126:
        return _PACK2(b0, 0x80 | length) + mask
    if length < 0x10000:
        return _PACK4(b0, 0xFE, length) + mask
    return _PACK10(b0, 0xFF, length) + mask


def build_masked_header(b0: int, length: int, key: int) -> bytes:
    """Header of a masked frame from its first byte (FIN, RSV, opcode) and the masking key
    as a little-endian uint32 (the splice's re-masking path; see `xor_mask32`)."""
    if length < 126:
        return _PACK6_MASKED(b0, 0x80 | length, key)
    if length < 0x10000:
        return _PACK8_MASKED(b0, 0xFE, length >> 8, length & 0xFF, key)
    return _PACK10(b0, 0xFF, length) + key.to_bytes(4, "little")


# XOR with a repeating 4-byte key. Small payloads: one big-int XOR against the key times
# 0x00000001_00000001... (no carries, since the key is < 2**32). Larger ones: numpy as uint32
# words against a 0-d array (cheaper than building a numpy scalar per call; one per thread,
# since it is rewritten on each call). Crossover measured, see splice.py.
_NP_THRESHOLD = 448
_ONES = [0]
for _ in range(_NP_THRESHOLD // 4 + 1):
    _ONES.append((_ONES[-1] << 32) | 1)
_U32 = np.dtype("<u4")
_tls = threading.local()


def _key_array() -> np.ndarray:
    arr = _tls.key = np.zeros((), _U32)
    return arr


def xor_mask_at(buf: bytes | bytearray | memoryview, start: int, stop: int, key: int) -> bytes:
    """`buf[start:stop]` XOR the repeating masking key given as a little-endian uint32
    (`int.from_bytes(key, "little")`), without slicing (copying) `buf` first for numpy."""
    n = stop - start
    if n < _NP_THRESHOLD:
        if n <= 0:
            return b""
        words = n >> 2
        rep = key * _ONES[words]
        tail = n & 3
        if tail:
            rep |= (key & ((1 << (tail << 3)) - 1)) << (words << 5)
        return (int.from_bytes(buf[start:stop], "little") ^ rep).to_bytes(n, "little")
    try:
        arr = _tls.key
    except AttributeError:
        arr = _key_array()
    arr[()] = key
    words = n >> 2
    out = (np.frombuffer(buf, _U32, words, start) ^ arr).tobytes()
    tail = n & 3
    if tail:
        cut = start + (words << 2)
        out += (int.from_bytes(buf[cut:stop], "little") ^ (key & ((1 << (tail << 3)) - 1))).to_bytes(tail, "little")
    return out


def xor_mask32(data: bytes | bytearray | memoryview, key: int) -> bytes:
    """`data` XOR the repeating masking key given as a little-endian uint32. Same operation
    as `xor_mask`, without the bytes key."""
    return xor_mask_at(data, 0, len(data), key)


def xor_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """`data` XOR the repeating 4-byte `key` (masking and unmasking are the same operation).

    The key applies from data[0]; for a chunk that starts at offset `o` of a payload, pass
    the key rotated by o % 4."""
    return xor_mask_at(data, 0, len(data), int.from_bytes(key, "little"))


class MaskKeys:
    """Unpredictable 4-byte masking keys without a syscall per frame: keys are cut from a
    pool of os.urandom bytes refilled when used up."""

    __slots__ = ("_pool", "_words", "_pos")

    _POOL = 4096

    def __init__(self) -> None:
        self._refill()

    def _refill(self) -> None:
        self._pool = os.urandom(self._POOL)
        self._words = memoryview(self._pool).cast("I")
        self._pos = 0

    def next(self) -> bytes:
        p = self._pos
        if p >= self._POOL >> 2:
            self._refill()
            p = 0
        self._pos = p + 1
        return self._pool[p << 2 : (p << 2) + 4]

    def next32(self) -> int:
        """A fresh key as a uint32 (for `build_masked_header` and `xor_mask32`)."""
        p = self._pos
        if p >= self._POOL >> 2:
            self._refill()
            p = 0
        self._pos = p + 1
        return self._words[p]


def build_frame(opcode: int, payload: bytes, *, fin: bool = True, keys: MaskKeys | None = None) -> bytes:
    """A complete frame; masked with a fresh key when `keys` is given (gateway -> upstream)."""
    if keys is None:
        return build_header(opcode, len(payload), fin=fin) + payload
    key = keys.next()
    return build_header(opcode, len(payload), fin=fin, mask=key) + xor_mask(payload, key)


class CloseFrameError(ValueError):
    """A close frame payload that RFC 6455 §5.5.1/§7.4 forbids."""


def is_valid_wire_close_code(code: int) -> bool:
    """Codes a peer may put in a close frame: 1000-1003, 1007-1014, 3000-4999."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close_payload(payload: bytes | bytearray | memoryview) -> tuple[int | None, bytes]:
    """(code, raw reason bytes) of a received close frame; code None when the frame has no
    status (the peer "sent" 1005). Raises CloseFrameError for a 1-byte payload or a code
    that must not appear on the wire (1005, 1006, 1015, reserved, out of range). The reason
    is returned raw: re-emit it through `safe_reason`."""
    n = len(payload)
    if n == 0:
        return None, b""
    if n == 1:
        raise CloseFrameError("close payload of length 1")
    code = (payload[0] << 8) | payload[1]
    if not is_valid_wire_close_code(code):
        raise CloseFrameError("invalid close code")
    return code, bytes(payload[2:])


def build_close_payload(code: int | None, reason: str | bytes = "") -> bytes:
    """Close payload; empty when `code` is None. The reason goes through safe_reason."""
    if code is None:
        return b""
    text = safe_reason(reason).encode("utf-8")
    assert len(text) <= MAX_REASON_BYTES
    return code.to_bytes(2, "big") + text

