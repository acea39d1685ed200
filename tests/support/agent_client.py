"""A Deepgram Voice Agent protocol client over trio-websocket that keeps every frame the
gateway sent (text as parsed JSON, binary as bytes) and how it closed, so a test can wait for a
condition on everything received so far (bounded) instead of reading message by message."""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio_websocket as tws

WAIT = 5.0


class Client:
    """A Deepgram Voice Agent protocol client that keeps every frame it received
    (text as parsed JSON, binary as bytes) and how the gateway closed."""

    def __init__(self, ws: tws.WebSocketConnection) -> None:
        self.ws = ws
        self.frames: list[Any] = []
        self.times: list[float] = []
        self.close: tws.CloseReason | None = None
        self.closed = trio.Event()
        self._changed = trio.Event()

    async def reader(self) -> None:
        try:
            while True:
                message = await self.ws.get_message()
                self.frames.append(orjson.loads(message) if isinstance(message, str) else message)
                self.times.append(trio.current_time())
                self._bump()
        except tws.ConnectionClosed as exc:
            self.close = exc.reason
        finally:
            self.closed.set()
            self._bump()

    def _bump(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.ws.send_message(orjson.dumps(message).decode() if isinstance(message, dict) else message)

    async def wait_for(self, predicate, timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                if self.closed.is_set() and not predicate():
                    raise AssertionError(f"closed ({self.close}) before the condition; got {self.types()}")
                await self._changed.wait()

    def types(self) -> list[str]:
        return [f["type"] if isinstance(f, dict) else f"<{len(f)} B>" for f in self.frames]

    def of(self, mtype: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if isinstance(f, dict) and f.get("type") == mtype]

    def count(self, mtype: str) -> int:
        return len(self.of(mtype))

    def index(self, predicate) -> int:
        return next(i for i, f in enumerate(self.frames) if predicate(f))

    async def wait_type(self, mtype: str, n: int = 1, timeout: float = WAIT) -> dict[str, Any]:
        await self.wait_for(lambda: self.count(mtype) >= n, timeout)
        return self.of(mtype)[n - 1]

    async def wait_closed(self, timeout: float = WAIT) -> tws.CloseReason:
        with trio.fail_after(timeout):
            await self.closed.wait()
        assert self.close is not None
        return self.close

    def after_welcome(self) -> list[str]:
        types = self.types()
        assert types[0] == "Welcome", types
        return types[1:]
