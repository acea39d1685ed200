"""Upstreams for the hostile-input tests, on wsproto over plain trio TCP.

- `mode="echo"`: a conforming endpoint. Echoes every complete message with its type kept,
  answers pings and closes, and fails a bad frame (invalid UTF-8, protocol error) with a
  close frame carrying the code, the way the real providers' servers do. The Autobahn run
  needs that: the frame splice leaves text validation to the endpoints.
- `mode="stall"`: completes the handshake, sends `greeting`, then never reads again, so
  every byte the gateway forwards piles up in kernel buffers and then in the gateway unless
  it applies backpressure.
- `mode="slow"`: reads `chunk` raw bytes every `interval` seconds and discards them.
- `mode="discard"`: reads and discards as fast as the socket allows (no frame parsing).

Every connection is recorded, with an event set when its TCP connection has ended, so a
test can prove that the gateway left no upstream socket open. `drop_all()` closes every
connection's TCP at once (how a test ends sessions stuck behind a stalled upstream).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

MODES = ("echo", "stall", "slow", "discard")
MAX_HEAD = 16 * 1024


@dataclass(eq=False)
class UpConn:
    """One upstream connection as the gateway opened it."""

    path: str = ""
    bytes_received: int = 0  # after the handshake
    messages: int = 0
    close_code: int | None = None  # the gateway's close code (echo mode), None if none
    closed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


class SlowUpstream:
    """`port = await nursery.start(up.serve)`; see the module docstring for the modes."""

    def __init__(
        self, mode: str = "echo", *, greeting: list[str | bytes] | None = None,
        chunk: int = 4096, interval: float = 0.05,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.mode = mode
        self.greeting = list(greeting or [])
        self.chunk = chunk
        self.interval = interval
        self.conns: list[UpConn] = []
        self.changed = trio.Event()

    def _bump(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def drop_all(self) -> None:
        """End every connection's TCP now, without a close frame."""
        for conn in self.conns:
            conn.scope.cancel()

    @property
    def open_count(self) -> int:
        return sum(1 for c in self.conns if not c.closed.is_set())

    async def wait_for(self, predicate, timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = UpConn()
        self.conns.append(conn)
        self._bump()
        try:
            with conn.scope:
                ws = WSConnection(ConnectionType.SERVER)
                if await self._handshake(stream, ws, conn):
                    if self.mode == "echo":
                        await self._echo(stream, ws, conn)
                    else:
                        for message in self.greeting:
                            await stream.send_all(ws.send(_message(message)))
                        await self._raw(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)
            conn.closed.set()
            self._bump()

    async def _handshake(self, stream: trio.SocketStream, ws: WSConnection, conn: UpConn) -> bool:
        seen = 0
        while seen <= MAX_HEAD:
            data = await stream.receive_some(65536)
            if not data:
                return False
            seen += len(data)
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    conn.path = event.target
                    await stream.send_all(ws.send(AcceptConnection()))
                    return True
        return False

    async def _raw(self, stream: trio.SocketStream, conn: UpConn) -> None:
        if self.mode == "stall":
            await trio.sleep_forever()
        while True:
            data = await stream.receive_some(self.chunk if self.mode == "slow" else 1 << 20)
            if not data:
                return
            conn.bytes_received += len(data)
            if self.mode == "slow":
                await trio.sleep(self.interval)

    async def _echo(self, stream: trio.SocketStream, ws: WSConnection, conn: UpConn) -> None:
        parts: list[str | bytes] = []
        while True:
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    parts.append(event.data)
                    if event.message_finished:
                        message = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
                        parts.clear()
                        conn.messages += 1
                        await stream.send_all(ws.send(_message(message)))
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        conn.close_code = event.code
                        await stream.send_all(ws.send(event.response()))
                    elif ws.state is ConnectionState.OPEN:  # a frame wsproto rejected: fail loudly
                        await stream.send_all(ws.send(CloseConnection(code=event.code, reason="")))
                    return
            data = await stream.receive_some(65536)
            if not data:
                return
            conn.bytes_received += len(data)
            ws.receive_data(data)


def _message(data: str | bytes) -> TextMessage | BytesMessage:
    return TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
