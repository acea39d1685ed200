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

The parsers (`_client_frames`, `_upstream_frames`) keep the measured fast paths: a read
holding exactly one whole unfragmented message skips the parse loop; header fast paths
(0.27 / 0.39 µs per server / client header, against 1.36 µs for the general parser); XOR
re-masking as big-int below 448 B and numpy words above (frames.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from voxgate.workers.closecodes import map_close_code, safe_reason
from voxgate.workers.dataplane import HIGH_WATER, attach
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    CloseFrameError,
    MaskKeys,
    build_close_payload,
    build_frame,
    build_masked_header,
    header_error,
    parse_client_data_header,
    parse_close_payload,
    parse_header,
    parse_server_data_header,
    xor_mask_at,
)
from voxgate.workers.keyscrub import PIECE, KeyScrubber, generic_close_reason
from voxgate.workers.legs import Leg, LegPair
from voxgate.workers.limits import LIMITS

__all__ = ["ClientObserver", "SplicePolicy", "SpliceStats", "UpstreamObserver", "run_splice", "CLOSE_TIMEOUT"]

CLOSE_TIMEOUT = 2.0  # how long the closing handshake may take before TCP is closed anyway
MAX_OBSERVED_TEXT = 1 << 20  # larger upstream text messages are forwarded but not observed
MAX_QUEUED_CONTROL = 64 * 1024  # control answers held for a peer that does not read

_WHOLE_MESSAGE_B0 = frozenset((0x80 | OP_TEXT, 0x80 | OP_BINARY))  # FIN + TEXT / BINARY


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


class _Leg(Leg):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.broken = False  # a frame was cut mid-way: only a TCP close is possible
        self.ctrl: list[bytes] = []  # control answers held (see _control)
        self.ctrl_bytes = 0

    def dead(self) -> None:
        self.in_closed = self.out_closed = True
        self.ctrl.clear()
        self.ctrl_bytes = 0
        if self.conn is not None:
            self.conn.discard_output()


