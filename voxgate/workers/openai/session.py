"""The I/O around the translator core: two trio-websocket legs, timers, gateway limits.

The core (`translator.Translator`) decides everything; this module only feeds it events in
arrival order and performs the actions it returns. One lock serializes core calls and their
actions, so frames leave in exactly the order the core produced them.

trio-websocket runs its reader tasks in the nursery we give it; a fault inside the library
(e.g. a ping racing a close) therefore ends this session only, never the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlencode

import trio
import trio_websocket as tws
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection

from voxgate.workers.deepgram.service import choose_subprotocol
from voxgate.workers.errors import UpstreamConnectError
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
)
from voxgate.workers.runtime import Session
from voxgate.workers.streams import PrefixedStream

UPSTREAM_MAX_MESSAGE = 32 << 20
UPSTREAM_ERRORS = (
    trio.TooSlowError, tws.HandshakeError, tws.ConnectionClosed, OSError,
    trio.BrokenResourceError, trio.ClosedResourceError,
)
CLOSE_WAIT = 2.0


class _TooLarge(str):
    """Stands in for a client message over the size limit (`TOO_LARGE`, checked by identity)."""


TOO_LARGE = _TooLarge()


class _ClientConnection(tws.WebSocketConnection):
    """The client leg. trio-websocket answers an over-size message with a bare 1009 from its
    reader task, but the translator must send an `Error` first (D35). This connection drops
    such a message's data as it arrives and hands the session `TOO_LARGE` instead, so memory
    stays bounded by the limit and the session closes the leg itself."""

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
            try:
                await self._send_channel.send(TOO_LARGE)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass

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
        stream, WSConnection(ConnectionType.SERVER), message_queue_size=4, max_message_size=limit
    )
    nursery.start_soon(connection._reader_task)  # noqa: SLF001 - as wrap_server_stream does
    return await connection._get_request()  # noqa: SLF001


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
        )
        self.max_pending = config.max_message_bytes * 4
        self.lock = trio.Lock()
        self.client: tws.WebSocketConnection | None = None
        self.upstream: tws.WebSocketConnection | None = None
        self.upstream_ready = trio.Event()
        self.progress = trio.Event()  # set after every upstream event: pending may have drained
        self.timers: dict[str, trio.CancelScope] = {}
        self.last_client_activity = trio.current_time()
        self.client_closed = False
        self.upstream_closed = False
        self.done = trio.Event()
        self.stats = {"frames_up": 0, "frames_down": 0, "bytes_up": 0, "bytes_down": 0}
        self.nursery: trio.Nursery | None = None

    # -- running the core ---------------------------------------------------------------

    async def feed(self, call: Callable[[], list[Action]]) -> None:
        """Run one core input and perform its actions, in order, under the lock."""
        async with self.lock:
            actions = call()
            for action in actions:
                await self.perform(action)
            if self.core.closed:
                self.done.set()

    async def perform(self, action: Action) -> None:
        if isinstance(action, SendClient):
            if self.client is not None and not self.client_closed:
                try:
                    await self.client.send_message(action.data)
                    self.stats["frames_down"] += 1
                    self.stats["bytes_down"] += len(action.data)
                except tws.ConnectionClosed:
                    self.client_closed = True
        elif isinstance(action, SendUpstream):
            if self.upstream is not None and not self.upstream_closed:
                try:
                    await self.upstream.send_message(action.data)
                    self.stats["frames_up"] += 1
                    self.stats["bytes_up"] += len(action.data)
                except tws.ConnectionClosed:
                    self.upstream_closed = True
        elif isinstance(action, ArmTimer):
            self._arm(action.name, action.seconds)
        elif isinstance(action, CancelTimer):
            scope = self.timers.pop(action.name, None)
            if scope is not None:
                scope.cancel()
        elif isinstance(action, CloseClient):
            self.session.summary["sent_client_code"] = action.code
            self.session.counters.closes[f"client|{action.code}"] += 1
            await self._close(self.client, action.code, action.reason)
            self.client_closed = True
        elif isinstance(action, CloseUpstream):
            await self._close(self.upstream, action.code, action.reason)
            self.upstream_closed = True
        elif isinstance(action, Log):
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
                await self.feed(partial(self.core.timer_expired, name))

    # -- the legs -----------------------------------------------------------------------

    async def run(self) -> None:
        session = self.session
        config = session.config
        stream = PrefixedStream(session.stream, session.preread)
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            request = await _wrap_client_stream(nursery, stream, config.max_message_bytes)
            self.client = await request.accept(subprotocol=choose_subprotocol(list(request.proposed_subprotocols)))
            session.log.info("session accepted", route=session.route, peer=session.peer)
            await self.feed(self.core.start)
            nursery.start_soon(self._connect_upstream)
            nursery.start_soon(self._read_client)
            nursery.start_soon(self._limits)
            await self.done.wait()
            nursery.cancel_scope.cancel()

    async def _connect_upstream(self) -> None:
        config = self.session.config
        base, model = realtime.base_and_model(config)
        query = realtime.upstream_query([], model)
        url = base + "?" + urlencode(query)
        headers = [(b"Authorization", f"Bearer {config.openai_key}".encode()), (b"User-Agent", b"voxgate")]
        started = trio.current_time()
        failure: BaseException | None = None
        try:
            # The upstream's reader task runs in a nursery of its own: trio-websocket raises a
            # rejected handshake (HTTP 401 with a body, ...) from that task, not from connect.
            async with trio.open_nursery() as nursery:
                with trio.fail_after(config.connect_timeout):
                    self.upstream = await tws.connect_websocket_url(
                        nursery, url, extra_headers=headers, message_queue_size=4,
                        max_message_size=UPSTREAM_MAX_MESSAGE,
                    )
                await self._upstream_opened(trio.current_time() - started)
                await self._read_upstream()
                nursery.cancel_scope.cancel()
        except* UPSTREAM_ERRORS as group:
            failure = _first_cause(group)
        if failure is None:
            return
        self.upstream_closed = True
        if self.upstream_ready.is_set():  # a library fault after the upstream opened
            self.session.log.warning("upstream failed", kind="protocol", error=type(failure).__name__)
            await self.feed(partial(self.core.upstream_closed, 1006, ""))
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
        self.progress.set()
        self.progress = trio.Event()

    async def _read_client(self) -> None:
        assert self.client is not None
        limit = self.session.config.max_message_bytes
        while True:
            while self.core.pending_bytes > self.max_pending and not self.core.ready and not self.core.closed:
                # D30 backpressure: stop reading the client until the upstream catches up
                await self.progress.wait()
            try:
                message = await self.client.get_message()
            except tws.ConnectionClosed as exc:
                code, text = _close_info(exc)
                self.client_closed = True
                self.session.summary["client_code"] = code
                await self.feed(partial(self.core.client_closed, code, text))
                self.done.set()
                return
            self.last_client_activity = trio.current_time()
            if message is TOO_LARGE or len(message) > limit:
                await self.feed(partial(self.core.gateway_limit, "message_too_large"))
                self.done.set()
                return
            await self.feed(partial(self.core.client_message, message))

    async def _read_upstream(self) -> None:
        assert self.upstream is not None
        while True:
            try:
                message = await self.upstream.get_message()
            except tws.ConnectionClosed as exc:
                code, text = _close_info(exc)
                self.upstream_closed = True
                self.session.summary["upstream_code"] = code
                await self.feed(partial(self.core.upstream_closed, code, text))
                self.done.set()
                return
            await self.feed(partial(self.core.upstream_message, message))
            self.progress.set()
            self.progress = trio.Event()

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
                await self.feed(partial(self.core.gateway_limit, code))
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
