"""Frame-splice relay engine for the passthrough paths (Deepgram agent/listen/speak, raw
OpenAI Realtime relay); architecture.md §1 "A worker has two planes".

Runs after both opening handshakes, on the worker's data plane (`dataplane.py`): the two
legs are conns whose callbacks this class implements; every read is parsed and forwarded
synchronously, inside the readiness loop, with no trio task wake-up per frame. trio keeps
the control plane: the upstream connect, the timers (idle, max duration, keepalive), drain,
and the session's lifetime. It never decodes messages: it parses frame headers and moves
payload bytes.

- upstream -> client: server frames are unmasked, so the bytes are forwarded as they are,
  streamed (a frame is forwarded while it arrives; never buffered whole) and several
  complete frames read together go out in one write. Only control frames are cut out.
- client -> upstream: complete frames (bounded by `max_message_bytes`) are re-masked with a
  fresh gateway key in one XOR pass (client key XOR gateway key) and batched per read.
- fragments stay fragments, opcodes stay opcodes; text payloads are NOT UTF-8 validated
  (the endpoints do that; validating would cost a decode per frame and change nothing).
- frames the gateway injects (observer, limit errors, failure errors) go only at message
  boundaries; control frames and closes only at frame boundaries: while a streamed
  upstream frame is incomplete on the client wire, pongs and our close wait for its end.
- backpressure: a leg is not read while the other leg's output queue is over
  `dataplane.HIGH_WATER` (or, before the upstream is open, while `max_pending_bytes` wait
  for it); control answers to a peer that does not read are held up to MAX_QUEUED_CONTROL,
  then that peer is not read either. Memory per session stays bounded.
- after the session ends each leg gets our close, the peer's close is awaited for at most
  CLOSE_TIMEOUT, then TCP is closed; a leg whose byte stream can no longer be parsed
  (protocol error, oversized message, internal error) is half-closed and drained instead.

Four rooms, in the order a frame crosses them: `frameparser.FrameParser` parses it (sans-IO,
typed events); a pump in `splice_pumps.py` says what it becomes on the other leg (`ToUpstream`,
`ToClient`: re-masking, streaming, key scrubbing, observers, metering); this module is the
session: one read path (`_read`) and one write path (`_write`) for both directions,
backpressure, the upstream connect and the timers; every way it ends is in `splice_close.py`
(`ClosingHandshake`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from voxgate.workers.dataplane import HIGH_WATER, attach
from voxgate.workers.errors import UpstreamConnectError, connect_within
from voxgate.workers.frames import OP_TEXT, MaskKeys, build_frame
from voxgate.workers.keyscrub import KeyScrubber
from voxgate.workers.limits import LIMITS
from voxgate.workers.splice_close import ClosingHandshake, SpliceLeg
from voxgate.workers.splice_pumps import Pump, ToClient, ToUpstream

__all__ = ["ClientObserver", "SplicePolicy", "SpliceStats", "UpstreamObserver", "run_splice", "CLOSE_TIMEOUT"]

CLOSE_TIMEOUT = 2.0  # how long the closing handshake may take before TCP is closed anyway
MAX_QUEUED_CONTROL = 64 * 1024  # control answers held for a peer that does not read


class UpstreamObserver(Protocol):
    wants_text: bool  # while True, complete upstream TEXT messages are shown to observe_text

    def observe_text(self, payload: bytes) -> list[bytes]:
        """Return TEXT payloads to inject to the client right after that message."""
        ...

    def observe_binary(self) -> None:
        """Called for each upstream binary data frame forwarded (cheap)."""
        ...


class ClientObserver(Protocol):
    """Sees every complete client TEXT message (binary frames never) and may answer the
    client. An observer that `rewrites` may also replace messages: a fragmented message is
    then joined into one frame; otherwise fragments stay fragments."""

    rewrites: bool

    def observe_client_text(self, payload: bytes) -> tuple[bytes | None, list[bytes]]:
        """(replacement payload, or None to forward it unchanged; TEXT payloads for the client)."""
        ...


@dataclass
class SplicePolicy:
    connect_timeout: float = 10.0
    max_message_bytes: int = 1 << 20
    max_pending_bytes: int = 1 << 20
    idle_timeout: float | None = None
    max_session_seconds: float | None = None
    client_keepalive: tuple[float, bytes] | None = None
    on_upstream_failure: (
        Callable[[UpstreamConnectError], tuple[list[bytes], int, str]] | None
    ) = None
    on_limit: Callable[[str], list[bytes]] | None = None
    upstream_observer: UpstreamObserver | None = None
    client_observer: ClientObserver | None = None
    # why `shutdown` was set (a limits.LIMITS code); default "shutting_down"
    stop_reason: Callable[[], str] | None = None
    # Masks the provider key in upstream text payloads and close reasons (keyscrub.py).
    scrubber: KeyScrubber | None = None


@dataclass
class SpliceStats:
    frames_up: int = 0
    bytes_up: int = 0
    frames_down: int = 0
    bytes_down: int = 0
    binary_up: int = 0  # payload bytes of binary messages (audio), for usage metering
    binary_down: int = 0
    upstream_connect_seconds: float | None = None
    client_close_code: int | None = None
    upstream_close_code: int | None = None
    sent_client_close_code: int | None = None
    end_reason: str = ""


def default_upstream_failure(err: UpstreamConnectError) -> tuple[list[bytes], int, str]:
    if err.auth:
        return [], 1008, "upstream auth failed"
    return [], 1011, "upstream unavailable"


async def run_splice(
    client: trio.abc.Stream,
    client_buffered: bytes,
    connect: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]],
    policy: SplicePolicy,
    stats: SpliceStats,
    shutdown: trio.Event | None = None,
) -> None:
    """Relay one session until both legs are closed. Never raises except Cancelled."""
    session = _Splice(client, client_buffered, connect, policy, stats, shutdown)
    try:
        await session.run()
    except Exception:
        if not stats.end_reason:
            stats.end_reason = "error"
    finally:
        with trio.CancelScope(shield=True):
            for leg in (session.c, session.up):
                if leg.conn is not None:
                    await leg.conn.aclose()
            for stream in (client, session.up_stream):
                if stream is not None:
                    await trio.aclose_forcefully(stream)


class _Splice(ClosingHandshake):
    def __init__(
        self,
        client: trio.abc.Stream,
        client_buffered: bytes,
        connect: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]],
        policy: SplicePolicy,
        stats: SpliceStats,
        shutdown: trio.Event | None,
    ) -> None:
        self.client_stream = client
        self.up_stream: trio.abc.Stream | None = None
        self.c = SpliceLeg("client")
        self.up = SpliceLeg("upstream")
        self.client_buffered = client_buffered
        self.connect = connect
        self.policy = policy
        self.stats = stats
        self.shutdown = shutdown
        self.keys = MaskKeys()
        self.client_inject: list[bytes] = []  # client observer's answers, sent after each read
        self.closing = trio.Event()
        self.all_done = trio.Event()
        self.nursery: trio.Nursery
        # upstream opening
        self.up_open = False
        self.pending: list[bytes | bytearray] = []
        self.pending_bytes = 0
        self.connect_scope = trio.CancelScope()
        self.to_up = ToUpstream(
            self.c, self.up, self.keys, stats, max_message=policy.max_message_bytes,
            observer=policy.client_observer, answers=self.client_inject,
            clock=trio.current_time if policy.idle_timeout or policy.client_keepalive else None,
        )
        self.to_client = ToClient(
            self.up, self.c, self.keys, stats, observer=policy.upstream_observer, scrub=policy.scrubber,
        )
        self.c_close_pending: tuple | None = None  # our client close, waiting for a frame's end

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.c.conn = self._attach(self.client_stream, self.to_up, self._on_client_eof, self._client_dropped)
            nursery.start_soon(self._guard, self._connect_task)
            p = self.policy
            if p.idle_timeout or p.max_session_seconds or p.client_keepalive:
                nursery.start_soon(self._guard, self._timers)
            if self.shutdown is not None:
                nursery.start_soon(self._guard, self._watch_shutdown)
            if self.client_buffered:
                self._feed(self.to_up, self.client_buffered)
            self._flow()
            await self.closing.wait()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.all_done.wait()
            nursery.cancel_scope.cancel()

    def _attach(self, stream: trio.abc.Stream, pump: Pump, on_eof: Callable[[], None],
                on_error: Callable[[], None]):  # noqa: ANN202 - a dataplane.Conn
        """The data-plane conn of `pump`'s source leg, wired to this session."""
        conn = attach(stream, self.nursery)
        conn.on_data = functools.partial(self._read, pump)
        conn.on_eof = on_eof
        conn.on_error = on_error
        conn.on_drained = self._on_drained
        conn.on_fault = functools.partial(self._fault, pump.src)
        return conn

    def _feed(self, pump: Pump, data: bytes) -> None:
        """Bytes read before the conn existed (handshake leftovers), as if just read."""
        try:
            self._read(pump, data)
        except Exception as exc:  # noqa: BLE001 - as a conn callback fault
            self._fault(pump.src, exc)

    async def _guard(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a session task; an unexpected exception ends the session, never the worker."""
        try:
            await fn(*args)
        except Exception:  # noqa: BLE001
            self._fault(None)

    def _flow(self) -> None:
        """Backpressure: which legs are read (see the module docstring)."""
        c, up = self.c, self.up
        cc, uc = c.conn, up.conn
        c_out = cc.out_bytes if cc is not None else 0
        u_out = uc.out_bytes if uc is not None else 0
        if cc is not None:
            if c.in_closed:
                cc.pause()
            elif c.draining or not (
                u_out > HIGH_WATER or c.ctrl_bytes > MAX_QUEUED_CONTROL
                or self.pending_bytes >= self.policy.max_pending_bytes
            ):
                cc.resume()
            else:
                cc.pause()
        if uc is not None:
            if up.in_closed:
                uc.pause()
            elif up.draining or not (c_out > HIGH_WATER or up.ctrl_bytes > MAX_QUEUED_CONTROL):
                uc.resume()
            else:
                uc.pause()

    def _on_drained(self) -> None:
        for leg in (self.c, self.up):
            if leg.ctrl:
                self._flush_control(leg)
        self._flow()
        self._check()

    # ---------------------------------------------------------------- the read path and the write path

    def _read(self, pump: Pump, data: bytes) -> None:
        """Bytes read from `pump.src`, in either direction: frames through the pump, control
        answers back to the source (before forwarding: a pong must not trail the reply to
        later data), the rest to `pump.dst`, then what stops the direction."""
        src = pump.src
        if src.in_closed or src.draining:
            return  # after its close or a failure: discarded
        out, ctrl, stop = pump.frames(data)
        if ctrl:
            self._control(src, ctrl)
        if out:
            self._write(pump.dst, out)
        if self.client_inject:
            self._inject_client()
        if not self.to_client.rem and (self.c.ctrl or self.c_close_pending is not None):
            self._client_boundary()
            if stop is None:
                self._flow()
        if stop is not None:
            self._stop(pump, stop)
            self._flow()
            return
        dc = pump.dst.conn
        if dc is None or dc.out_bytes > HIGH_WATER or src.ctrl_bytes:  # else nothing to pause
            self._flow()

    def _write(self, leg: SpliceLeg, data: bytes | bytearray) -> None:
        """Every byte the session sends goes here. Nothing after our close (P11: client
        frames after the upstream closed are dropped); toward an upstream still connecting,
        queued (bounded, see _flow)."""
        if leg.out_closed:
            return
        conn = leg.conn
        if conn is None:
            self.pending.append(bytes(data))
            self.pending_bytes += len(data)
            return
        conn.write(data)

    def _inject_client(self) -> None:
        """Send the client observer's answers at a message boundary of the client wire (in
        the rare case that the wire is inside an upstream message, they are dropped)."""
        frames = b"".join(build_frame(OP_TEXT, p) for p in self.client_inject)
        self.client_inject.clear()
        if self.to_client.wire_mid_message() or self.c.conn is None:
            return
        self._write(self.c, frames)

    def _control(self, leg: SpliceLeg, frames: bytes | bytearray) -> None:
        """Control answers (pongs) to `leg`'s peer. Held while that wire is inside a streamed
        frame or its peer is not reading (queue over HIGH_WATER); past MAX_QUEUED_CONTROL
        held bytes the leg is not read any more, so a peer that floods pings and never reads
        cannot grow the worker's memory."""
        if leg.out_closed:
            return
        conn = leg.conn
        assert conn is not None
        if leg.ctrl or conn.out_bytes > HIGH_WATER or (leg is self.c and self.to_client.rem):
            leg.ctrl.append(bytes(frames))
            leg.ctrl_bytes += len(frames)
            return
        self._write(leg, frames)

    def _flush_control(self, leg: SpliceLeg, force: bool = False) -> None:
        conn = leg.conn
        if conn is None or leg.out_closed and not force:
            leg.ctrl.clear()
            leg.ctrl_bytes = 0
            return
        if not force and (conn.out_bytes > HIGH_WATER or (leg is self.c and self.to_client.rem)):
            return
        data = b"".join(leg.ctrl)
        leg.ctrl.clear()
        leg.ctrl_bytes = 0
        self._write(leg, data)

    # ---------------------------------------------------------------- upstream opening

    async def _connect_task(self) -> None:
        t0 = trio.current_time()
        result = await self._connect_upstream()
        if result is None:
            return
        stream, buffered = result
        if self.up.out_closed:  # the session ended while we were connecting
            await trio.aclose_forcefully(stream)
            return
        self.up_stream = stream
        self.stats.upstream_connect_seconds = trio.current_time() - t0
        up = self.up
        conn = up.conn = self._attach(stream, self.to_client, self._on_up_eof, self._upstream_dropped)
        if self.pending:  # frames the client sent meanwhile, in order
            conn.write(b"".join(self.pending))
            self.pending.clear()
            self.pending_bytes = 0
        self.up_open = True
        if conn.broken:
            return
        if buffered:
            self._feed(self.to_client, buffered)
        self._flow()

    async def _connect_upstream(self) -> tuple[trio.abc.Stream, bytes] | None:
        """The upstream connection, or None (after ending the session when it failed)."""
        outcome = None
        with self.connect_scope:
            outcome = await connect_within(self.policy.connect_timeout, self.connect)
        if isinstance(outcome, UpstreamConnectError):
            self._upstream_failed(outcome)
            return None
        return outcome

    def _upstream_failed(self, err: UpstreamConnectError) -> None:
        if not self._end("upstream_failed:" + err.kind):
            return
        self._abandon_upstream()
        handler = self.policy.on_upstream_failure or default_upstream_failure
        inject, code, reason = handler(err)
        self._close_leg(self.c, code, reason, inject)
        self._flow()

    # ---------------------------------------------------------------- timers

    async def _watch_shutdown(self) -> None:
        assert self.shutdown is not None
        await self.shutdown.wait()
        reason = self.policy.stop_reason() if self.policy.stop_reason else "shutting_down"
        self._limit(reason if reason in LIMITS else "shutting_down")

    async def _timers(self) -> None:
        """Idle timeout, session cap and the client keepalive, from one sleeping task; the
        hot path only stores the time of the last client data frame."""
        p = self.policy
        start = trio.current_time()
        session_end = start + p.max_session_seconds if p.max_session_seconds else math.inf
        idle = p.idle_timeout or 0.0
        ka_every, ka_payload = p.client_keepalive or (0.0, b"")
        ka_last = start
        while not self.closing.is_set():
            now = trio.current_time()
            if now >= session_end:
                self._limit("session_max_duration")
                return
            deadline = session_end
            last_data = self.to_up.last_data
            if idle:
                idle_end = last_data + idle
                if now >= idle_end:
                    self._limit("idle_timeout")
                    return
                deadline = min(deadline, idle_end)
            if ka_every:
                ka_due = max(last_data, ka_last) + ka_every
                if now >= ka_due:
                    ka_last = now
                    self._send_keepalive(ka_payload)
                    continue
                deadline = min(deadline, ka_due)
            with trio.move_on_at(deadline):
                await self.closing.wait()

    def _send_keepalive(self, payload: bytes) -> None:
        if not self.up_open or self.to_up.wire_mid_message():
            return  # never inside a fragmented client message
        self._write(self.up, build_frame(OP_TEXT, payload, keys=self.keys))
