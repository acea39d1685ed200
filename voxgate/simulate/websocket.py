"""The WebSocket server every simulator runs on.

``serve_websocket(handler, records, host="127.0.0.1", port=0, *, task_status=...,
handshake_timeout=10.0, fault_kinds=FAULT_KINDS, http_handler=None) -> None`` binds, reports
the bound port through ``task_status.started(port)``, and for each connection reads the
handshake (trio-websocket's ``wrap_server_stream`` on the raw stream), appends a
``ConnectionRecord`` to ``records``, applies handshake faults (``voxgate.simulate.faults``),
then awaits ``handler(conn: SimConnection)``. The raw TCP stream is always closed afterwards
(also after a reject, which trio-websocket alone leaves open). Messages up to 16 MiB are
accepted (``MAX_MESSAGE_BYTES``). Runs until cancelled. With ``http_handler``, a request
that is not a WebSocket upgrade is answered by it (``voxgate.simulate.http``).

``SimConnection`` - what a handler gets: ``record``, ``stream``, ``ws`` (after accept),
``async reject(status, body, *, headers=())`` (body: bytes, str or JSON-able object),
``async accept(subprotocol=None)``, ``async send(message)``, ``async receive()`` (raises
``trio_websocket.ConnectionClosed`` and records the close), ``async close(code,
reason="")`` (bounded close handshake), ``async drop()`` (TCP closed, no close frame).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Literal

import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from voxgate.simulate.faults import FAULT_KINDS, FAULT_PARAM, parse_fault
from voxgate.simulate.http import HttpHandler, answer_http, split_target
from voxgate.simulate.record import ConnectionRecord, Frame
from voxgate.workers.streams import PrefixedStream

__all__ = ["MAX_MESSAGE_BYTES", "Handler", "SimConnection", "serve_websocket"]

logger = logging.getLogger(__name__)

# Real providers take large audio messages (OpenAI: appends up to 15 MiB); trio-websocket's
# 1 MiB default would close such connections with 1009.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class SimConnection:
    """One accepted TCP connection with a parsed handshake, handed to a simulator."""

    def __init__(
        self, stream: trio.SocketStream, request: WebSocketRequest, record: ConnectionRecord
    ) -> None:
        self.stream = stream
        self.request = request
        self.record = record
        self.ws: WebSocketConnection | None = None

    async def reject(
        self,
        status: int,
        body: bytes | str | Any = b"",
        *,
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer the handshake with a plain HTTP status (no 101) and close the socket."""
        extra = [(k.encode(), v.encode()) for k, v in headers]
        if isinstance(body, str):
            payload = body.encode()
        elif isinstance(body, bytes):
            payload = body
        else:
            payload = orjson.dumps(body)
            extra.append((b"Content-Type", b"application/json"))
        self.record.status = status
        self.record.notify()
        try:
            await self.request.reject(status, extra_headers=extra, body=payload or None)
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await self._close_stream()
        self.record._finish(None, None)

    async def accept(self, subprotocol: str | None = None) -> None:
        self.ws = await self.request.accept(subprotocol=subprotocol)
        self.record.status = 101
        self.record.notify()

    async def send(self, message: str | bytes) -> None:
        """Send one message and record it (raises ConnectionClosed when gone)."""
        assert self.ws is not None, "accept() first"
        await self.ws.send_message(message)
        kind: Literal["text", "binary"] = "text" if isinstance(message, str) else "binary"
        self.record.sent.append(Frame(kind, message))
        self.record.notify()

    async def receive(self) -> str | bytes:
        """Next message from the peer, recorded; on close the code is recorded and
        ``ConnectionClosed`` propagates."""
        assert self.ws is not None, "accept() first"
        try:
            message = await self.ws.get_message()
        except ConnectionClosed as exc:
            self.record._finish(exc.reason.code, exc.reason.reason)
            raise
        kind: Literal["text", "binary"] = "text" if isinstance(message, str) else "binary"
        self.record.received.append(Frame(kind, message))
        self.record.notify()
        return message

    async def close(self, code: int = 1000, reason: str = "", *, timeout: float = 2.0) -> None:
        """Start the close handshake; record the code the peer answers with."""
        assert self.ws is not None, "accept() first"
        with trio.move_on_after(timeout):
            await self.ws.aclose(code, reason or None)
        closed = self.ws.closed
        self.record._finish(closed.code if closed else 1006, closed.reason if closed else None)
        await self._close_stream()

    async def drop(self) -> None:
        """End the TCP connection without a WebSocket close frame."""
        await self._close_stream()
        self.record._finish(1006, None)

    async def _close_stream(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self.stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


Handler = Callable[[SimConnection], Awaitable[None]]


class _ReaderNursery:
    """Looks like a nursery to ``wrap_server_stream`` and tells us when its reader ends,
    which is how a hung or abandoned handshake notices that the peer left."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.done = trio.Event()

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        async def run() -> None:
            try:
                await fn(*args)
            finally:
                self.done.set()

        self._nursery.start_soon(run)


def _request_headers(request: WebSocketRequest) -> list[tuple[str, str]]:
    """Request headers as sent; wsproto keeps Host (and the subprotocol list) aside."""
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers]
    event = getattr(request, "_event", None)
    host = getattr(event, "host", None)
    if host:
        headers.insert(0, ("host", host))
    return headers


async def _read_request(
    nursery: trio.Nursery, stream: trio.SocketStream, timeout: float
) -> tuple[WebSocketRequest | None, _ReaderNursery]:
    shim = _ReaderNursery(nursery)
    request: WebSocketRequest | None = None
    with trio.move_on_after(timeout):
        async with trio.open_nursery() as race:

            async def get() -> None:
                nonlocal request
                request = await wrap_server_stream(
                    shim,  # type: ignore[arg-type]
                    stream,
                    max_message_size=MAX_MESSAGE_BYTES,
                )
                race.cancel_scope.cancel()

            async def watch() -> None:
                await shim.done.wait()
                race.cancel_scope.cancel()

            race.start_soon(get)
            race.start_soon(watch)
    return request, shim


async def serve_websocket(
    handler: Handler,
    records: list[ConnectionRecord],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    handshake_timeout: float = 10.0,
    fault_kinds: Mapping[str, bool] = FAULT_KINDS,
    http_handler: HttpHandler | None = None,
) -> None:
    """Serve simulated WebSocket connections until cancelled (see the module docstring).
    With `http_handler`, a request that is not a WebSocket upgrade is answered by it."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def on_stream(stream: trio.SocketStream) -> None:
        conn: SimConnection | None = None
        try:
            async with trio.open_nursery() as nursery:
                ws_stream: Any = stream
                if http_handler is not None:
                    prefix = await answer_http(stream, http_handler, handshake_timeout)
                    if prefix is None:
                        nursery.cancel_scope.cancel()
                        return
                    ws_stream = PrefixedStream(stream, prefix)
                request, reader = await _read_request(nursery, ws_stream, handshake_timeout)
                if request is None:
                    nursery.cancel_scope.cancel()
                    return
                path, query = split_target(request.path)
                record = ConnectionRecord(
                    path=path,
                    query=query,
                    headers=_request_headers(request),
                    subprotocols=list(request.proposed_subprotocols),
                )
                records.append(record)
                conn = SimConnection(ws_stream, request, record)
                try:
                    record.fault = parse_fault(record.query_value(FAULT_PARAM), fault_kinds)
                except ValueError as exc:
                    await conn.reject(
                        400, {"error": {"message": str(exc), "code": "bad_sim_fault"}}
                    )
                    nursery.cancel_scope.cancel()
                    return
                record.notify()
                fault = record.fault
                if fault is not None and fault.kind == "refuse":
                    body = {
                        "error": {
                            "message": f"simulated refusal with HTTP {fault.arg}",
                            "type": "sim_fault",
                            "code": fault.arg,
                        }
                    }
                    await conn.reject(fault.arg or 500, body)
                elif fault is not None and fault.kind == "hang":
                    await reader.done.wait()
                else:
                    if fault is not None and fault.kind == "delay":
                        await trio.sleep((fault.arg or 0) / 1000)
                    await handler(conn)
                nursery.cancel_scope.cancel()
        except Exception:  # a broken simulated connection must never stop the server
            logger.exception("simulator connection handler failed")
        finally:
            if conn is not None:
                conn.record._finish(1006, None)
            with trio.CancelScope(shield=True):
                try:
                    await stream.aclose()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass

    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(on_stream, listeners, handler_nursery=nursery)


