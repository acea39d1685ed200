"""WebSocket frame layer for the splice engine (RFC 6455 §5), sans-IO.

Only headers are parsed; payloads are treated as opaque bytes. Text payloads are never
UTF-8 validated here: the endpoints do that, and the gateway must not pay for it per frame.
Close *reasons* are sanitized (`safe_reason`) only when the gateway re-emits them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

from voxgate.workers.closecodes import MAX_REASON_BYTES, map_close_code, safe_reason

__all__ = [
    "OP_CONT", "OP_TEXT", "OP_BINARY", "OP_CLOSE", "OP_PING", "OP_PONG",
    "FrameHeader", "parse_header", "header_error", "build_header", "build_frame",
    "xor_mask", "MaskKeys", "parse_close_payload", "build_close_payload",
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


def build_header(opcode: int, length: int, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """Header for a frame; `mask` is the 4-byte masking key (client-to-server frames)."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        head = bytes((b0, mbit | length))
    elif length < 0x10000:
        head = bytes((b0, mbit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((b0, mbit | 127)) + length.to_bytes(8, "big")
    return head + mask if mask is not None else head


_NP_THRESHOLD = 640  # below this the big-int XOR is faster than numpy (measured, see splice.py)


def xor_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """`data` XOR the repeating 4-byte `key` (masking and unmasking are the same operation).

    The key applies from data[0]; for a chunk that starts at offset `o` of a payload, pass
    the key rotated by o % 4."""
    n = len(data)
    if n == 0:
        return b""
    rep = key * ((n >> 2) + 1)
    if n < _NP_THRESHOLD:
        return (
            int.from_bytes(data, "little") ^ int.from_bytes(rep[:n], "little")
        ).to_bytes(n, "little")
    return (
        np.frombuffer(data, dtype=np.uint8, count=n) ^ np.frombuffer(rep, dtype=np.uint8, count=n)
    ).tobytes()


class MaskKeys:
    """Unpredictable 4-byte masking keys without a syscall per frame: keys are cut from a
    pool of os.urandom bytes refilled when used up."""

    __slots__ = ("_pool", "_pos")

    _POOL = 4096

    def __init__(self) -> None:
        self._pool = os.urandom(self._POOL)
        self._pos = 0

    def next(self) -> bytes:
        p = self._pos
        if p >= self._POOL:
            self._pool = os.urandom(self._POOL)
            p = 0
        self._pos = p + 4
        return self._pool[p : p + 4]


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
