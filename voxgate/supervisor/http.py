"""Reading one bounded request head with h11 (responses: `voxgate/http_response.py`).

The supervisor reads at most `max_bytes` of head within `timeout` seconds (slowloris): too
large → 431, too slow → 408, malformed → 400.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h11
import trio


class HeadError(Exception):
    """The request head could not be read; `status` is the HTTP answer to give."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(slots=True)
class Head:
    """A parsed request head plus every byte read so far (the worker replays them)."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    raw: bytes
    head_len: int
    body: bytes = b""
    _index: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """First value of a header (name lower-case)."""
        if not self._index:
            for key, value in self.headers:
                self._index.setdefault(key, value)
        return self._index.get(name)

    def header_values(self, name: str) -> list[str]:
        """All comma-separated values of a possibly repeated header."""
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(v.strip() for v in value.split(",") if v.strip())
        return out

    @property
    def is_websocket(self) -> bool:
        upgrade = (self.header("upgrade") or "").lower()
        return self.method == "GET" and upgrade == "websocket"


async def read_head(
    stream: trio.abc.ReceiveStream, *, max_bytes: int, timeout: float, max_body: int = 0
) -> Head:
    """Read and parse one request head (and a small body when `max_body` allows)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_bytes)
    raw = bytearray()
    with trio.move_on_after(timeout) as scope:
        request = await _next_request(stream, conn, raw, max_bytes)
        head_len = len(raw) - len(conn.trailing_data[0])
        if head_len > max_bytes:
            raise HeadError(431, "request head too large")
        body = b""
        if request.method != b"GET" and max_body:
            body = await _read_body(stream, conn, raw, max_body)
    if scope.cancelled_caught:
        raise HeadError(408, "request head not received in time")
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers]
    return Head(
        method=request.method.decode("ascii", "replace"),
        target=request.target.decode("latin-1"),
        headers=headers,
        raw=bytes(raw),
        head_len=head_len,
        body=body,
    )


async def _receive(stream: trio.abc.ReceiveStream, conn: h11.Connection, raw: bytearray) -> None:
    try:
        data = await stream.receive_some(16384)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HeadError(400, f"connection failed: {exc.__class__.__name__}") from None
    raw += data
    conn.receive_data(data)


async def _next_request(
    stream: trio.abc.ReceiveStream, conn: h11.Connection, raw: bytearray, max_bytes: int
) -> h11.Request:
    for _ in range(100_000):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in (400, 431) else 400
            raise HeadError(status, "request head too large" if status == 431 else "malformed request head") from None
        if event is h11.NEED_DATA:
            if len(raw) > max_bytes:
                raise HeadError(431, "request head too large")
            await _receive(stream, conn, raw)
            continue
        if isinstance(event, h11.Request):
            return event
        raise HeadError(400, "connection closed before a request head")
    raise HeadError(400, "malformed request head")


async def _read_body(stream: trio.abc.ReceiveStream, conn: h11.Connection, raw: bytearray, limit: int) -> bytes:
    body = bytearray()
    for _ in range(100_000):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            raise HeadError(400, "malformed request body") from None
        if event is h11.NEED_DATA:
            await _receive(stream, conn, raw)
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise HeadError(413, "request body too large")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise HeadError(400, "connection closed during the request body")
    raise HeadError(400, "malformed request body")
