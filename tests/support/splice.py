"""Test glue for the splice engine (tests/integration/test_splice.py).

- minimal opening handshakes with wsproto for both legs (the product's own handshake code is
  written elsewhere; these only get the bytes to where run_splice starts);
- RawPeer: a WebSocket endpoint with its own small frame codec (deliberately not the engine's
  frames.py) that reads and writes frames exactly as given, so tests can check fragmentation,
  masking keys and close payloads on the wire, and send malformed frames;
- SpliceEnv: a gateway on 127.0.0.1:0 running run_splice per accepted client, in front of a
  raw upstream server (or any connect function).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.frame_protocol import XorMaskerSimple

from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.splice import SplicePolicy, SpliceStats, run_splice

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
HEAD_LIMIT = 16384


async def read_head(stream: trio.abc.ReceiveStream, buf: bytes = b"") -> tuple[bytes, bytes]:
    """Read an HTTP head; (head including the blank line, bytes after it)."""
    data = bytearray(buf)
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_LIMIT:
            raise ValueError("head too long")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise EOFError("closed before the head was complete")
        data += chunk
    i = data.index(b"\r\n\r\n") + 4
    return bytes(data[:i]), bytes(data[i:])


async def server_handshake(stream: trio.abc.Stream) -> tuple[Request, bytes]:
    """Answer a client's opening handshake with 101; returns the request and the bytes the
    client sent after its head (the start of its frames)."""
    head, rest = await read_head(stream)
    ws = WSConnection(ConnectionType.SERVER)
    ws.receive_data(head)
    request = next(iter(ws.events()))
    assert isinstance(request, Request)
    proto = request.subprotocols[0] if request.subprotocols else None
    await stream.send_all(ws.send(AcceptConnection(subprotocol=proto)))
    return request, rest


async def client_handshake(stream: trio.abc.Stream, host: str, target: str = "/") -> bytes:
    """Open a WebSocket as a client on `stream`; returns the bytes read after the 101 head.
    Raises UpstreamConnectError like the product's connect does."""
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.send_all(ws.send(Request(host=host, target=target)))
    try:
        head, rest = await read_head(stream)
    except (EOFError, trio.BrokenResourceError):
        raise UpstreamConnectError("refused") from None
    ws.receive_data(head)
    for event in ws.events():
        if isinstance(event, AcceptConnection):
            return rest
        if isinstance(event, RejectConnection):
            raise UpstreamConnectError("rejected", event.status_code)
    raise UpstreamConnectError("protocol")


@dataclass
class RawFrame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes  # unmasked
    mask: bytes | None

    @property
    def close(self) -> tuple[int | None, bytes]:
        assert self.opcode == OP_CLOSE
        if not self.payload:
            return None, b""
        return struct.unpack("!H", self.payload[:2])[0], self.payload[2:]


def encode_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """One frame, exactly as asked (`length` may lie, for malformed-frame tests)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask is not None:
        return head + mask + bytes(XorMaskerSimple(mask).process(payload))
    return head + payload


def close_payload(code: int | None, reason: bytes = b"") -> bytes:
    return b"" if code is None else struct.pack("!H", code) + reason


class RawPeer:
    """One WebSocket endpoint after its handshake. Client peers mask what they send with a
    fixed, known key (so tests can compare it with the key the gateway uses upstream)."""

    CLIENT_KEY = b"\x11\x22\x33\x44"

    def __init__(self, stream: trio.abc.Stream, buffered: bytes = b"", *, client: bool) -> None:
        self.stream = stream
        self.buf = bytearray(buffered)
        self.client = client
        self.received: list[RawFrame] = []
        self.eof = False

    async def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            try:
                chunk = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                self.eof = True
                return False
            self.buf += chunk
        return True

    async def recv_frame(self) -> RawFrame | None:
        """Next frame, or None at EOF."""
        if not await self._need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n = b1 & 0x7F
        off = 2
        if n == 126:
            if not await self._need(4):
                return None
            n = struct.unpack_from("!H", self.buf, 2)[0]
            off = 4
        elif n == 127:
            if not await self._need(10):
                return None
            n = struct.unpack_from("!Q", self.buf, 2)[0]
            off = 10
        mask = None
        if b1 & 0x80:
            if not await self._need(off + 4):
                return None
            mask = bytes(self.buf[off : off + 4])
            off += 4
        if not await self._need(off + n):
            return None
        payload = bytes(self.buf[off : off + n])
        del self.buf[: off + n]
        if mask is not None:
            payload = bytes(XorMaskerSimple(mask).process(payload))
        frame = RawFrame(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, payload, mask)
        self.received.append(frame)
        return frame

    async def recv_data(self) -> RawFrame:
        """Next data frame, answering nothing and skipping nothing: asserts it is data."""
        f = await self.recv_frame()
        assert f is not None, "EOF instead of a data frame"
        assert f.opcode in (OP_CONT, OP_TEXT, OP_BINARY), f
        return f

    async def recv_close(self) -> tuple[int | None, bytes]:
        """Read frames until a close frame; returns its (code, reason)."""
        while True:
            f = await self.recv_frame()
            assert f is not None, "EOF before a close frame"
            if f.opcode == OP_CLOSE:
                return f.close

    async def wait_eof(self) -> None:
        while await self.recv_frame() is not None:
            pass

    def frame(self, opcode: int, payload: bytes = b"", **kw: object) -> bytes:
        if self.client and "mask" not in kw:
            kw["mask"] = self.CLIENT_KEY
        return encode_frame(opcode, payload, **kw)  # type: ignore[arg-type]

    async def send(self, opcode: int, payload: bytes = b"", **kw: object) -> None:
        await self.stream.send_all(self.frame(opcode, payload, **kw))

    async def send_close(self, code: int | None = None, reason: bytes = b"") -> None:
        await self.send(OP_CLOSE, close_payload(code, reason))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def echo_upstream(peer: RawPeer) -> None:
    """Echo data frames as they come (same opcode and fin), answer pings, reply to a close
    with the same payload and close TCP."""
    while True:
        f = await peer.recv_frame()
        if f is None:
            return
        if f.opcode in (OP_CONT, OP_TEXT, OP_BINARY):
            await peer.send(f.opcode, f.payload, fin=f.fin)
        elif f.opcode == OP_PING:
            await peer.send(OP_PONG, f.payload)
        elif f.opcode == OP_CLOSE:
            await peer.send(OP_CLOSE, f.payload)
            await peer.aclose()
            return


class WrappedStream(trio.abc.HalfCloseableStream):
    """A stream that is not a trio.SocketStream (like an SSLStream or a replaying wrapper):
    makes the engine use plain send_all instead of its socket fast path."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class Session:
    stats: SpliceStats = field(default_factory=SpliceStats)
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None


