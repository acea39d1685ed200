"""A recording fake upstream for gateway tests: echoes every message with its type kept,
records the request (path, query, headers, subprotocols) and every frame, and can be told
to close with a code or to hold its handshake."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import trio
import trio_websocket as tws


@dataclass
class Conn:
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    subprotocols: list[str]
    received: list[str | bytes] = field(default_factory=list)
    close_code: int | None = None
    closed: trio.Event = field(default_factory=trio.Event)
    ws: tws.WebSocketConnection | None = None


class EchoUpstream:
    """`await nursery.start(up.serve)` → port. Echo text as text, binary as binary."""

    def __init__(self) -> None:
        self.conns: list[Conn] = []
        self.changed = trio.Event()
        self.hold = False  # when True, the handshake is not answered until release()
        self._release = trio.Event()

    def release(self) -> None:
        self.hold = False
        self._release.set()

    def _bump(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, predicate, timeout: float = 5.0):
        with trio.fail_after(timeout):
            while not predicate():
                await self.changed.wait()

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            async with trio.open_nursery() as nursery:
                request = await tws.wrap_server_stream(nursery, stream, max_message_size=64 << 20)
                parts = urlsplit(request.path)
                conn = Conn(
                    path=parts.path,
                    query=parse_qsl(parts.query, keep_blank_values=True),
                    headers={k.decode().lower(): v.decode() for k, v in request.headers},
                    subprotocols=list(request.proposed_subprotocols),
                )
                self.conns.append(conn)
                self._bump()
                if self.hold:
                    await self._release.wait()
                ws = await request.accept()
                conn.ws = ws
                try:
                    while True:
                        msg = await ws.get_message()
                        conn.received.append(msg)
                        self._bump()
                        await ws.send_message(msg)
                except tws.ConnectionClosed as exc:
                    conn.close_code = exc.reason.code if exc.reason else None
                conn.closed.set()
                self._bump()
                nursery.cancel_scope.cancel()
        except Exception:  # noqa: BLE001 - a test peer going away is not a test failure here
            pass
        finally:
            await trio.aclose_forcefully(stream)
