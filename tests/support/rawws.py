"""A hand-written WebSocket client over plain trio TCP, for tests that need exact bytes:
raw request heads, hand-built frames, and the close frame the gateway really sent."""

from __future__ import annotations

import base64
import os
import struct

import trio

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def upgrade_request(path: str, *, host: str = "127.0.0.1", headers: list[tuple[str, str]] | None = None,
                    subprotocols: list[str] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    lines += [f"{k}: {v}" for k, v in headers or []]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0) -> bytes:
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head += bytes([mbit | n])
    elif n < 65536:
        head += bytes([mbit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([mbit | 127]) + struct.pack(">Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, key)
    return head + key + masked


def _xor(payload: bytes, key: bytes) -> bytes:
    reps = (key * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(reps, "little")).to_bytes(len(payload), "little")


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack(">H", code) + reason


class RawClient:
    """Connect, send an upgrade, read the response head; then frames both ways."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buf = bytearray()
        self.status = 0
        self.head = b""

    @classmethod
    async def connect(cls, port: int, path: str, **kw) -> RawClient:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(stream)
        await stream.send_all(upgrade_request(path, **kw))
        await client.read_head()
        return client

    async def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        self.head = bytes(self.buf[: end + 4]) if end >= 0 else bytes(self.buf)
        del self.buf[: len(self.head)]
        parts = self.head.split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        return self.head

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                if k.strip().lower() == name.lower():
                    return v.strip()
        return None

    async def body(self) -> bytes:
        """The rest of a non-101 response (the server closes after it)."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return bytes(self.buf)
            self.buf += data

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_frame(self, opcode: int, payload: bytes = b"", **kw) -> None:
        await self.stream.send_all(frame(opcode, payload, **kw))

    async def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buf += data
        return True

    async def recv_frame(self) -> tuple[int, bool, bytes] | None:
        """(opcode, fin, payload), or None at EOF."""
        if not await self._fill(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        pos = 2
        if n == 126:
            if not await self._fill(4):
                return None
            n = struct.unpack_from(">H", self.buf, 2)[0]
            pos = 4
        elif n == 127:
            if not await self._fill(10):
                return None
            n = struct.unpack_from(">Q", self.buf, 2)[0]
            pos = 10
        assert not b1 & 0x80, "server frames must not be masked"
        if not await self._fill(pos + n):
            return None
        payload = bytes(self.buf[pos : pos + n])
        del self.buf[: pos + n]
        return b0 & 0x0F, bool(b0 & 0x80), payload

    async def recv_message(self) -> tuple[int, bytes] | None:
        """Next data message (fragments joined), skipping pings/pongs; close → (OP_CLOSE, payload)."""
        opcode, parts = None, []
        while True:
            got = await self.recv_frame()
            if got is None:
                return None
            op, fin, payload = got
            if op in (OP_PING, OP_PONG):
                continue
            if op == OP_CLOSE:
                return OP_CLOSE, payload
            if op != OP_CONT:
                opcode = op
            parts.append(payload)
            if fin:
                return opcode, b"".join(parts)

    async def close(self, code: int | None = 1000, reason: bytes = b"") -> tuple[int, bytes] | None:
        await self.send_frame(OP_CLOSE, close_payload(code, reason))
        return await self.recv_message()

    async def aclose(self) -> None:
        await self.stream.aclose()


def close_code(payload: bytes) -> int | None:
    return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None


async def read_until_close(client: RawClient, timeout: float = 5.0) -> tuple[list[tuple[int, bytes]], int | None]:
    """Every data message until the close frame: (messages, close code)."""
    messages = []
    with trio.fail_after(timeout):
        while True:
            got = await client.recv_message()
            if got is None:
                return messages, None
            op, payload = got
            if op == OP_CLOSE:
                return messages, close_code(payload)
            messages.append((op, payload))


async def expect_close(client: RawClient, expected: int, name: str) -> list[bytes]:
    """Read until the close frame; its code must be `expected`. Returns the data before it."""
    before = []
    with trio.fail_after(5):
        while True:
            message = await client.recv_message()
            assert message is not None, f"{name}: TCP closed without a close frame"
            op, payload = message
            if op == OP_CLOSE:
                assert close_code(payload) == expected, (name, payload)
                return before
            before.append(payload)