class _Splice(LegPair):
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
        self.c = _Leg("client")
        self.up = _Leg("upstream")
        self.client_buffered = client_buffered
        self.connect = connect
        self.policy = policy
        self.stats = stats
        self.shutdown = shutdown
        self.keys = MaskKeys()
        self.observer = policy.upstream_observer
        self.c_observer = policy.client_observer
        self.c_obs: bytearray | None = None  # a fragmented client text message being joined
        self.client_inject: list[bytes] = []  # client observer's answers, sent after each read
        self.closing = trio.Event()
        self.all_done = trio.Event()
        self.nursery: trio.Nursery
        # upstream opening
        self.up_open = False
        self.pending: list[bytes | bytearray] = []
        self.pending_bytes = 0
        self.connect_scope = trio.CancelScope()
        # client -> upstream parse state
        self.cbuf = bytearray()  # an incomplete client frame
        self.c_msg_op: int | None = None  # opcode of the fragmented message in progress
        self.c_msg_size = 0
        self.c_saw_data = False
        self.last_client_data = trio.current_time()
        self.timed = bool(policy.idle_timeout or policy.client_keepalive)  # _timers reads it
        self.up_wire_mid_msg = False  # upstream wire is inside a fragmented message
        # upstream -> client parse state
        self.d_rem = 0  # payload bytes still to stream for the current data frame
        self.d_fin = False
        self.d_msg_op: int | None = None
        self.d_obs: bytearray | None = None
        self.scrub = policy.scrubber
        self.d_scrub_ctx = b""  # last key-piece context of the text message being forwarded
        self.d_tail = b""  # incomplete header / control frame
        self.down_wire_mid_msg = False  # client wire is inside a message (frame or fragments)
        self.c_close_pending: tuple | None = None  # our client close, waiting for a frame's end

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            conn = self.c.conn = attach(self.client_stream, nursery)
            conn.on_data = self._on_client_data
            conn.on_eof = self._on_client_eof
            conn.on_error = self._client_dropped
            conn.on_drained = self._on_drained
            conn.on_fault = functools.partial(self._fault, self.c)
            nursery.start_soon(self._guard, self._connect_task)
            p = self.policy
            if p.idle_timeout or p.max_session_seconds or p.client_keepalive:
                nursery.start_soon(self._guard, self._timers)
            if self.shutdown is not None:
                nursery.start_soon(self._guard, self._watch_shutdown)
            if self.client_buffered:
                self._feed(self.c, self._on_client_data, self.client_buffered)
            self._flow()
            await self.closing.wait()
            with trio.move_on_after(CLOSE_TIMEOUT):
                await self.all_done.wait()
            nursery.cancel_scope.cancel()

    def _feed(self, leg: _Leg, fn: Callable[[bytes], None], data: bytes) -> None:
        """Bytes read before the conn existed (handshake leftovers), as if just read."""
        try:
            fn(data)
        except Exception as exc:  # noqa: BLE001 - as a conn callback fault
            self._fault(leg, exc)

    async def _guard(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run a session task; an unexpected exception ends the session, never the worker."""
        try:
            await fn(*args)
        except Exception:  # noqa: BLE001
            self._fault(None)

    def _fault(self, reads: _Leg | None, exc: BaseException | None = None) -> None:
        """A bug while handling a leg (`reads`, whose stream can no longer be parsed) or in a
        task: 1011 to the client, 1000 upstream; `reads` is drained until the peer's EOF."""
        self._end("error")
        closes = {self.c: (1011, "internal error"), self.up: (1000, "")}
        for leg, (code, reason) in closes.items():
            if leg is not reads:
                self._close_leg(leg, code, reason)
        if reads is not None:
            self._close_leg(reads, *closes[reads])
            if not reads.in_closed:
                self._drain(reads)
        self._flow()
        self._check()

    def _end(self, reason: str) -> bool:
        """Record why the session ends (first cause wins); False if it was already ending."""
        if self.closing.is_set():
            return False
        self.stats.end_reason = reason
        self.closing.set()
        return True

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

    def _close_leg(self, leg: _Leg, code: int | None, reason: str, inject: list[bytes] | None = None) -> None:
        """Send our close frame on `leg` once (after `inject` text frames toward the client,
        when its wire is at a message boundary). `code` None sends a close without status.
        Toward a client whose wire is inside a streamed frame, it waits for that frame's end."""
        if leg.out_closed:
            return
        if leg is self.up and leg.conn is None:
            self._abandon_upstream()
            return
        if leg is self.c and self.d_rem and not leg.broken:
            if self.c_close_pending is None:
                self.c_close_pending = (code, reason, inject)
            return
        leg.out_closed = True
        if leg.broken:
            leg.dead()
            self._check()
            return
        conn = leg.conn
        assert conn is not None
        if leg.ctrl:
            self._flush_control(leg, force=True)
        payload = build_close_payload(code, reason)
        if leg is self.c:
            frame = build_frame(OP_CLOSE, payload)
            if inject and not self.down_wire_mid_msg:
                frame = b"".join([*(build_frame(OP_TEXT, p) for p in inject), frame])
            self.stats.sent_client_close_code = 1005 if code is None else code
        else:
            frame = build_frame(OP_CLOSE, payload, keys=self.keys)
        self._write_close(leg, conn, frame)

    def _abandon_upstream(self) -> None:
        """The upstream is not open (and now never will be)."""
        self.connect_scope.cancel()
        self.up.dead()
        self.pending.clear()
        self.pending_bytes = 0
        self._check()

    def _client_dropped(self) -> None:
        self.c.dead()
        self._end("client_closed")
        self._close_leg(self.up, 1000, "")
        if self.up.conn is None:
            self._abandon_upstream()
        self._flow()
        self._check()

    def _upstream_dropped(self) -> None:
        self.up.dead()
        self._end("upstream_closed")
        self._close_leg(self.c, 1011, "upstream error")
        self._flow()
        self._check()

    def _limit_frames(self, code: str) -> list[bytes] | None:
        return self.policy.on_limit(code) if self.policy.on_limit else None

    def _limit(self, code: str) -> None:
        """A gateway limit ends the session: on_limit frames, then the limit's close codes."""
        if not self._end("limit:" + code):
            return
        limit = LIMITS[code]
        self._close_leg(self.c, limit.client_close, code, self._limit_frames(code))
        self._close_leg(self.up, limit.upstream_close, code)
        self._flow()

    def _drain(self, leg: _Leg) -> None:
        """After failing a leg (its byte stream can no longer be parsed): let the peer see
        EOF after our close frame, discard what it still sends, and stop at its EOF."""
        conn = leg.conn
        if conn is None or conn.broken:
            leg.dead()
            self._check()
            return
        leg.draining = True
        if leg.out_closed:
            conn.shutdown_after_flush()
        self._flow()

    def _control(self, leg: _Leg, frames: bytes | bytearray) -> None:
        """Control answers (pongs) to `leg`'s peer. Held while that wire is inside a streamed
        frame or its peer is not reading (queue over HIGH_WATER); past MAX_QUEUED_CONTROL
        held bytes the leg is not read any more, so a peer that floods pings and never reads
        cannot grow the worker's memory."""
        if leg.out_closed:
            return
        conn = leg.conn
        assert conn is not None
        if leg.ctrl or conn.out_bytes > HIGH_WATER or (leg is self.c and self.d_rem):
            leg.ctrl.append(bytes(frames))
            leg.ctrl_bytes += len(frames)
            return
        conn.write(frames)

    def _flush_control(self, leg: _Leg, force: bool = False) -> None:
        conn = leg.conn
        if conn is None or leg.out_closed and not force:
            leg.ctrl.clear()
            leg.ctrl_bytes = 0
            return
        if not force and (conn.out_bytes > HIGH_WATER or (leg is self.c and self.d_rem)):
            return
        data = b"".join(leg.ctrl)
        leg.ctrl.clear()
        leg.ctrl_bytes = 0
        conn.write(data)

    # ---------------------------------------------------------------- upstream opening

    async def _connect_task(self) -> None:
        t0 = trio.current_time()
        err: UpstreamConnectError | None = None
        result = None
        with self.connect_scope:
            try:
                with trio.fail_after(self.policy.connect_timeout):
                    result = await self.connect()
            except trio.TooSlowError:
                err = UpstreamConnectError("timeout")
            except UpstreamConnectError as exc:
                err = exc
            except OSError:
                err = UpstreamConnectError("refused")
            except Exception:
                err = UpstreamConnectError("protocol")
        if result is None:
            if err is not None:
                self._upstream_failed(err)
            return
        stream, buffered = result
        if self.up.out_closed:  # the session ended while we were connecting
            await trio.aclose_forcefully(stream)
            return
        self.up_stream = stream
        self.stats.upstream_connect_seconds = trio.current_time() - t0
        up = self.up
        conn = up.conn = attach(stream, self.nursery)
        conn.on_data = self._on_up_data
        conn.on_eof = self._on_up_eof
        conn.on_error = self._upstream_dropped
        conn.on_drained = self._on_drained
        conn.on_fault = functools.partial(self._fault, up)
        if self.pending:  # frames the client sent meanwhile, in order
            conn.write(b"".join(self.pending))
            self.pending.clear()
            self.pending_bytes = 0
        self.up_open = True
        self.up_wire_mid_msg = self.c_msg_op is not None
        if conn.broken:
            return
        if buffered:
            self._feed(up, self._on_up_data, buffered)
        self._flow()

    def _upstream_failed(self, err: UpstreamConnectError) -> None:
        if not self._end("upstream_failed:" + err.kind):
            return
        self._abandon_upstream()
        handler = self.policy.on_upstream_failure or default_upstream_failure
        inject, code, reason = handler(err)
        self._close_leg(self.c, code, reason, inject)
        self._flow()

    # ---------------------------------------------------------------- client -> upstream

    def _on_client_data(self, data: bytes) -> None:
        c = self.c
        if c.in_closed or c.draining:
            return  # after its close or a failure: discarded
        buf = self.cbuf
        if buf:
            buf += data
            work: bytes | bytearray = buf
        else:
            work = data
        consumed, up, down, action = self._client_frames(work)
        if self.c_saw_data:
            self.c_saw_data = False
            if self.timed:
                self.last_client_data = trio.current_time()
        if down:  # before forwarding: a pong must not trail the reply to later data
            self._control(c, down)
        if up:
            self._send_up(up)
        if self.client_inject:
            self._inject_client()
        if action is not None:
            self._client_action(action)
            self._flow()
            return
        if work is buf:
            del buf[:consumed]
        elif consumed < len(work):
            self.cbuf = bytearray(memoryview(work)[consumed:])
        uc = self.up.conn
        if uc is None or uc.out_bytes > HIGH_WATER or c.ctrl_bytes:  # else nothing to pause
            self._flow()

    def _on_client_eof(self) -> None:
        c = self.c
        if c.draining:
            c.in_closed = True
            self._check()
        elif not c.in_closed:
            self._client_dropped()

    def _client_frames(self, work: bytes | bytearray) -> tuple[int, bytes | bytearray, bytearray | None, tuple | None]:
        """Parse the complete client frames in `work`: (bytes consumed, re-masked frames for
        the upstream, control frames for the client, action that stops the pump or None)."""
        end = len(work)
        fast = parse_client_data_header(work, 0)
        if fast is not None and fast[2] + fast[1] == end and fast[0] in _WHOLE_MESSAGE_B0:
            # The usual realtime read: exactly one whole unfragmented message.
            b0, ln, size, cmask = fast
            if self.c_msg_op is None and ln <= self.policy.max_message_bytes:
                stats = self.stats
                stats.frames_up += 1
                stats.bytes_up += ln
                self.c_saw_data = True
                if b0 == 0x82:
                    stats.binary_up += ln
                elif self.c_observer is not None:
                    return end, self._observed_text(xor_mask_at(work, size, end, cmask)), None, None
                key = self.keys.next32()
                return end, build_masked_header(b0, ln, key) + xor_mask_at(work, size, end, cmask ^ key), None, None
        pos = 0
        up: bytes | bytearray = b""  # bytes for one frame (the usual case), bytearray for more
        down: bytearray | None = None
        keys = self.keys
        max_msg = self.policy.max_message_bytes
        stats = self.stats
        while pos < end:
            fast = parse_client_data_header(work, pos)
            if fast is not None:
                b0, ln, size, cmask = fast
                op = b0 & 0x0F
            else:
                h = parse_header(work, pos)
                if h is None:
                    break
                err = header_error(h, masked=True)
                if err is not None:
                    return pos, up, down, ("protocol", err)
                op = h.opcode
                ln = h.length
                size = h.size
                b0 = (0x80 | op) if h.fin else op  # no RSV bit: header_error checked
                cmask = int.from_bytes(h.mask, "little")  # type: ignore[arg-type]
            start = pos + size
            fend = start + ln
            if op < 8:
                if op == OP_CONT:
                    if self.c_msg_op is None:
                        return pos, up, down, ("protocol", "continuation without start")
                    total = self.c_msg_size + ln
                else:
                    if self.c_msg_op is not None:
                        return pos, up, down, ("protocol", "message inside fragmented message")
                    total = ln
                if total > max_msg:
                    return pos, up, down, ("limit", "message_too_large")
                if fend > end:
                    break
                msg_op = op if op != OP_CONT else self.c_msg_op
                if b0 & 0x80:
                    self.c_msg_op = None
                    self.c_msg_size = 0
                else:
                    if op != OP_CONT:
                        self.c_msg_op = op
                    self.c_msg_size = total
                if msg_op == OP_BINARY:
                    stats.binary_up += ln
                observer = self.c_observer
                if msg_op == OP_TEXT and observer is not None and (observer.rewrites or self.c_obs is None and b0 & 0x80):
                    part = xor_mask_at(work, start, fend, cmask) if ln else b""
                    if b0 & 0x80:
                        whole = part if self.c_obs is None else bytes(self.c_obs + part)
                        self.c_obs = None
                        frame = self._observed_text(whole)
                    else:  # joined, forwarded whole at its last fragment
                        self.c_obs = (self.c_obs or bytearray()) + part
                        frame = b""
                else:
                    if msg_op == OP_TEXT and observer is not None:  # fragments of a watched message
                        part = xor_mask_at(work, start, fend, cmask) if ln else b""
                        if b0 & 0x80:
                            whole = part if self.c_obs is None else bytes(self.c_obs + part)
                            self.c_obs = None
                            self.client_inject.extend(observer.observe_client_text(whole)[1])
                        else:
                            self.c_obs = (self.c_obs or bytearray()) + part
                    # Re-mask with a fresh gateway key in one pass: the payload is masked with
                    # the client's key, so XOR with (client key ^ gateway key).
                    key = keys.next32()
                    frame = build_masked_header(b0, ln, key)
                    if ln:
                        frame += xor_mask_at(work, start, fend, cmask ^ key)
                if not frame:
                    pass
                elif not up:
                    up = frame
                else:
                    if type(up) is bytes:
                        up = bytearray(up)
                    up += frame  # type: ignore[operator]
                stats.frames_up += 1
                stats.bytes_up += ln
                self.c_saw_data = True
                pos = fend
                continue
            if fend > end:
                break
            payload = xor_mask_at(work, start, fend, cmask)
            pos = fend
            if op == OP_PING:
                pong = build_frame(OP_PONG, payload)
                if down is None:
                    down = bytearray()
                down += pong
                if type(up) is bytes:
                    up = bytearray(up)
                up += build_frame(OP_PING, payload, keys=keys)  # type: ignore[operator]
            elif op == OP_CLOSE:
                try:
                    code, reason = parse_close_payload(payload)
                    reason.decode()  # a close reason must be UTF-8 (RFC 6455 §5.5.1)
                except (CloseFrameError, UnicodeDecodeError):
                    return pos, up, down, ("protocol", "invalid close frame")
                return pos, up, down, ("close", code, reason)
            # OP_PONG: dropped (P16)
        return pos, up, down, None

    def _observed_text(self, payload: bytes) -> bytes:
        """A complete client text message through the client observer: the masked frame to
        forward (its replacement, when the observer gives one)."""
        assert self.c_observer is not None
        replacement, answers = self.c_observer.observe_client_text(payload)
        if answers:
            self.client_inject.extend(answers)
        return build_frame(OP_TEXT, payload if replacement is None else replacement, keys=self.keys)

    def _inject_client(self) -> None:
        """Send the client observer's answers at a message boundary of the client wire (in
        the rare case that the wire is inside an upstream message, they are dropped)."""
        frames = b"".join(build_frame(OP_TEXT, p) for p in self.client_inject)
        self.client_inject.clear()
        c = self.c
        if c.out_closed or self.down_wire_mid_msg or self.d_rem or c.conn is None:
            return
        c.conn.write(frames)


    def _send_up(self, data: bytes | bytearray) -> None:
        """Frames to the upstream; queued (bounded, see _flow) while it is connecting."""
        up = self.up
        if up.out_closed:
            return  # P11: client frames after the upstream closed are dropped
        if not self.up_open:
            self.pending.append(bytes(data))
            self.pending_bytes += len(data)
            return
        up.conn.write(data)  # type: ignore[union-attr]
        self.up_wire_mid_msg = self.c_msg_op is not None

    def _client_action(self, action: tuple) -> None:
        kind = action[0]
        c = self.c
        if kind == "close":
            _, code, reason = action
            c.in_closed = True
            self.stats.client_close_code = 1005 if code is None else code
            if c.out_closed:  # the reply to our close
                self._check()
                return
            self._end("client_closed")
            self._close_leg(self.up, map_close_code(code, toward="upstream"), safe_reason(reason))
            self._close_leg(c, code, "")  # echo the client's code (RFC 6455 §5.5.1)
            return
        if kind == "protocol":
            if self._end("protocol_error:client"):
                self._close_leg(self.up, 1000, "")
            self._close_leg(c, 1002, "protocol error")
        else:  # a message over max_message_bytes
            limit = action[1]
            inject = None
            if self._end("limit:" + limit):
                inject = self._limit_frames(limit)
                self._close_leg(self.up, LIMITS[limit].upstream_close, limit)
            self._close_leg(c, LIMITS[limit].client_close, limit, inject)
            # Refused from its header: the payload is never read, not even to drain it
            # (issue 16 §6); TCP is closed once our close frame is out.
            c.in_closed = True
            self._flow()
            self._check()
            return
        # The rest of the client's byte stream cannot be parsed any more.
        if not c.in_closed:
            self._drain(c)

    # ---------------------------------------------------------------- upstream -> client

    def _on_up_data(self, data: bytes) -> None:
        up = self.up
        if up.in_closed or up.draining:
            return
        out, ctrl, action = self._upstream_frames(data)
        if out:
            c = self.c
            if not c.out_closed:
                c.conn.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]
                self.down_wire_mid_msg = self.d_msg_op is not None
        if ctrl:
            self._control(up, ctrl)
        if not self.d_rem and (self.c.ctrl or self.c_close_pending is not None):
            self._client_boundary()
            action = action or ("flow",)
        if action is not None:
            if action[0] != "flow":
                self._upstream_action(action)
            self._flow()
        elif self.c.conn.out_bytes > HIGH_WATER or up.ctrl_bytes:  # type: ignore[union-attr]
            self._flow()  # else nothing to pause

    def _client_boundary(self) -> None:
        """The client wire is at a frame boundary again: what waited for it goes out."""
        c = self.c
        if c.ctrl:
            self._flush_control(c)
        pending = self.c_close_pending
        if pending is not None:
            self.c_close_pending = None
            self._close_leg(c, *pending)

    def _on_up_eof(self) -> None:
        up = self.up
        if up.draining:
            up.in_closed = True
            self._check()
            return
        if up.in_closed:
            return
        if self.d_rem:
            self.c.broken = True  # a frame was cut: the client can only get a TCP close
            self.d_rem = 0
            if self.c_close_pending is not None:
                self._client_boundary()
        self._upstream_dropped()

    def _upstream_frames(self, data: bytes) -> tuple[list, bytearray | None, tuple | None]:
        """Split a chunk of upstream bytes: (segments to forward to the client, control frames
        for the upstream, action that stops the pump or None). Data frames are forwarded as
        they are, also partially; control frames are cut out and handled."""
        if self.d_tail:
            data = self.d_tail + data
            self.d_tail = b""
        elif not self.d_rem and self.d_msg_op is None:
            fast = parse_server_data_header(data, 0)
            if fast is not None and fast[2] + fast[1] == len(data) and fast[0] in _WHOLE_MESSAGE_B0:
                # The usual realtime read: exactly one whole unfragmented message.
                observer = self.observer
                if fast[0] == 0x81 and self.scrub is not None:
                    masked = self.scrub.mask(memoryview(data)[fast[2] :])
                    if masked is not None:
                        data = data[: fast[2]] + masked
                if observer is None or fast[0] == 0x82:
                    if observer is not None:
                        observer.observe_binary()
                    stats = self.stats
                    stats.frames_down += 1
                    stats.bytes_down += fast[1]
                    if fast[0] == 0x82:
                        stats.binary_down += fast[1]
                    return [data], None, None
        mv = memoryview(data)
        n = len(data)
        pos = 0
        run = -1  # start of the current run of bytes forwarded unchanged
        out: list = []
        ctrl: bytearray | None = None
        obs = self.d_obs
        observer = self.observer
        stats = self.stats
        while pos < n:
            rem = self.d_rem
            if rem:
                take = n - pos
                if take > rem:
                    take = rem
                if run < 0:
                    run = pos
                if self.scrub is not None and self.d_msg_op == OP_TEXT:
                    data, mv = self._scrub_text(data, mv, pos, pos + take)
                if obs is not None:
                    if len(obs) + take <= MAX_OBSERVED_TEXT:
                        obs += mv[pos : pos + take]
                    else:
                        obs = self.d_obs = None
                pos += take
                rem -= take
                self.d_rem = rem
                if rem == 0 and self.d_fin:
                    self.d_msg_op = None
                    if obs is not None:
                        run, obs = self._observe(out, mv, run, pos, obs)
                continue
            fast = parse_server_data_header(data, pos)
            if fast is not None:
                b0, ln, size = fast
                op = b0 & 0x0F
                err = None
            else:
                h = parse_header(data, pos)
                if h is None:
                    self.d_tail = bytes(mv[pos:])
                    break
                err = header_error(h, masked=False)
                op = h.opcode
                ln = h.length
                size = h.size
                b0 = 0x80 if h.fin else 0
            if err is None and op < 8:
                if op == OP_CONT:
                    if self.d_msg_op is None:
                        err = "continuation without start"
                elif self.d_msg_op is not None:
                    err = "message inside fragmented message"
            if err is not None:
                if run >= 0:
                    out.append(mv[run:pos])
                return out, ctrl, ("protocol", err)
            if op >= 8:
                fend = pos + size + ln
                if fend > n:
                    self.d_tail = bytes(mv[pos:])
                    break
                if run >= 0:
                    out.append(mv[run:pos])
                    run = -1
                payload = bytes(mv[pos + size : fend])
                pos = fend
                if op == OP_PING:
                    pong = build_frame(OP_PONG, payload, keys=self.keys)
                    if ctrl is None:
                        ctrl = bytearray()
                    ctrl += pong
                elif op == OP_CLOSE:
                    try:
                        code, reason = parse_close_payload(payload)
                    except CloseFrameError:
                        return out, ctrl, ("protocol", "invalid close frame")
                    return out, ctrl, ("close", code, reason)
                continue  # OP_PONG: dropped (P16)
            if op != OP_CONT:
                self.d_msg_op = op
                self.d_scrub_ctx = b""
                if op == OP_TEXT and observer is not None and observer.wants_text:
                    obs = self.d_obs = bytearray()
            if self.d_msg_op == OP_BINARY:
                stats.binary_down += ln
                if observer is not None:
                    observer.observe_binary()
            stats.frames_down += 1
            stats.bytes_down += ln
            if run < 0:
                run = pos
            pos += size
            fin = b0 & 0x80
            self.d_fin = fin
            self.d_rem = ln
            if ln == 0 and fin:
                self.d_msg_op = None
                if obs is not None:
                    run, obs = self._observe(out, mv, run, pos, obs)
        if run >= 0 and pos > run:
            out.append(data if run == 0 and pos == n else mv[run:pos])
        return out, ctrl, None

    def _scrub_text(self, data: bytes | bytearray, mv: memoryview, start: int, end: int) -> tuple[bytes | bytearray, memoryview]:
        """Mask key pieces in the text payload bytes data[start:end] (keyscrub.py); copies
        `data` only when it holds one. Returns the (possibly new) data and its view."""
        assert self.scrub is not None
        segment = mv[start:end]
        masked = self.scrub.mask(segment, self.d_scrub_ctx)
        keep = PIECE - 1
        self.d_scrub_ctx = bytes(segment[-keep:]) if len(segment) >= keep else (self.d_scrub_ctx + segment)[-keep:]
        if masked is not None:
            if type(data) is not bytearray:
                data = bytearray(data)
                mv = memoryview(data)
            mv[start:end] = masked
        return data, mv

    def _observe(self, out: list, mv: memoryview, run: int, pos: int, obs: bytearray) -> tuple[int, None]:
        """A complete upstream text message was observed: inject the observer's frames right
        after it. Returns the new run start and the cleared accumulator."""
        self.d_obs = None
        assert self.observer is not None
        inject = self.observer.observe_text(bytes(obs))
        if inject:
            if run >= 0:
                out.append(mv[run:pos])
            out.extend(build_frame(OP_TEXT, p) for p in inject)
            return -1, None
        return run, None


    def _upstream_action(self, action: tuple) -> None:
        kind = action[0]
        up = self.up
        if kind == "close":
            _, code, reason = action
            up.in_closed = True
            self.stats.upstream_close_code = 1005 if code is None else code
            if up.out_closed:  # the reply to our close
                self._check()
                return
            self._end("upstream_closed")
            to_client = map_close_code(code, toward="client")
            self._close_leg(self.c, to_client, generic_close_reason(to_client, reason, self.scrub))
            self._close_leg(up, code, "")
            return
        # protocol error from the upstream: 1002 toward it, 1011 toward the client
        if self._end("protocol_error:upstream"):
            self._close_leg(self.c, 1011, "upstream error")
            self._close_leg(up, 1002, "protocol error")
        if not up.in_closed:
            self._drain(up)

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
            if idle:
                idle_end = self.last_client_data + idle
                if now >= idle_end:
                    self._limit("idle_timeout")
                    return
                deadline = min(deadline, idle_end)
            if ka_every:
                ka_due = max(self.last_client_data, ka_last) + ka_every
                if now >= ka_due:
                    ka_last = now
                    self._send_keepalive(ka_payload)
                    continue
                deadline = min(deadline, ka_due)
            with trio.move_on_at(deadline):
                await self.closing.wait()

    def _send_keepalive(self, payload: bytes) -> None:
        up = self.up
        if not self.up_open or up.out_closed or self.up_wire_mid_msg:
            return  # never inside a fragmented client message
        up.conn.write(build_frame(OP_TEXT, payload, keys=self.keys))  # type: ignore[union-attr]
