"""Shared plumbing for voxgate's simulated upstreams (OpenAI Realtime, Deepgram).

Simulators must behave like the real services on the wire, be told to misbehave per
connection, and let tests see exactly what reached them. This module holds the parts every
simulator needs, so each provider module only holds protocol logic.

Stable API (other simulators build on it; signatures do not change):

Faults
    ``FAULT_PARAM = "sim_fault"`` - the query parameter that picks a fault per connection.
    ``FAULT_KINDS: dict[str, bool]`` - known kinds -> whether they take an integer argument:
    ``refuse:<status>``, ``hang``, ``delay:<ms>``, ``close:<code>``, ``drop``, ``garbage``,
    ``delay_updated:<ms>``. A simulator may pass its own mapping to extend it.
    ``Fault(kind: str, arg: int | None = None)`` - a parsed fault.
    ``parse_fault(spec: str | None, kinds: Mapping[str, bool] = FAULT_KINDS) -> Fault | None``
    - ``None``/``""`` -> ``None``; unknown kind or bad argument -> ``ValueError``.
    ``HANDSHAKE_FAULTS = {"refuse", "hang", "delay"}`` - applied by ``serve_websocket``
    itself before the handler runs (``refuse`` answers that HTTP status with a JSON body and
    no 101, ``hang`` reads the request and never answers, ``delay`` sleeps before the
    handler). Every other fault is left to the simulator (``record.fault``).

Recording
    ``Frame(kind: "text" | "binary", data: str | bytes)`` with ``.json()``.
    ``ConnectionRecord`` - one per TCP connection that sent a request head: ``path`` (no
    query), ``query`` (list of (name, value), order kept), ``headers`` (list of (name,
    value), names lower-case), ``subprotocols``, ``fault``, ``status`` (101 when accepted,
    the HTTP status when rejected, ``None`` otherwise), ``received`` / ``sent`` (lists of
    ``Frame``), ``close_code`` / ``close_reason`` (what the peer's close frame said, 1006
    when TCP ended without one), ``closed`` (``trio.Event``, set when the connection is
    over). Helpers: ``query_value(name)``, ``header(name)``, ``received_json()``,
    ``sent_json()``, ``async wait_until(predicate)``, ``async wait_received(n)``,
    ``async wait_sent(n)``. Waiters wake on every change; bound them with
    ``trio.fail_after`` in tests.

Serving
    ``serve_websocket(handler, records, host="127.0.0.1", port=0, *, task_status=...,
    handshake_timeout=10.0, fault_kinds=FAULT_KINDS) -> None`` - binds, reports the bound
    port through ``task_status.started(port)``, and for each connection reads the handshake
    (trio-websocket's ``wrap_server_stream`` on the raw stream), appends a
    ``ConnectionRecord`` to ``records``, applies handshake faults, then awaits
    ``handler(conn: SimConnection)``. The raw TCP stream is always closed afterwards (also
    after a reject, which trio-websocket alone leaves open). Messages up to 16 MiB are
    accepted (``MAX_MESSAGE_BYTES``). Runs until cancelled.
    With ``http_handler=`` (``async (HttpExchange) -> (status, headers, body)``), a request
    that is not a WebSocket upgrade is read whole and answered by it instead (the OpenAI
    simulator's WebRTC ``/v1/realtime/calls``); upgrades are served as before.
    ``SimConnection`` - what a handler gets: ``record``, ``stream``, ``ws`` (after accept),
    ``async reject(status, body, *, headers=())`` (body: bytes, str or JSON-able object),
    ``async accept(subprotocol=None)``, ``async send(message)``, ``async receive()`` (raises
    ``trio_websocket.ConnectionClosed`` and records the close), ``async close(code,
    reason="")`` (bounded close handshake), ``async drop()`` (TCP closed, no close frame).

Sessions (sans-IO protocol logic driven by a generic loop)
    ``Close(code: int, reason: str = "")`` and ``Drop()`` - outputs that end a connection.
    ``SimSession`` protocol: ``receive(message: str | bytes, now: float) -> None`` and
    ``next_output(now: float) -> str | bytes | dict | Close | Drop | float | None`` (a
    message to send now; a float = nothing before that ``trio.current_time()``; ``None`` =
    nothing until the next input). ``run_session(conn, session) -> None`` moves messages
    both ways (dicts are sent as JSON text) until either side ends the connection. If the
    session has a ``wakeup`` attribute, ``run_session`` sets it to a no-argument callable
    that makes the loop ask ``next_output`` again (for output queued from outside, e.g. a
    test pushing an event into a live connection).

Audio
    ``tone_pcm16(duration_ms, *, rate=24000, freq=440.0, amplitude=0.3) -> bytes``,
    ``silence_pcm16(duration_ms, *, rate=24000) -> bytes`` (PCM16 little-endian mono) and
    ``rms_pcm16(pcm: bytes) -> float`` (0.0 - 1.0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, urlsplit

import h11
import numpy as np
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    wrap_server_stream,
)

from voxgate.workers.streams import PrefixedStream

__all__ = [
    "FAULT_KINDS",
    "FAULT_PARAM",
    "HANDSHAKE_FAULTS",
    "Close",
    "ConnectionRecord",
    "Drop",
    "Fault",
    "Frame",
    "HttpExchange",
    "SimConnection",
    "SimSession",
    "parse_fault",
    "rms_pcm16",
    "run_session",
    "serve_websocket",
    "silence_pcm16",
    "tone_pcm16",
]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------
# Faults

FAULT_PARAM = "sim_fault"

FAULT_KINDS: dict[str, bool] = {
    "refuse": True,
    "hang": False,
    "delay": True,
    "close": True,
    "drop": False,
    "garbage": False,
    "delay_updated": True,
}

HANDSHAKE_FAULTS = frozenset({"refuse", "hang", "delay"})

# Real providers take large audio messages (OpenAI: appends up to 15 MiB); trio-websocket's
# 1 MiB default would close such connections with 1009.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    """One way a simulated connection misbehaves, parsed from ``?sim_fault=kind[:arg]``."""

    kind: str
    arg: int | None = None


def parse_fault(spec: str | None, kinds: Mapping[str, bool] = FAULT_KINDS) -> Fault | None:
    """Parse ``kind`` or ``kind:<int>``; raise ``ValueError`` for anything unknown."""
    if not spec:
        return None
    kind, sep, raw = spec.partition(":")
    kind = kind.strip()
    if kind not in kinds:
        raise ValueError(f"unknown fault {kind!r}")
    if not kinds[kind]:
        if sep:
            raise ValueError(f"fault {kind!r} takes no argument")
        return Fault(kind)
    try:
        arg = int(raw.strip())
    except ValueError:
        raise ValueError(f"fault {kind!r} needs an integer argument") from None
    if arg < 0:
        raise ValueError(f"fault {kind!r} needs a non-negative argument")
    return Fault(kind, arg)


# ---------------------------------------------------------------------------------------
# Recording


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


# ---------------------------------------------------------------------------------------
# Serving


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


def _split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    parts = urlsplit(target)
    return parts.path, parse_qsl(parts.query, keep_blank_values=True)


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
MAX_HTTP_BODY = 1 << 20


async def _answer_http(stream: trio.SocketStream, handler: HttpHandler, timeout: float) -> bytes | None:
    """Read one request head. A WebSocket upgrade: return every byte read (the caller replays
    them). Anything else: read the body, answer with `handler`, return None."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 << 10)
    raw = bytearray()
    request: h11.Request | None = None
    body = bytearray()
    with trio.move_on_after(timeout):
        for _ in range(10_000):
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
                request = event
                headers = {k.lower(): v.lower() for k, v in event.headers}
                if event.method == b"GET" and headers.get(b"upgrade") == b"websocket":
                    return bytes(raw)
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_HTTP_BODY:
                    await _send_quietly(stream, _http_bytes(413, [], b"too large"))
                    return None
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return None
    if request is None or conn.their_state is not h11.DONE:
        return None
    path, query = _split_target(request.target.decode("latin-1"))
    exchange = HttpExchange(
        method=request.method.decode("ascii", "replace"),
        path=path,
        query=query,
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers],
        body=bytes(body),
    )
    status, headers, payload = await handler(exchange)
    await _send_quietly(stream, _http_bytes(status, headers, payload))
    return None


