"""A loopback TCP forwarder whose target can change between tests.

A gateway subprocess takes about a second to start, and its upstream URL is fixed at start.
Test upstreams (fakes, simulators) live in each test's own trio loop on a fresh port. So a
module-scoped gateway points at this forwarder, which runs its own trio loop in a thread and
pipes every new connection to whatever `target` port the current test set. Bytes, EOF and
resets pass through, so a dropped upstream still looks dropped to the gateway.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from tests.support.trio_thread import TrioThread


class Forwarder(TrioThread):
    """`start()` -> port; set `target` to the port new connections should reach."""

    name = "forwarder"

    def __init__(self) -> None:
        super().__init__()
        self.target: int | None = None
        self.port = 0

    def start(self) -> int:
        self.start_thread()
        return self.port

    async def serve(self, started: Callable[[], None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        target = self.target
        try:
            if target is None:
                return
            try:
                up = await trio.open_tcp_stream("127.0.0.1", target)
            except OSError:
                return
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, down, up)
                    nursery.start_soon(_pipe, up, down)
            finally:
                await trio.aclose_forcefully(up)
        finally:
            await trio.aclose_forcefully(down)


async def _pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    """Copy until EOF, then half-close; a reset on either side ends both directions."""
    try:
        while True:
            data = await src.receive_some(65536)
            if not data:
                await dst.send_eof()
                return
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(src)
        await trio.aclose_forcefully(dst)
