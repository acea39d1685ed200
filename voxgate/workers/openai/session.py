"""The I/O around the translator core, on the worker's data plane.

The core (`translator.Translator`) decides everything; this module feeds it events in arrival
order and performs the actions it returns. Both legs are data-plane conns (`dataplane.py`): a
read is cut into complete messages by `messages.MessageReader` (UTF-8 checked for text, size
refused from the frame header), each message goes through the core synchronously inside the
readiness loop, and the frames the core produces are written at once (or queued per socket).
No task wake-up, no WebSocket library call per message; wsproto only does the two handshakes.
Everything runs in trio's thread, so a core call and its actions are never interleaved with
another: arrival order is send order without any lock.

trio keeps the control plane: the upstream connect (TLS legs are served by task-driven conns),
the core's timers (one task per session whose cancel-scope deadline is the earliest armed
timer), idle / max-duration / drain limits, and the session's lifetime.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable
from typing import Any

import trio

from voxgate.policy import rules_for
from voxgate.workers.dataplane import HIGH_WATER, attach
from voxgate.workers.errors import UpstreamConnectError, connect_within
from voxgate.workers.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    MaskKeys,
    build_close_payload,
    build_frame,
)
from voxgate.workers.handshake import open_upstream
from voxgate.workers.legs import Leg, LegPair
from voxgate.workers.messages import (
    BinaryMessage,
    MessageReader,
    PeerClosed,
    Ping,
    TextMessage,
)
from voxgate.workers.openai import upstream
from voxgate.workers.openai.actions import (
    Action,
    ArmTimer,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    Log,
    SendClient,
    SendUpstream,
)
from voxgate.workers.openai.translator import Translator, dialect_for_path
from voxgate.workers.passthrough import echo_subprotocol
from voxgate.workers.runtime import Session
from voxgate.workers.usage import bytes_per_second

UPSTREAM_MAX_MESSAGE = 32 << 20
CLOSE_WAIT = 2.0
CLIENT_OUT_BOUND = 4 * HIGH_WATER
"""Queued bytes toward a client over which that client is not read (it does not read its
answers: pongs and Errors must not pile up)."""


class _Leg(Leg):
    """One side of a translator session: a leg plus its message reader."""

    def __init__(self, reader: MessageReader) -> None:
        super().__init__()
        self.reader = reader


class TranslatorSession(LegPair):
    """One `/openai` connection: client leg, upstream leg, the core between them."""

    def __init__(self, session: Session) -> None:
        config = session.config
        self.session = session
        self.core = Translator(
            request_id=str(uuid.uuid4()),
            default_model=upstream.base_and_model(config)[1],
            strict=config.translator_strict,
            json_passthrough=config.translator_json_passthrough,
            max_pending_bytes=config.max_message_bytes * 4,
            policy=rules_for(config.session_policy, session.route, session.token_label),
            dialect=dialect_for_path(session.handshake.request.path),
        )
        self.c = _Leg(MessageReader(masked=True, max_message=config.max_message_bytes))
        self.up = _Leg(MessageReader(masked=False, max_message=UPSTREAM_MAX_MESSAGE))
        self.up_stream: trio.abc.Stream | None = None
        self.keys = MaskKeys()
        self.connect_scope = trio.CancelScope()
        self.deadlines: dict[str, float] = {}
        self.timer_scope: trio.CancelScope | None = None
        self.last_client_activity = trio.current_time()
        self.done = trio.Event()
        self.all_done = trio.Event()
        self.stats = {"frames_up": 0, "frames_down": 0, "bytes_up": 0, "bytes_down": 0}
        self.nursery: trio.Nursery
        # usage: client audio in, audio to the client, tokens from every response.done
        self.audio_in = 0
        self.audio_out = 0
        self._rates_declared = False
        usage = session.usage
        usage.meter(lambda: self.audio_in, lambda: self.audio_out, *self._rates())
        self.core.on_usage = usage.add_response_usage

    def _rates(self) -> tuple[float | None, float | None]:
        """Bytes per second of the formats the core uses with the client now."""
        core = self.core
        fin, fout = core.audio_formats
        return bytes_per_second(fin.encoding, fin.sample_rate), bytes_per_second(fout.encoding, fout.sample_rate)

    def _sync_rates(self) -> None:
        """After a client text message (a Settings may have declared the formats)."""
        usage = self.session.usage
        up, down = self._rates()
        assert usage.audio_up is not None and usage.audio_down is not None
        # the one Settings the core honours declares the formats of all audio, also audio
        # the client sent before it was processed
        first = not self._rates_declared
        self._rates_declared = self.core.settings_forwarded
        usage.audio_up.set_rate(up, retroactive=first)
        usage.audio_down.set_rate(down, retroactive=first)

    # -- running the core ---------------------------------------------------------------

    def feed(self, call: Callable[..., list[Action]], *args: Any) -> None:
        """Run one core input and perform its actions, in order."""
        core = self.core
        if core.closed:
            return
        for action in call(*args):
            self.perform(action)
        if core.closed:
            self.done.set()

    def perform(self, action: Action) -> None:
        kind = type(action)
        if kind is SendClient:
            c = self.c
            if not c.out_closed and c.conn is not None:
                data = action.data
                if type(data) is str:
                    payload = data.encode()
                    c.conn.write(build_frame(OP_TEXT, payload))
                else:
                    payload = data
                    c.conn.write(build_frame(OP_BINARY, payload))
                    self.audio_out += len(data)
                stats = self.stats
                stats["frames_down"] += 1
                stats["bytes_down"] += len(data)
        elif kind is SendUpstream:
            up = self.up
            if not up.out_closed and up.conn is not None:
                data = action.data
                op = OP_TEXT if type(data) is str else OP_BINARY
                up.conn.write(build_frame(op, data.encode() if op == OP_TEXT else data, keys=self.keys))
                stats = self.stats
                stats["frames_up"] += 1
                stats["bytes_up"] += len(data)
        elif kind is ArmTimer:
            self.deadlines[action.name] = trio.current_time() + action.seconds
            self._retime()
        elif kind is CancelTimer:
            self.deadlines.pop(action.name, None)
        elif kind is CloseClient:
            self.session.summary["sent_client_code"] = action.code
            self.session.counters.closes[f"client|{action.code}"] += 1
            self._close_leg(self.c, action.code, action.reason)
        elif kind is CloseUpstream:
            self._close_leg(self.up, action.code, action.reason)
        elif kind is Log:
            self.session.log.event(action.level, action.message, **action.fields)

    def _close_leg(self, leg: _Leg, code: int | None, reason: str) -> None:
        """Our close frame on `leg`, once. An upstream still connecting is abandoned."""
        if leg.out_closed:
            return
        leg.out_closed = True
        conn = leg.conn
        if conn is None:
            if leg is self.up:
                self.connect_scope.cancel()
            leg.in_closed = True
            self._check()
            return
        payload = build_close_payload(code, reason)
        self._write_close(leg, conn, build_frame(OP_CLOSE, payload, keys=self.keys if leg is self.up else None))

    def _flow(self) -> None:
        """Backpressure: a leg is not read while its peer's queue is over HIGH_WATER; the
        client also not while too much waits for the upstream to be ready (D30)."""
        c, up = self.c, self.up
        cc, uc = c.conn, up.conn
        if cc is not None:
            core = self.core
            if c.in_closed:
                cc.pause()
            elif c.draining:
                cc.resume()
            elif (
                (uc is not None and uc.out_bytes > HIGH_WATER)
                or cc.out_bytes > CLIENT_OUT_BOUND
                or (core.pending_bytes > core.max_pending_bytes and not core.ready and not core.closed)
            ):
                cc.pause()
            else:
                cc.resume()
        if uc is not None:
            if up.in_closed:
                uc.pause()
            elif up.draining or cc is None or cc.out_bytes <= HIGH_WATER:
                uc.resume()
            else:
                uc.pause()

    def _on_drained(self) -> None:
        self._flow()
        self._check()

    def _drain(self, leg: _Leg) -> None:
        """The leg's byte stream cannot be parsed any more: after our close, EOF, then
        discard what the peer still sends until its EOF."""
        conn = leg.conn
        if conn is None or conn.broken:
            leg.in_closed = True
            return
        leg.draining = True
        if leg.out_closed:
            conn.shutdown_after_flush()

    def _fault(self, leg: _Leg, exc: BaseException | None = None) -> None:
        """A bug in the I/O around the core: end the session (never the worker)."""
        self.session.log.error("translator session failed", error=type(exc).__name__ if exc else "")
        self.feed(self.core.gateway_limit, "gateway_error")
        for each in (self.c, self.up):
            self._close_leg(each, 1011 if each is self.c else 1000, "internal error" if each is self.c else "")
        if not leg.in_closed:
            self._drain(leg)
        self.done.set()
        self._flow()
        self._check()

    # -- timers -------------------------------------------------------------------------

    def _retime(self) -> None:
        scope = self.timer_scope
        if scope is not None and self.deadlines:
            scope.deadline = min(self.deadlines.values())

    async def _timers(self) -> None:
        """The core's timers from one task: its deadline is the earliest armed timer."""
        while True:
            with trio.CancelScope(deadline=min(self.deadlines.values(), default=math.inf)) as scope:
                self.timer_scope = scope
                await trio.sleep_forever()
            self.timer_scope = None
            now = trio.current_time()
            for name, when in sorted(self.deadlines.items(), key=lambda item: item[1]):
                if when <= now and self.deadlines.get(name) == when:
                    del self.deadlines[name]
                    self.feed(self.core.timer_expired, name)

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
                code = self.session.stop_reason
            if code is None:
                now = trio.current_time()
                code = next((c for d, c in deadlines() if d <= now), None)
            if code is not None:
                self.session.log.info("gateway limit", limit=code)
                self.feed(self.core.gateway_limit, code)
                self.done.set()
                self._flow()
                return

    # -- the legs -----------------------------------------------------------------------

    async def run(self) -> None:
        session = self.session
        stream = session.stream
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                try:
                    await session.handshake.accept(stream, echo_subprotocol(session.handshake.request.subprotocols))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    session.summary["end"] = "client gone before accept"
                    nursery.cancel_scope.cancel()
                    return
                session.log.info("session accepted", route=session.route, peer=session.peer)
                conn = self.c.conn = attach(stream, nursery)
                conn.on_data = self._on_client_data
                conn.on_eof = self._on_client_eof
                conn.on_error = self._on_client_eof
                conn.on_drained = self._on_drained
                conn.on_fault = functools.partial(self._fault, self.c)
                self.feed(self.core.start)
                nursery.start_soon(self._connect_upstream)
                nursery.start_soon(self._limits)
                nursery.start_soon(self._timers)
                leftover = session.handshake.leftover
                if leftover:
                    try:
                        self._on_client_data(leftover)
                    except Exception as exc:  # noqa: BLE001 - as a conn callback fault
                        self._fault(self.c, exc)
                self._flow()
                await self.done.wait()
                self._flow()
                self._check()
                with trio.move_on_after(CLOSE_WAIT):
                    await self.all_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for leg in (self.c, self.up):
                    if leg.conn is not None:
                        await leg.conn.aclose()
                if self.up_stream is not None:
                    await trio.aclose_forcefully(self.up_stream)

    async def _connect_upstream(self) -> None:
        session = self.session
        config = session.config
        base, model = upstream.base_and_model(config)
        query = upstream.upstream_query([], model)
        headers = [("Authorization", f"Bearer {config.openai_key}"), ("User-Agent", "voxgate")]
        started = trio.current_time()
        outcome = None
        with self.connect_scope:
            outcome = await connect_within(
                config.connect_timeout, functools.partial(open_upstream, base, query, headers)
            )
        if outcome is None or isinstance(outcome, UpstreamConnectError):
            err = outcome
            if err is not None and not self.core.closed:
                session.counters.upstream_failures[err.kind] += 1
                session.log.warning("upstream failed", kind=err.kind, status=err.status)
                self.up.in_closed = self.up.out_closed = True
                self.feed(functools.partial(self.core.upstream_failed, auth=err.auth, status=err.status))
                self.done.set()
                self._check()
            return
        stream, leftover = outcome
        if self.up.out_closed:  # the session ended while we were connecting
            await trio.aclose_forcefully(stream)
            return
        self.up_stream = stream
        latency = trio.current_time() - started
        session.connect_latency = lambda: latency
        session.summary["connect_ms"] = round(latency * 1000, 1)
        session.log.info("upstream connected", latency_ms=round(latency * 1000, 1))
        up = self.up
        conn = up.conn = attach(stream, self.nursery)
        conn.on_data = self._on_up_data
        conn.on_eof = self._on_up_eof
        conn.on_error = self._on_up_eof
        conn.on_drained = self._on_drained
        conn.on_fault = functools.partial(self._fault, up)
        self.feed(self.core.upstream_open)
        self._sync_rates()  # a Settings queued until now was processed
        if leftover and not up.in_closed:
            try:
                self._on_up_data(leftover)
            except Exception as exc:  # noqa: BLE001 - as a conn callback fault
                self._fault(up, exc)
        self._flow()

    def _on_client_data(self, data: bytes) -> None:
        c = self.c
        if c.in_closed or c.draining:
            return
        events = c.reader.feed(data)
        if not events:
            return
        feed = self.feed
        core = self.core
        self.last_client_activity = trio.current_time()
        for event in events:
            kind = type(event)
            if kind is BinaryMessage:
                self.audio_in += len(event.data)
                feed(core.client_message, event.data)
            elif kind is TextMessage:
                feed(core.client_message, event.text)
                self._sync_rates()
            elif kind is Ping:
                if not c.out_closed:
                    c.conn.write(build_frame(OP_PONG, event.payload))  # type: ignore[union-attr]
            elif kind is PeerClosed:
                c.in_closed = True
                self.session.summary["client_code"] = event.code
                if not c.out_closed:
                    self._close_leg(c, event.code, "")  # echo the client's code (RFC 6455 §5.5.1)
                feed(core.client_closed, event.code, event.reason)
                self.done.set()
            else:  # StreamFailed: this stream cannot be parsed any more
                code, reason = event.code, event.reason
                if code == 1009:
                    # Refused from its frame header: the payload is never read, not even to
                    # drain it (issue 16 §6); TCP is closed once our close frame is out.
                    feed(core.gateway_limit, "message_too_large")
                    self._close_leg(c, code, reason)
                    c.in_closed = True
                else:
                    self.session.summary["client_code"] = code
                    self._close_leg(c, code, reason)
                    feed(core.client_closed, code, "")
                    self._drain(c)
                self.done.set()
        if self.done.is_set():
            self._flow()
            self._check()
        elif self.up.conn is None or self.up.conn.out_bytes > HIGH_WATER or self.core.pending_bytes or c.conn.out_bytes > CLIENT_OUT_BOUND:  # type: ignore[union-attr]
            self._flow()  # else nothing to pause

    def _on_client_eof(self) -> None:
        c = self.c
        if c.draining or c.in_closed:
            c.in_closed = True
            self._check()
            return
        c.in_closed = True
        if c.conn is not None and c.conn.broken:
            c.out_closed = True
        self.session.summary["client_code"] = 1006
        self.feed(self.core.client_closed, 1006, "")
        c.out_closed = True  # no close frame after EOF: the TCP close follows
        self.done.set()
        self._flow()
        self._check()

    def _on_up_data(self, data: bytes) -> None:
        up = self.up
        if up.in_closed or up.draining:
            return
        events = up.reader.feed(data)
        feed = self.feed
        core = self.core
        for event in events:
            kind = type(event)
            if kind is TextMessage:
                feed(core.upstream_message, event.text)
            elif kind is BinaryMessage:
                feed(core.upstream_message, event.data)
            elif kind is Ping:
                if not up.out_closed:
                    up.conn.write(build_frame(OP_PONG, event.payload, keys=self.keys))  # type: ignore[union-attr]
            elif kind is PeerClosed:
                up.in_closed = True
                self.session.summary["upstream_code"] = event.code
                if not up.out_closed:
                    self._close_leg(up, event.code, "")
                feed(core.upstream_closed, event.code, event.reason)
                self.done.set()
            else:  # StreamFailed
                self.session.summary["upstream_code"] = event.code
                self._close_leg(up, event.code, event.reason)
                self._drain(up)
                feed(core.upstream_closed, event.code, "")
                self.done.set()
        if self.done.is_set():
            self._flow()
            self._check()
        elif not self.c.conn.reading or self.c.conn.out_bytes > HIGH_WATER:  # type: ignore[union-attr]
            self._flow()  # else nothing to pause or resume

    def _on_up_eof(self) -> None:
        up = self.up
        if up.draining or up.in_closed:
            up.in_closed = True
            self._check()
            return
        up.in_closed = True
        up.out_closed = True  # no close frame after EOF: the TCP close follows
        self.session.summary["upstream_code"] = 1006
        self.feed(self.core.upstream_closed, 1006, "")
        self.done.set()
        self._flow()
        self._check()


async def run_translator(session: Session) -> None:
    """Route handler for `/openai` and `/openai/v1/agent/converse`."""
    translator = TranslatorSession(session)
    stats = translator.stats
    session.traffic = lambda: (stats["frames_up"], stats["frames_down"], stats["bytes_up"], stats["bytes_down"])
    try:
        await translator.run()
    finally:
        session.summary.update(stats)