Connect = Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]]


class SpliceEnv:
    """Gateway + raw upstream on 127.0.0.1. Accepted upstream peers are handed to
    `upstream_handler` (in the env's nursery) and also appear in `upstream_peers`."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        policy: SplicePolicy | None = None,
        upstream_handler: Callable[[RawPeer], Awaitable[None]] | None = echo_upstream,
        reject_status: int | None = None,
        connect_gate: trio.Event | None = None,
        connect: Connect | None = None,
        shutdown: trio.Event | None = None,
        gateway_rcvbuf: int | None = None,
        wrap_streams: bool = False,
    ) -> None:
        self.wrap_streams = wrap_streams
        self.nursery = nursery
        self.policy = policy or SplicePolicy()
        self.upstream_handler = upstream_handler
        self.reject_status = reject_status
        self.connect_gate = connect_gate
        self.custom_connect = connect
        self.shutdown = shutdown
        self.gateway_rcvbuf = gateway_rcvbuf
        self.sessions: list[Session] = []
        self.session_started = trio.Event()
        self.upstream_peers: list[RawPeer] = []
        self.upstream_new = trio.Event()
        self.up_port = 0
        self.port = 0

    async def start(self) -> SpliceEnv:
        up = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        self.up_port = up.socket.getsockname()[1]
        self.nursery.start_soon(trio.serve_listeners, self._serve_upstream, [up])
        gw = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        if self.gateway_rcvbuf:
            gw.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.gateway_rcvbuf)
        self.port = gw.socket.getsockname()[1]
        self.nursery.start_soon(trio.serve_listeners, self._serve_gateway, [gw])
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/relay"

    async def _serve_upstream(self, stream: trio.SocketStream) -> None:
        try:
            head, rest = await read_head(stream)
        except (EOFError, trio.BrokenResourceError):
            return
        if self.reject_status is not None:
            await stream.send_all(
                b"HTTP/1.1 %d Nope\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % self.reject_status
            )
            await stream.aclose()
            return
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        request = next(iter(ws.events()))
        assert isinstance(request, Request)
        await stream.send_all(ws.send(AcceptConnection()))
        peer = RawPeer(stream, rest, client=False)
        self.upstream_peers.append(peer)
        self.upstream_new.set()
        self.upstream_new = trio.Event()
        if self.upstream_handler is not None:
            await self.upstream_handler(peer)
        else:
            await trio.sleep_forever()  # the test drives the peer

    async def next_upstream(self) -> RawPeer:
        """The next upstream connection (waits for it)."""
        count = len(self.upstream_peers)
        while len(self.upstream_peers) <= count:
            await self.upstream_new.wait()
        return self.upstream_peers[count]

    async def _connect(self) -> tuple[trio.abc.Stream, bytes]:
        if self.connect_gate is not None:
            await self.connect_gate.wait()
        if self.custom_connect is not None:
            return await self.custom_connect()
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", self.up_port)
        except OSError:
            raise UpstreamConnectError("refused") from None
        try:
            rest = await client_handshake(stream, f"127.0.0.1:{self.up_port}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return (WrappedStream(stream) if self.wrap_streams else stream), rest

    async def _serve_gateway(self, stream: trio.SocketStream) -> None:
        session = Session()
        self.sessions.append(session)
        self.session_started.set()
        try:
            _, rest = await server_handshake(stream)
            client = WrappedStream(stream) if self.wrap_streams else stream
            await run_splice(client, rest, self._connect, self.policy, session.stats, self.shutdown)
        except BaseException as exc:  # recorded for the test, never expected
            session.error = exc
            raise
        finally:
            session.done.set()

    async def session(self, i: int = 0) -> Session:
        while len(self.sessions) <= i:
            await self.session_started.wait()
            self.session_started = trio.Event()
        return self.sessions[i]

    async def raw_client(self, *, sndbuf: int | None = None, rcvbuf: int | None = None) -> RawPeer:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        if sndbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        await sock.connect(("127.0.0.1", self.port))
        stream = trio.SocketStream(sock)
        rest = await client_handshake(stream, f"127.0.0.1:{self.port}", "/relay")
        return RawPeer(stream, rest, client=True)


async def start_env(nursery: trio.Nursery, **kw: object) -> SpliceEnv:
    return await SpliceEnv(nursery, **kw).start()  # type: ignore[arg-type]
