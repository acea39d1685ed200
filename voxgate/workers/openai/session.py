"""The I/O around the translator core: two trio-websocket legs, timers, gateway limits.

The core (`translator.Translator`) decides everything; this module only feeds it events in
arrival order and performs the actions it returns. One turn (a lock) per session serializes core
calls and their actions, so frames leave in exactly the order the core produced them.

trio-websocket (with wsproto) stays the message engine of both legs; the hot path around it is
kept lean, because per audio frame it runs twice (frame in, reply out):
- each leg's reader task feeds a complete message to the core itself (`_Leg`) instead of
  queueing it for a session task: no memory-channel hand-off, no second task to wake;
- the turn and the library's send lock are taken without a scheduler round trip when free;
- plain TCP legs use `_DirectStream`: one write per message, no failed read per message.
Messages the session must handle outside the reader (an over-size client message, anything that
arrives before the session is ready for inline delivery) still go through the library's queue,
and inline delivery resumes only once that queue is drained, so arrival order holds. A reader
never blocks on the turn once the session is closing: the close handshakes need it reading.

trio-websocket runs its reader tasks in the nursery we give it; a fault inside the library
(e.g. a ping racing a close) therefore ends this session only, never the worker.
"""

from __future__ import annotations

import errno
import os
import ssl
import uuid
from collections.abc import Awaitable, Callable
from functools import cache, partial
from typing import Any

import trio
import trio_websocket as tws
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, TextMessage

from voxgate.workers.deepgram.service import choose_subprotocol
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.handshake import upstream_target
from voxgate.workers.openai import realtime
from voxgate.workers.openai.translator import (
    Action,
    ArmTimer,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    Log,
    SendClient,
    SendUpstream,
    Translator,
    dialect_for_path,
)
from voxgate.workers.runtime import Session
from voxgate.workers.sizeguard import SizeGuard
from voxgate.workers.streams import PrefixedStream

UPSTREAM_MAX_MESSAGE = 32 << 20
UPSTREAM_ERRORS = (
    trio.TooSlowError, tws.HandshakeError, tws.ConnectionClosed, OSError,
    trio.BrokenResourceError, trio.ClosedResourceError,
)
CLOSE_WAIT = 2.0
RECEIVE_BUFFER = 64 << 10
"""Bytes per socket read on both legs (trio-websocket's default is 4 KiB): a backlog of frames is
parsed after one read and one checkpoint instead of one per 4 KiB."""
MESSAGE_QUEUE = 4
"""trio-websocket's queue per leg; used only by messages that are not delivered inline."""


class _Turn:
    """FIFO mutual exclusion for one session's tasks. Unlike `trio.Lock`, taking a free turn is
    no checkpoint (no scheduler round trip); a waiter is handed the turn by `release`, so no
    later arrival can overtake it."""

    __slots__ = ("busy", "_lot")

    def __init__(self) -> None:
        self.busy = False
        self._lot = trio.lowlevel.ParkingLot()

    async def acquire(self) -> None:
        if self.busy:
            await self._lot.park()  # returns owning the turn
        else:
            self.busy = True

    def release(self) -> None:
        if self._lot:
            self._lot.unpark()  # busy stays True: handed over
        else:
            self.busy = False


