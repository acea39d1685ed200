"""The loop that drives a sans-IO simulator session over one accepted WebSocket.

Simulator protocol logic has no sockets and no clocks, so it can be tested by feeding
messages and times. ``SimSession`` protocol: ``receive(message: str | bytes, now: float) ->
None`` and ``next_output(now: float) -> str | bytes | dict | Close | Drop | float | None`` (a
message to send now; a float = nothing before that ``trio.current_time()``; ``None`` = nothing
until the next input). ``run_session(conn, session) -> None`` moves messages both ways (dicts
are sent as JSON text) until either side ends the connection. If the session has a ``wakeup``
attribute, ``run_session`` sets it to a no-argument callable that makes the loop ask
``next_output`` again (for output queued from outside, e.g. a test pushing an event into a
live connection). ``Close(code, reason="")`` and ``Drop()`` are the outputs that end a
connection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import orjson
import trio
from trio_websocket import ConnectionClosed

from voxgate.simulate.websocket import SimConnection

__all__ = ["Close", "Drop", "Outgoing", "SimSession", "run_session"]


@dataclass(frozen=True)
class Close:
    """Output: close the WebSocket with this code."""

    code: int
    reason: str = ""


@dataclass(frozen=True)
class Drop:
    """Output: end the TCP connection without a close frame."""


Outgoing = str | bytes | dict | Close | Drop


class SimSession(Protocol):
    def receive(self, message: str | bytes, now: float) -> None: ...

    def next_output(self, now: float) -> Outgoing | float | None: ...


async def run_session(conn: SimConnection, session: SimSession) -> None:
    """Feed every received message to ``session`` and send whatever it produces, at the
    times it asks for, until the peer closes or the session emits Close/Drop."""
    wake = trio.Event()
    reader_scope = trio.CancelScope()

    def wakeup() -> None:
        wake.set()

    if hasattr(session, "wakeup"):
        session.wakeup = wakeup  # type: ignore[attr-defined]

    async def reader() -> None:
        with reader_scope:
            while True:
                message = await conn.receive()
                session.receive(message, trio.current_time())
                wake.set()

    async def writer() -> None:
        nonlocal wake
        while True:
            wake = trio.Event()
            out = session.next_output(trio.current_time())
            if out is None or isinstance(out, float | int):
                deadline = math.inf if out is None else float(out)
                with trio.move_on_at(deadline):
                    await wake.wait()
            elif isinstance(out, Close | Drop):
                # Stop reading first, so only the peer's answer is recorded as its close.
                reader_scope.cancel()
                await trio.lowlevel.checkpoint()
                if isinstance(out, Close):
                    await conn.close(out.code, out.reason)
                else:
                    await conn.drop()
                return
            elif isinstance(out, dict):
                await conn.send(orjson.dumps(out).decode())
            else:
                await conn.send(out)

    try:
        async with trio.open_nursery() as nursery:

            async def write_then_stop() -> None:
                await writer()
                nursery.cancel_scope.cancel()

            nursery.start_soon(reader)
            nursery.start_soon(write_then_stop)
    except* ConnectionClosed:
        pass


