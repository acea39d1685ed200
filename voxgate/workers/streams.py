"""A stream that first replays bytes someone already read from it.

The supervisor reads the request head before handing a socket over; a worker that wants a
library (trio-websocket) to see the whole request wraps the socket in a `PrefixedStream`.
"""

from __future__ import annotations

import trio


class PrefixedStream(trio.abc.Stream):
    """`receive_some` returns `prefix` first, then whatever the inner stream yields."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self._prefix = memoryview(prefix) if prefix else None

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix is not None:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, rest = self._prefix[:size], self._prefix[size:]
            self._prefix = rest if len(rest) else None
            await trio.lowlevel.checkpoint()
            return bytes(chunk)
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()