class _DirectStream(trio.abc.HalfCloseableStream):
    """A `trio.SocketStream` with leaner I/O for the hot path, under trio-websocket (which still
    does all WebSocket work).

    - `receive_some` waits for readability first, then reads once: one checkpoint per read as
      before, but no failed read (EAGAIN, an exception) each time the peer has nothing more.
    - `send_all` writes at once and only waits when the socket buffer is full: no scheduler
      round trip per message. Callers checkpoint elsewhere (every reader loop waits to read).
    Errors map as in trio: a closed socket is `ClosedResourceError`, any other OS error
    `BrokenResourceError`. Optionally replays `prefix` first (the supervisor's pre-read bytes).
    """

    def __init__(
        self, inner: trio.SocketStream, prefix: bytes = b"", *,
        guard: SizeGuard | None = None, on_too_large: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.socket = inner.socket  # trio-websocket reads endpoints from it
        self._prefix = memoryview(prefix) if prefix else None
        # Client leg: an over-size message stops the stream at its header (sizeguard.py);
        # the engine then sees EOF once our close frame is out (`closed_sent`).
        self.guard = guard
        self.on_too_large = on_too_large
        self.closed_sent = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        guard = self.guard
        if guard is None:
            return await self._receive(max_bytes)
        while not guard.tripped:
            data = await self._receive(max_bytes)
            if not data:
                return data
            passed = guard.feed(data)
            if guard.tripped and self.on_too_large is not None:
                self.on_too_large()
            if passed:
                return passed
            # else: only part of a header so far, or the guard tripped
        await self.closed_sent.wait()
        return b""

    async def _receive(self, max_bytes: int | None) -> bytes:
        if self._prefix is not None:
            size = len(self._prefix) if max_bytes is None else max_bytes
            chunk, rest = self._prefix[:size], self._prefix[size:]
            self._prefix = rest if len(rest) else None
            await trio.lowlevel.checkpoint()
            return bytes(chunk)
        sock = self.socket
        while True:
            if sock.fileno() < 0:
                raise trio.ClosedResourceError("socket was already closed")
            await trio.lowlevel.wait_readable(sock)
            try:
                return os.read(sock.fileno(), max_bytes or RECEIVE_BUFFER)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.socket
        if sock.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        view = memoryview(data)
        total = len(view)
        sent = 0
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("socket was already closed")
            try:
                sent += os.write(fd, view[sent:] if sent else view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                raise _stream_error(exc) from exc
            if sent >= total:
                return

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _stream_error(exc: OSError) -> trio.ClosedResourceError | trio.BrokenResourceError:
    if exc.errno == errno.EBADF:
        return trio.ClosedResourceError("socket was already closed")
    return trio.BrokenResourceError(f"socket error: {exc.strerror or exc}")


class _TooLarge(str):
    """Stands in for a client message over the size limit (`TOO_LARGE`, checked by identity)."""


TOO_LARGE = _TooLarge()


class _Leg(tws.WebSocketConnection):
    """A trio-websocket connection that can hand each complete message to the session from its
    reader task (`deliver`), and sends without a checkpoint when its send lock is free.

    While `deliver` is None, or messages it queued earlier are not yet fed (`queued`), messages
    go through the library queue as usual, which keeps arrival order across the switch. The
    session decrements `queued` after feeding each message it took from the queue."""

    deliver: Callable[[str | bytes], Awaitable[None]] | None = None
    queued = 0

    async def _handle_message_event(self, event: Any) -> None:
        if not event.message_finished or self._message_size + len(event.data) > self._max_message_size:
            await super()._handle_message_event(event)  # one more part, or the library's 1009
            return
        parts = self._message_parts
        if parts:
            parts.append(event.data)
            message: str | bytes = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            self._message_parts = []
            self._message_size = 0
        else:
            message = event.data if isinstance(event.data, str | bytes) else bytes(event.data)
        if self.deliver is not None and not self.queued:
            try:
                await self.deliver(message)
            except KeyError as exc:  # the library's reader would log it as an unknown event
                raise RuntimeError("translator session failed on a message") from exc
        else:
            await self._enqueue(message)

    async def _enqueue(self, message: str | bytes) -> None:
        self.queued += 1
        try:
            await self._send_channel.send(message)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the session stopped reading this leg

    async def _send(self, event: Any) -> None:
        lock = self._stream_lock
        if lock.locked():
            await super()._send(event)
            return
        data = self._wsproto.send(event)
        lock.acquire_nowait()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._abort_web_socket()
            raise tws.ConnectionClosed(self._close_reason) from None
        finally:
            lock.release()


class _ClientConnection(_Leg):
    """The client leg. trio-websocket answers an over-size message with a bare 1009 from its
    reader task, but the translator must send an `Error` first (D35). This connection drops
    such a message's data as it arrives and hands the session `TOO_LARGE` instead (always through
    the queue: the session closes this leg, which needs this reader), so memory stays bounded by
    the limit and the session closes the leg itself."""

    _dropping = False

    async def _handle_message_event(self, event: Any) -> None:
        if not self._dropping and self._message_size + len(event.data) <= self._max_message_size:
            await super()._handle_message_event(event)
            return
        self._message_parts = []
        self._message_size = 0
        first = not self._dropping
        self._dropping = not event.message_finished
        if first:
            await self._enqueue(TOO_LARGE)

    async def _send(self, event: Any) -> None:
        await super()._send(event)
        if isinstance(event, CloseConnection) and isinstance(self._stream, _DirectStream):
            self._stream.closed_sent.set()  # a stream stopped by its size guard may end now

    async def _handle_close_connection_event(self, event: CloseConnection) -> None:
        # wsproto reports a frame it rejects (protocol error 1002, invalid UTF-8 1007) as a
        # close event while the connection is still OPEN, and trio-websocket then drops TCP
        # with no close frame. RFC 6455 §7.1.7: send the close first, so the client sees why.
        if self._wsproto.state is ConnectionState.OPEN:
            try:
                reason = "invalid UTF-8" if event.code == 1007 else "protocol error"  # generic (P15)
                await self._send(CloseConnection(code=event.code, reason=reason))
            except tws.ConnectionClosed:
                pass
        await super()._handle_close_connection_event(event)


async def _wrap_client_stream(nursery: trio.Nursery, stream: trio.abc.Stream, limit: int) -> tws.WebSocketRequest:
    """`trio_websocket.wrap_server_stream` with the connection class above."""
    connection = _ClientConnection(
        stream, WSConnection(ConnectionType.SERVER), message_queue_size=MESSAGE_QUEUE,
        max_message_size=limit, receive_buffer_size=RECEIVE_BUFFER,
    )
    nursery.start_soon(connection._reader_task)  # noqa: SLF001 - as wrap_server_stream does
    return await connection._get_request()  # noqa: SLF001


@cache
def _tls_context() -> ssl.SSLContext:
    """One default client context per process (building one loads the CA store)."""
    return ssl.create_default_context()


async def _connect_upstream_leg(
    nursery: trio.Nursery, base: str, query: list[tuple[str, str]], headers: list[tuple[bytes, bytes]]
) -> _Leg:
    """`trio_websocket.connect_websocket_url` with the `_Leg` connection class: open TCP (TLS
    for wss), start the reader in `nursery`, wait for the handshake. A rejected handshake is
    raised by the reader task into `nursery`, as with the library function."""
    host, host_header, port, tls, target = upstream_target(base, query)
    stream: trio.abc.Stream = _DirectStream(await trio.open_tcp_stream(host, port))
    if tls:  # as trio.open_ssl_over_tcp_stream, over the lean transport
        stream = trio.SSLStream(stream, _tls_context(), server_hostname=host, https_compatible=True)
    try:
        connection = _Leg(
            stream, WSConnection(ConnectionType.CLIENT), host=host_header, path=target,
            client_extra_headers=headers, message_queue_size=MESSAGE_QUEUE,
            max_message_size=UPSTREAM_MAX_MESSAGE, receive_buffer_size=RECEIVE_BUFFER,
        )
        nursery.start_soon(connection._reader_task)  # noqa: SLF001 - as connect_websocket does
        await connection._open_handshake.wait()  # noqa: SLF001
    except BaseException:
        # An abandoned connect (client gone, timeout) closes its socket now, not whenever the
        # garbage collector gets to the cancelled frames that still reference it.
        await trio.aclose_forcefully(stream)
        raise
    return connection


class TranslatorSession:
    """One `/openai` connection: client leg, upstream leg, the core between them."""

    def __init__(self, session: Session) -> None:
        config = session.config
        self.session = session
        self.core = Translator(
            request_id=str(uuid.uuid4()),
            default_model=realtime.base_and_model(config)[1],
            strict=config.translator_strict,
            json_passthrough=config.translator_json_passthrough,
            max_pending_bytes=config.max_message_bytes * 4,
            dialect=dialect_for_path(session.handshake.request.path),
        )
        self.max_pending = config.max_message_bytes * 4
        self.turn = _Turn()
        self.inline_waits: set[trio.CancelScope] = set()  # reader tasks waiting for the turn
        self.client: _ClientConnection | None = None
        self.upstream: _Leg | None = None
        self.upstream_ready = trio.Event()
        self.progress = trio.Event()  # set after upstream events: pending may have drained
        self.progress_waiters = 0
        self.timers: dict[str, trio.CancelScope] = {}
        self.last_client_activity = trio.current_time()
        self.client_closed = False
        self.upstream_closed = False
        self.done = trio.Event()
        self.stats = {"frames_up": 0, "frames_down": 0, "bytes_up": 0, "bytes_down": 0}
        self.nursery: trio.Nursery | None = None

    # -- running the core ---------------------------------------------------------------

    async def feed(self, call: Callable[..., list[Action]], *args: Any) -> None:
        """Run one core input and perform its actions, in order, holding the turn."""
        turn = self.turn
        await turn.acquire()
        try:
            await self._run_core(call, args)
        finally:
            turn.release()

    async def feed_inline(self, call: Callable[..., list[Action]], arg: Any) -> None:
        """`feed` for a leg's reader task. A session that is closing needs the readers free to
        see the peers' close frames, so a reader never waits for the turn once the core is
        closed, and a reader already waiting is released (`_release_readers`)."""
        core = self.core
        if core.closed:
            return  # the core would return no actions; whoever closed it sets `done`
        turn = self.turn
        if turn.busy:
            with trio.CancelScope() as scope:
                self.inline_waits.add(scope)
                try:
                    await turn.acquire()
                finally:
                    self.inline_waits.discard(scope)
            if scope.cancelled_caught:
                return
        else:
            turn.busy = True
        try:
            await self._run_core(call, (arg,))
        finally:
            turn.release()

    async def _run_core(self, call: Callable[..., list[Action]], args: tuple[Any, ...]) -> None:
        core = self.core
        actions = call(*args)
        if core.closed:
            self._release_readers()
        for action in actions:
            await self.perform(action)
        if core.closed:
            self.done.set()

    def _release_readers(self) -> None:
        """The core closed: reader tasks waiting for the turn or for upstream progress go back
        to reading, so the close handshakes this turn performs can complete."""
        for scope in self.inline_waits:
            scope.cancel()
        self._progressed()

    def _progressed(self) -> None:
        if self.progress_waiters:
            self.progress.set()
            self.progress = trio.Event()

    async def _client_backpressure(self) -> None:
        """D30: hold client messages while too much waits for the upstream to open/be ready."""
        core = self.core
        while core.pending_bytes > self.max_pending and not core.ready and not core.closed:
            self.progress_waiters += 1
            try:
                await self.progress.wait()
            finally:
                self.progress_waiters -= 1

    async def perform(self, action: Action) -> None:
        kind = type(action)
        if kind is SendClient:
            if self.client is not None and not self.client_closed:
                try:
                    await self.client.send_message(action.data)
                    self.stats["frames_down"] += 1
                    self.stats["bytes_down"] += len(action.data)
                except tws.ConnectionClosed:
                    self.client_closed = True
        elif kind is SendUpstream:
            if self.upstream is not None and not self.upstream_closed:
                try:
                    await self.upstream.send_message(action.data)
                    self.stats["frames_up"] += 1
                    self.stats["bytes_up"] += len(action.data)
                except tws.ConnectionClosed:
                    self.upstream_closed = True
        elif kind is ArmTimer:
            self._arm(action.name, action.seconds)
        elif kind is CancelTimer:
            scope = self.timers.pop(action.name, None)
            if scope is not None:
                scope.cancel()
        elif kind is CloseClient:
            self.session.summary["sent_client_code"] = action.code
            self.session.counters.closes[f"client|{action.code}"] += 1
            await self._close(self.client, action.code, action.reason)
            self.client_closed = True
        elif kind is CloseUpstream:
            await self._close(self.upstream, action.code, action.reason)
            self.upstream_closed = True
        elif kind is Log:
            self.session.log.event(action.level, action.message, **action.fields)

    async def _close(self, ws: tws.WebSocketConnection | None, code: int, reason: str) -> None:
        if ws is None:
            return
        with trio.move_on_after(CLOSE_WAIT) as scope:
            await ws.aclose(code, reason)
        if scope.cancelled_caught:
            await trio.aclose_forcefully(ws._stream)  # noqa: SLF001 - bounded close fallback

    def _arm(self, name: str, seconds: float) -> None:
        old = self.timers.pop(name, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope()
        self.timers[name] = scope
        assert self.nursery is not None
        self.nursery.start_soon(self._timer, name, seconds, scope)

    async def _timer(self, name: str, seconds: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(seconds)
            if self.timers.get(name) is scope:
                del self.timers[name]
                await self.feed(self.core.timer_expired, name)

    # -- the legs -----------------------------------------------------------------------

    async def run(self) -> None:
        session = self.session
        config = session.config
        stream: trio.abc.Stream
        if isinstance(session.stream, trio.SocketStream):
            head_len = len(session.preread) - len(session.handshake.leftover)
            guard = SizeGuard(config.max_message_bytes, skip=head_len)
            stream = _DirectStream(session.stream, session.preread, guard=guard, on_too_large=self._too_large)
        else:
            stream = PrefixedStream(session.stream, session.preread)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                request = await _wrap_client_stream(nursery, stream, config.max_message_bytes)
                self.client = await request.accept(
                    subprotocol=choose_subprotocol(list(request.proposed_subprotocols))
                )
                session.log.info("session accepted", route=session.route, peer=session.peer)
                await self.feed(self.core.start)
                self.client.deliver = self._client_inline  # frames before Welcome: queued
                nursery.start_soon(self._connect_upstream)
                nursery.start_soon(self._read_client)
                nursery.start_soon(self._limits)
                await self.done.wait()
                nursery.cancel_scope.cancel()
        finally:
            if self.upstream is not None:  # closed by now on normal paths; this makes it certain
                await trio.aclose_forcefully(self.upstream._stream)  # noqa: SLF001

    def _too_large(self) -> None:
        """The size guard stopped the client stream at an over-size message's header."""
        assert self.nursery is not None
        self.nursery.start_soon(self._refuse_too_large)

    async def _refuse_too_large(self) -> None:
        self.last_client_activity = trio.current_time()
        await self.feed(self.core.gateway_limit, "message_too_large")
        self.done.set()

    async def _connect_upstream(self) -> None:
        config = self.session.config
        base, model = realtime.base_and_model(config)
        query = realtime.upstream_query([], model)
        headers = [(b"Authorization", f"Bearer {config.openai_key}".encode()), (b"User-Agent", b"voxgate")]
        started = trio.current_time()
        failure: BaseException | None = None
        try:
            # The upstream's reader task runs in a nursery of its own: trio-websocket raises a
            # rejected handshake (HTTP 401 with a body, ...) from that task, not from connect.
            async with trio.open_nursery() as nursery:
                with trio.fail_after(config.connect_timeout):
                    self.upstream = await _connect_upstream_leg(nursery, base, query, headers)
                await self._upstream_opened(trio.current_time() - started)
                self.upstream.deliver = self._upstream_inline
                await self._read_upstream()
                nursery.cancel_scope.cancel()
        except* UPSTREAM_ERRORS as group:
            failure = _first_cause(group)
        if failure is None:
            return
        self.upstream_closed = True
        if self.upstream_ready.is_set():  # a library fault after the upstream opened
            self.session.log.warning("upstream failed", kind="protocol", error=type(failure).__name__)
            await self.feed(self.core.upstream_closed, 1006, "")
        else:
            err = _classify(failure)
            self.session.counters.upstream_failures[err.kind] += 1
            self.session.log.warning("upstream failed", kind=err.kind, status=err.status)
            await self.feed(partial(self.core.upstream_failed, auth=err.auth, status=err.status))
        self.done.set()

    async def _upstream_opened(self, latency: float) -> None:
        self.session.connect_latency = lambda: latency
        self.session.summary["connect_ms"] = round(latency * 1000, 1)
        self.session.log.info("upstream connected", latency_ms=round(latency * 1000, 1))
        await self.feed(self.core.upstream_open)
        self.upstream_ready.set()
        self._progressed()

    async def _client_inline(self, message: str | bytes) -> None:
        """A client message, in the client reader task (never `TOO_LARGE`: that is queued)."""
        await self._client_backpressure()
        self.last_client_activity = trio.current_time()
        await self.feed_inline(self.core.client_message, message)

    async def _upstream_inline(self, message: str | bytes) -> None:
        """An upstream message, in the upstream reader task."""
        await self.feed_inline(self.core.upstream_message, message)
        self._progressed()

    async def _read_client(self) -> None:
        """Queued client messages, then the client leg's close."""
        client = self.client
        assert client is not None
        limit = self.session.config.max_message_bytes
        while True:
            await self._client_backpressure()
            try:
                message = await client.get_message()
            except tws.ConnectionClosed as exc:
                code, text = _close_info(exc)
                self.client_closed = True
                self.session.summary["client_code"] = code
                await self.feed(self.core.client_closed, code, text)
                self.done.set()
                return
            try:
                self.last_client_activity = trio.current_time()
                if message is TOO_LARGE or len(message) > limit:
                    await self.feed(self.core.gateway_limit, "message_too_large")
                    self.done.set()
                    return
                await self.feed(self.core.client_message, message)
            finally:
                client.queued -= 1

    async def _read_upstream(self) -> None:
        """Queued upstream messages, then the upstream leg's close."""
        upstream = self.upstream
        assert upstream is not None
        while True:
            try:
                message = await upstream.get_message()
            except tws.ConnectionClosed as exc:
                code, text = _close_info(exc)
                self.upstream_closed = True
                self.session.summary["upstream_code"] = code
                await self.feed(self.core.upstream_closed, code, text)
                self.done.set()
                return
            try:
                await self.feed(self.core.upstream_message, message)
            finally:
                upstream.queued -= 1
            self._progressed()

    async def _limits(self) -> None:
        """Idle timeout, max duration and drain, each ending with the core's Error + close."""
        config = self.session.config
        started = trio.current_time()

        def deadlines() -> list[tuple[float, str]]:
            # Recomputed after every wake-up: client activity moves the idle deadline.
            out = []
            if config.idle_timeout:
                out.append((self.last_client_activity + config.idle_timeout, "idle_timeout"))
            if config.max_session_seconds:
                out.append((started + config.max_session_seconds, "session_max_duration"))
            return out

        while True:
            code = None
            wake = min((d for d, _ in deadlines()), default=trio.current_time() + 3600)
            with trio.move_on_at(wake):
                await self.session.shutdown.wait()
                code = "shutting_down"
            if code is None:
                now = trio.current_time()
                code = next((c for d, c in deadlines() if d <= now), None)
            if code is not None:
                self.session.log.info("gateway limit", limit=code)
                await self.feed(self.core.gateway_limit, code)
                self.done.set()
                return


def _close_info(exc: tws.ConnectionClosed) -> tuple[int | None, str]:
    reason = exc.reason
    if reason is None:
        return None, ""
    return reason.code, reason.reason or ""


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """The exception that says most about a failed upstream: a handshake answer first."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    return next((e for e in leaves if isinstance(e, tws.HandshakeError)), leaves[0])


def _classify(exc: BaseException) -> UpstreamConnectError:
    if isinstance(exc, trio.TooSlowError):
        return UpstreamConnectError("timeout")
    if isinstance(exc, tws.ConnectionRejected):
        return UpstreamConnectError("rejected", exc.status_code)
    if isinstance(exc, tws.ConnectionTimeout):
        return UpstreamConnectError("timeout")
    if isinstance(exc, OSError):
        return UpstreamConnectError("refused")
    return UpstreamConnectError("protocol")


async def run_translator(session: Session) -> None:
    """Route handler for `/openai` and `/openai/v1/agent/converse`."""
    translator = TranslatorSession(session)
    stats = translator.stats
    session.traffic = lambda: (stats["frames_up"], stats["frames_down"], stats["bytes_up"], stats["bytes_down"])
    try:
        await translator.run()
    finally:
        session.summary.update(stats)
