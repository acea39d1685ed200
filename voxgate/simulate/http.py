"""Plain HTTP on a simulator's port: requests that are not WebSocket upgrades.

The OpenAI simulator also answers WebRTC call set-up (``POST /v1/realtime/calls``) on the
port its WebSocket endpoint uses, as the real service does. ``answer_http`` reads one
request head with h11: an upgrade is handed back untouched (every byte read, for the
WebSocket handshake to replay); anything else is read whole and answered by a handler
``async (HttpExchange) -> (status, headers, body)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

__all__ = ["MAX_HTTP_BODY", "HttpExchange", "HttpHandler", "answer_http", "split_target"]

MAX_HTTP_BODY = 1 << 20
_MAX_EVENTS = 10_000  # h11 events per request (bounds the read loop)


@dataclass
class HttpExchange:
    """A plain HTTP request (not a WebSocket upgrade) a simulator answered."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]  # names lower-case
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def query_value(self, name: str) -> str | None:
        return next((v for k, v in self.query if k == name), None)


HttpHandler = Callable[[HttpExchange], Awaitable[tuple[int, list[tuple[str, str]], bytes]]]


def split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    """A request target as (path, query pairs in order, blank values kept)."""
    parts = urlsplit(target)
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


async def answer_http(stream: trio.SocketStream, handler: HttpHandler, timeout: float) -> bytes | None:
    """Read one request head. A WebSocket upgrade: return every byte read (the caller replays
    them). Anything else: read the body, answer with `handler`, return None."""
    raw = bytearray()
    read: HttpExchange | bytes | None = None
    with trio.move_on_after(timeout):
        read = await _read_request(stream, raw)
    if not isinstance(read, HttpExchange):
        return read
    status, headers, payload = await handler(read)
    await _send_quietly(stream, _http_bytes(status, headers, payload))
    return None


async def _read_request(stream: trio.SocketStream, raw: bytearray) -> HttpExchange | bytes | None:
    """The whole request, the bytes of an upgrade's head, or None (peer gone, or refused
    here with 400/413)."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 << 10)
    request: h11.Request | None = None
    body = bytearray()
    for _ in range(_MAX_EVENTS):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            await _send_quietly(stream, _http_bytes(400, [], b"bad request"))
            return None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            raw += data
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            if _is_upgrade(event):
                return bytes(raw)
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_HTTP_BODY:
                await _send_quietly(stream, _http_bytes(413, [], b"too large"))
                return None
        elif isinstance(event, h11.EndOfMessage) and request is not None:
            return _exchange(request, bytes(body))
        else:
            return None
    return None


def _is_upgrade(request: h11.Request) -> bool:
    headers = {k.lower(): v.lower() for k, v in request.headers}
    return request.method == b"GET" and headers.get(b"upgrade") == b"websocket"


def _exchange(request: h11.Request, body: bytes) -> HttpExchange:
    path, query = split_target(request.target.decode("latin-1"))
    return HttpExchange(
        method=request.method.decode("ascii", "replace"),
        path=path,
        query=query,
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers],
        body=body,
    )


def _http_bytes(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    all_headers = [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in all_headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
