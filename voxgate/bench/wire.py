"""Hand-built WebSocket bytes for the load generator and the benchmark upstream.

No WebSocket library sits in the per-message path: a frame is a precomputed header plus the
payload, a received frame is parsed in place (offsets into the read buffer, no copy). That
keeps the generator and the upstream cheap enough not to be what the benchmark measures.
"""

from __future__ import annotations

import base64
import hashlib
import os

import numpy as np

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
ZERO_MASK = b"\0\0\0\0"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HEAD_END = b"\r\n\r\n"
MAX_HEAD = 16384


def frame_header(opcode: int, length: int, *, masked: bool, fin: bool = True) -> bytes:
    """The header of one frame (without the masking key)."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, mbit | length))
    if length < 65536:
        return bytes((b0, mbit | 126)) + length.to_bytes(2, "big")
    return bytes((b0, mbit | 127)) + length.to_bytes(8, "big")


def server_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked (server -> client) frame."""
    return frame_header(opcode, len(payload), masked=False) + payload


def client_frame(opcode: int, payload: bytes, key: bytes = ZERO_MASK) -> bytes:
    """A masked (client -> server) frame. The default all-zero key is legal (RFC 6455 only
    asks for unpredictability, which a benchmark does not need) and makes masking free, so
    the generator spends nothing on it; relays still unmask and re-mask as usual."""
    return frame_header(opcode, len(payload), masked=True) + key + xor_mask(payload, key)


def xor_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Apply (or remove) a 4-byte WebSocket mask."""
    if key == ZERO_MASK:
        return bytes(data)
    n = len(data)
    if n >= 2048:
        body = n & ~3
        arr = np.frombuffer(data, dtype=np.uint8, count=body).view(np.uint32)
        out = (arr ^ np.frombuffer(key, dtype=np.uint32)[0]).tobytes()
        if body == n:
            return out
        return out + bytes(b ^ key[i] for i, b in enumerate(bytes(data[body:])))
    reps = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(reps, "little")).to_bytes(n, "little")


def parse_frame(buf: bytes | bytearray, pos: int) -> tuple[int, bool, bytes | None, int, int] | None:
    """(opcode, fin, mask key or None, payload start, payload end) of the frame at `pos`, or
    None when it is not complete in `buf` yet."""
    avail = len(buf) - pos
    if avail < 2:
        return None
    b0 = buf[pos]
    b1 = buf[pos + 1]
    n = b1 & 0x7F
    start = pos + 2
    if n == 126:
        if avail < 4:
            return None
        n = (buf[pos + 2] << 8) | buf[pos + 3]
        start = pos + 4
    elif n == 127:
        if avail < 10:
            return None
        n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        start = pos + 10
    key = None
    if b1 & 0x80:
        key = bytes(buf[start : start + 4])
        start += 4
    end = start + n
    if end > len(buf):
        return None
    return b0 & 0x0F, bool(b0 & 0x80), key, start, end


def upgrade_request(path: str, host: str, extra: list[tuple[str, str]] | None = None) -> bytes:
    """A client opening handshake (no extensions, so no permessage-deflate)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "User-Agent: voxgate-bench",
    ]
    lines += [f"{k}: {v}" for k, v in extra or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def accept_token(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key.strip() + WS_GUID).digest())


def response_status(head: bytes) -> int:
    """Status code of an HTTP response head (0 when unreadable)."""
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def close_payload(code: int) -> bytes:
    return code.to_bytes(2, "big")


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