def _http_bytes(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    all_headers = [*headers, ("Content-Length", str(len(body))), ("Connection", "close")]
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", *(f"{k}: {v}" for k, v in all_headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


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
                    prefix = await _answer_http(stream, http_handler, handshake_timeout)
                    if prefix is None:
                        nursery.cancel_scope.cancel()
                        return
                    ws_stream = PrefixedStream(stream, prefix)
                request, reader = await _read_request(nursery, ws_stream, handshake_timeout)
                if request is None:
                    nursery.cancel_scope.cancel()
                    return
                path, query = _split_target(request.path)
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


# ---------------------------------------------------------------------------------------
# Sessions


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


# ---------------------------------------------------------------------------------------
# Audio


def tone_pcm16(
    duration_ms: float, *, rate: int = 24000, freq: float = 440.0, amplitude: float = 0.3
) -> bytes:
    """A sine tone as PCM16 little-endian mono (stands in for speech and for TTS)."""
    n = int(rate * duration_ms / 1000)
    t = np.arange(n, dtype=np.float64) / rate
    samples = np.sin(2 * np.pi * freq * t) * amplitude * 32767
    return samples.astype("<i2").tobytes()


def silence_pcm16(duration_ms: float, *, rate: int = 24000) -> bytes:
    return bytes(2 * int(rate * duration_ms / 1000))


def rms_pcm16(pcm: bytes) -> float:
    """Root mean square of PCM16 LE samples, scaled to 0.0 - 1.0 (odd tail byte ignored)."""
    usable = len(pcm) - len(pcm) % 2
    if usable == 0:
        return 0.0
    samples = np.frombuffer(pcm[:usable], dtype="<i2").astype(np.float64) / 32768.0
    return float(np.sqrt(np.mean(samples * samples)))
