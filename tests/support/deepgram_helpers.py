"""Glue for the Deepgram passthrough tests (tests/integration/test_deepgram_passthrough.py,
tests/clients/test_deepgram_sdk.py).

- KEY: a Deepgram key made of characters no log line or simulator message contains, so
  "no 6-character piece of the key anywhere" is a meaningful check (the shared
  conftest key ends in "deepgram", which every log line naming the provider contains);
- DGClient: the hand-written WebSocket client that also keeps every byte the gateway sent it;
- RawUpstream: a frame-exact fake Deepgram (sees pings, pongs and close payloads as sent,
  answers pings, sends whatever frame a test asks for);
- TcpTap: a TCP relay in front of the gateway that records gateway -> client bytes, for
  clients we do not control (the official SDK);
- key_leaks(): which pieces of a secret occur in some text or bytes.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import orjson
import trio

from tests.support.rawws import (
    OP_BIN,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawClient,
    close_code,
    close_payload,
    upgrade_request,
)

KEY = "vgK7qXw2mZpR4tLs9NcY3bHd6FjW8eUaQ5oTiV1xEz"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def key_leaks(secret: str, *haystacks: str | bytes, size: int = 6) -> set[str]:
    """Every `size`-character piece of `secret` found in any haystack."""
    pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
    found = set()
    for hay in haystacks:
        text = hay.decode("latin-1") if isinstance(hay, bytes | bytearray) else hay
        found |= {p for p in pieces if p in text}
    return found


class _RecordingStream(trio.abc.Stream):
    """A client-side stream that keeps every byte received."""

    def __init__(self, inner: trio.abc.Stream, sink: bytearray) -> None:
        self.inner = inner
        self.sink = sink

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.sink += data
        return data

    async def send_all(self, data) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


class DGClient(RawClient):
    """RawClient plus JSON helpers; `wire` holds every byte the gateway sent."""

    wire: bytearray

    @classmethod
    async def open(cls, port: int, path: str, **kw) -> DGClient:
        wire = bytearray()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        client = cls(_RecordingStream(stream, wire))  # type: ignore[arg-type]
        client.wire = wire
        await stream.send_all(upgrade_request(path, **kw))
        await client.read_head()
        return client

    async def send_text(self, message: str | dict) -> None:
        data = orjson.dumps(message) if isinstance(message, dict) else message.encode()
        await self.send_frame(OP_TEXT, data)

    async def send_binary(self, data: bytes) -> None:
        await self.send_frame(OP_BIN, data)

    async def recv(self) -> tuple[int, bytes]:
        got = await self.recv_message()
        assert got is not None, "connection ended without a close frame"
        return got

    async def recv_until_type(self, kind: str, limit: int = 200) -> list[tuple[int, bytes]]:
        """Messages up to and including the first JSON message (text or binary) of `kind`."""
        seen = []
        for _ in range(limit):
            op, payload = await self.recv()
            assert op != OP_CLOSE, f"closed ({close_code(payload)}) before {kind}: {seen}"
            seen.append((op, payload))
            if json_type(payload) == kind:
                return seen
        raise AssertionError(f"no {kind} in {limit} messages")

    async def expect_close(self, *, reply: bool = True) -> tuple[int | None, bytes]:
        """Skip data until the server's close frame, answer it like a well-behaved client
        (unless `reply` is False or we closed first); (code, reason bytes)."""
        for _ in range(500):
            got = await self.recv_message()
            assert got is not None, "TCP ended without a close frame"
            op, payload = got
            if op == OP_CLOSE:
                if reply:
                    try:
                        await self.send_frame(OP_CLOSE, payload[:2])
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                return close_code(payload), payload[2:]
        raise AssertionError("no close frame")

    async def finish(self, code: int = 1000) -> int | None:
        """Close from our side: skip data still in flight, return the echoed code, wait for
        the server to end TCP."""
        await self.send_frame(OP_CLOSE, close_payload(code))
        echoed, _ = await self.expect_close(reply=False)
        await self.wait_eof()
        return echoed

    async def wait_eof(self) -> None:
        while await self.recv_frame() is not None:
            pass


def json_type(payload: bytes) -> str | None:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return data.get("type") if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------
# A frame-exact fake upstream


@dataclass(eq=False)
class RawUpConn:
    stream: trio.SocketStream
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    frames: list[tuple[int, bytes]] = field(default_factory=list)  # (opcode, unmasked payload)
    closed: trio.Event = field(default_factory=trio.Event)
    changed: trio.Event = field(default_factory=trio.Event)
    lock: trio.Lock = field(default_factory=trio.Lock)

    def _bump(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_until(self, predicate) -> None:
        while not predicate(self):
            await self.changed.wait()

    async def send(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack(">H", n)
        else:
            head += bytes([127]) + struct.pack(">Q", n)
        async with self.lock:
            await self.stream.send_all(head + payload)


class RawUpstream:
    """Accepts every WebSocket handshake, records frames exactly, answers pings and close."""

    def __init__(self) -> None:
        self.conns: list[RawUpConn] = []
        self._changed = trio.Event()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def wait_conn(self, index: int = 0) -> RawUpConn:
        while len(self.conns) <= index:
            await self._changed.wait()
        return self.conns[index]

    async def _handle(self, stream: trio.SocketStream) -> None:
        buf = bytearray()
        conn = None
        try:
            while b"\r\n\r\n" not in buf:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buf += data
            end = buf.index(b"\r\n\r\n") + 4
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[:end]
            target = lines[0].split(" ")[1]
            headers = [
                (k.strip().lower(), v.strip())
                for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)
            ]
            ws_key = next(v for k, v in headers if k == "sec-websocket-key")
            accept = base64.b64encode(hashlib.sha1(ws_key.encode() + WS_GUID).digest()).decode()
            parts = urlsplit(target)
            conn = RawUpConn(
                stream, parts.path, parse_qsl(parts.query, keep_blank_values=True), headers
            )
            await stream.send_all(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            self.conns.append(conn)
            self._changed.set()
            self._changed = trio.Event()
            await self._read_frames(conn, buf)
        except (trio.BrokenResourceError, trio.ClosedResourceError, StopIteration):
            pass
        finally:
            if conn is not None:
                conn.closed.set()
                conn._bump()
            await trio.aclose_forcefully(stream)

    async def _read_frames(self, conn: RawUpConn, buf: bytearray) -> None:
        stream = conn.stream

        async def fill(n: int) -> bool:
            while len(buf) < n:
                data = await stream.receive_some(65536)
                if not data:
                    return False
                buf.extend(data)
            return True

        while await fill(2):
            b0, b1 = buf[0], buf[1]
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if not await fill(4):
                    return
                n, pos = struct.unpack_from(">H", buf, 2)[0], 4
            elif n == 127:
                if not await fill(10):
                    return
                n, pos = struct.unpack_from(">Q", buf, 2)[0], 10
            assert b1 & 0x80, "client frames must be masked"
            if not await fill(pos + 4 + n):
                return
            key = bytes(buf[pos : pos + 4])
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos + 4 : pos + 4 + n]))
            del buf[: pos + 4 + n]
            op = b0 & 0x0F
            conn.frames.append((op, payload))
            conn._bump()
            if op == OP_PING:
                await conn.send(OP_PONG, payload)
            elif op == OP_CLOSE:
                await conn.send(OP_CLOSE, payload[:2])
                return


# ---------------------------------------------------------------------------------------
# A recording TCP relay


class TcpTap:
    """`await nursery.start(tap.serve, target_port)` -> port; relays TCP to the target and
    keeps every byte the target sent back (what a client received)."""

    def __init__(self) -> None:
        self.downstream = bytearray()

    async def serve(self, target_port: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])

        async def handle(client: trio.SocketStream) -> None:
            try:
                target = await trio.open_tcp_stream("127.0.0.1", target_port)
            except OSError:
                await trio.aclose_forcefully(client)
                return

            async def pump(src, dst, sink) -> None:
                try:
                    while data := await src.receive_some(65536):
                        if sink is not None:
                            sink += data
                        await dst.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    nursery.cancel_scope.cancel()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, target, None)
                nursery.start_soon(pump, target, client, self.downstream)
            await trio.aclose_forcefully(client)
            await trio.aclose_forcefully(target)

        await trio.serve_listeners(handle, listeners)
