"""What a simulator saw on one connection, for tests to assert on.

``ConnectionRecord`` - one per TCP connection that sent a request head: ``path`` (no query),
``query`` (list of (name, value), order kept), ``headers`` (list of (name, value), names
lower-case), ``subprotocols``, ``fault``, ``status`` (101 when accepted, the HTTP status when
rejected, ``None`` otherwise), ``received`` / ``sent`` (lists of ``Frame``), ``close_code`` /
``close_reason`` (what the peer's close frame said, 1006 when TCP ended without one),
``closed`` (``trio.Event``, set when the connection is over). Helpers: ``query_value(name)``,
``header(name)``, ``received_json()``, ``sent_json()``, ``async wait_until(predicate)``,
``async wait_received(n)``, ``async wait_sent(n)``. Waiters wake on every change; bound them
with ``trio.fail_after`` in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import trio

from voxgate.simulate.faults import Fault

__all__ = ["ConnectionRecord", "Frame"]


@dataclass(frozen=True)
class Frame:
    """One WebSocket message as it crossed the wire."""

    kind: Literal["text", "binary"]
    data: str | bytes

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass(eq=False)
class ConnectionRecord:
    """Everything a test may want to know about one connection to a simulator."""

    path: str = ""
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: list[tuple[str, str]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=list)
    fault: Fault | None = None
    status: int | None = None
    received: list[Frame] = field(default_factory=list)
    sent: list[Frame] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    closed: trio.Event = field(default_factory=trio.Event)
    _changed: trio.Event = field(default_factory=trio.Event, repr=False)

    def query_value(self, name: str) -> str | None:
        """First value of a query parameter, or None."""
        return next((v for k, v in self.query if k == name), None)

    def header(self, name: str) -> str | None:
        """First value of a request header (case-insensitive), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def received_json(self) -> list[Any]:
        """Text frames received, parsed; frames that are not JSON are skipped."""
        return _parsed(self.received)

    def sent_json(self) -> list[Any]:
        """Text frames sent, parsed; frames that are not JSON are skipped."""
        return _parsed(self.sent)

    def notify(self) -> None:
        """Wake every waiter (call after changing the record)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_until(self, predicate: Callable[[ConnectionRecord], bool]) -> None:
        """Return once ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    async def wait_received(self, n: int) -> None:
        await self.wait_until(lambda r: len(r.received) >= n)

    async def wait_sent(self, n: int) -> None:
        await self.wait_until(lambda r: len(r.sent) >= n)

    def _finish(self, code: int | None, reason: str | None) -> None:
        if not self.closed.is_set():
            if self.close_code is None and code is not None:
                self.close_code, self.close_reason = int(code), reason
            self.closed.set()
        self.notify()


def _parsed(frames: Iterable[Frame]) -> list[Any]:
    out = []
    for f in frames:
        if f.kind == "text":
            try:
                out.append(orjson.loads(f.data))
            except orjson.JSONDecodeError:
                continue
    return out


