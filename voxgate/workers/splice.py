"""Frame-splice relay engine for the passthrough paths (Deepgram agent/listen/speak, raw
OpenAI Realtime relay); architecture.md §1 "Two relay engines".

Runs after both opening handshakes. It never decodes messages: it parses frame headers and
moves payload bytes.

- upstream -> client: server frames are unmasked, so the bytes are forwarded as they are,
  streamed (a frame is forwarded while it arrives; never buffered whole) and several
  complete frames read together go out in one send. Only control frames are cut out.
- client -> upstream: complete frames (bounded by `max_message_bytes`) are re-masked with a
  fresh gateway key in one XOR pass (client key XOR gateway key) and batched per read.
- fragments stay fragments, opcodes stay opcodes; text payloads are NOT UTF-8 validated
  (the endpoints do that; validating would cost a decode per frame and change nothing).
- frames the gateway injects (observer, limit errors, failure errors) go only at message
  boundaries; control frames only at frame boundaries.
- each leg has one send lock (trio forbids concurrent send_all). The upstream->client pump
  keeps the client lock while a streamed frame is incomplete, so nothing can be written in
  the middle of a frame. No task ever waits for a lock while holding the other one: pongs
  and other control frames go through a small per-leg queue and helper task.
- hot path, for plain-socket legs (TLS upstreams and other streams use receive_some and
  send_all): after a short read the pump waits for readability, then reads once (trio's
  receive_some would first try a recv that fails with EAGAIN, raises, then waits); a send
  is first one non-blocking write, without a coroutine when the leg's lock is free (its
  uncontended acquire is an attribute test); a read holding exactly one whole message
  skips the parse loop. Per ping-pong round trip the worker makes 2 writes, 2 reads,
  2 epoll_wait, 2 epoll_ctl (was the same plus 2 recv failing with EAGAIN).
- after the session ends each leg gets our close, the peer's close is awaited for at most
  CLOSE_TIMEOUT, then TCP is closed; a leg whose byte stream can no longer be parsed
  (protocol error, oversized message, internal error) is half-closed and drained instead.

Measured on the dev box (2-vCPU VM, Python 3.11, trio 0.35). timeit, per call: header
fast path 0.27 µs (server frame) / 0.39 µs (client frame), general parse_header +
header_error 1.36 µs; client frame checked, re-keyed and re-masked 1.7 µs (20 B), 2.8 µs
(960 B), ~14 µs (64 KiB); a read of one 960 B server frame split 0.6 µs, of 16 such 11.5
µs. XOR: big-int (key times 0x..0001_00000001) 0.3 µs (20 B) to 1.3 µs (448 B); numpy as
uint32 words against a reused 0-d key array 1.0-1.4 µs (448 B..4 KiB), 5-6 µs (64 KiB);
so numpy from 448 B. In a running relay the Python part of a frame costs 2-4x those
numbers (caches are cold after each wakeup): ping-pong in one process over socketpairs
(no cross-process wakeups), process CPU per frame: a bare trio relay (wait_readable +
os.read + os.write) 28 µs, the splice 40 µs (was 70 before the paths above). `voxgate
bench` on this box (generator and upstream share the 2 vCPUs; medians of 3 back-to-back
runs): ping-pong 68 µs of worker CPU per frame (was 108), +0.14 ms p50 over direct (was
0.21); 50 realtime sessions 59 µs per frame (was 94); throughput 4.8 µs per frame (was
9.3); realtime 200 p99 67 ms (was 201), with both vCPUs saturated by generator, upstream
and worker together.
"""

from __future__ import annotations

import functools
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from voxgate.workers.closecodes import map_close_code, safe_reason
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
from voxgate.workers.limits import LIMITS

__all__ = ["SplicePolicy", "SpliceStats", "UpstreamObserver", "run_splice", "CLOSE_TIMEOUT"]

CLOSE_TIMEOUT = 2.0  # how long the closing handshake may take before TCP is closed anyway
RECV_SIZE = 65536
MAX_OBSERVED_TEXT = 1 << 20  # larger upstream text messages are forwarded but not observed
MAX_QUEUED_CONTROL = 64 * 1024  # control bytes queued for a busy leg before its pump waits



_Broken = (trio.BrokenResourceError, trio.ClosedResourceError)
_WHOLE_MESSAGE_B0 = frozenset((0x80 | OP_TEXT, 0x80 | OP_BINARY))  # FIN + TEXT / BINARY
_wait_readable = trio.lowlevel.wait_readable


class UpstreamObserver(Protocol):
    wants_text: bool  # while True, complete upstream TEXT messages are shown to observe_text

    def observe_text(self, payload: bytes) -> list[bytes]:
        """Return TEXT payloads to inject to the client right after that message."""
        ...

    def observe_binary(self) -> None:
        """Called for each upstream binary data frame forwarded (cheap)."""
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
    # Masks the provider key in upstream text payloads and close reasons (keyscrub.py).
    scrubber: KeyScrubber | None = None


@dataclass
class SpliceStats:
    frames_up: int = 0
    bytes_up: int = 0
    frames_down: int = 0
    bytes_down: int = 0
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
        session.c.fd = session.up.fd = -1
        with trio.CancelScope(shield=True):
            for stream in (client, session.up.stream):
                if stream is not None:
                    await trio.aclose_forcefully(stream)


class _SendLock:
    """Send lock of one leg (trio forbids concurrent send_all). Uncontended, acquiring is one
    attribute test and does not yield: the send that follows is a checkpoint anyway, and the
    hot paths test `held` inline. Contended, waiters queue in FIFO order and `release` hands
    the lock straight to the first of them, as trio.Lock does."""

    __slots__ = ("held", "_waiters")

    def __init__(self) -> None:
        self.held = False
        self._waiters: deque[trio.lowlevel.Task] = deque()

    async def acquire(self) -> None:
        if not self.held:
            self.held = True
            return
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(task)  # cancelled while waiting: the lock was never ours
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)  # woken by release(), lock ours

    def release(self) -> None:
        if self._waiters:  # hand over: `held` stays True for the first waiter
            trio.lowlevel.reschedule(self._waiters.popleft())
        else:
            self.held = False

    def locked(self) -> bool:
        return self.held

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _Leg:
    name: str
    stream: trio.abc.Stream | None = None
    lock: _SendLock = field(default_factory=_SendLock)
    out_closed: bool = False  # we sent our close (or can send nothing more)
    in_closed: bool = False  # nothing more to read (peer's close, EOF, or given up)
    broken: bool = False  # a frame was cut mid-way: only a TCP close is possible
    finished: trio.Event = field(default_factory=trio.Event)
    ctrl: list[bytes] = field(default_factory=list)  # control frames waiting for the lock
    ctrl_bytes: int = 0
    ctrl_task: bool = False
    # Socket fd when the stream is a plain trio.SocketStream (fast send and receive paths);
    # set to -1 before the stream is closed, so a stale number is never used.
    fd: int = -1

    def attach(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.fd = stream.socket.fileno() if type(stream) is trio.SocketStream else -1

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """One non-blocking write on a plain socket: the bytes the kernel took (0 when the
        stream is not a plain socket or its buffer is full). No scheduler pass. The caller
        holds `lock`."""
        fd = self.fd
        if fd < 0:
            return 0
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise trio.BrokenResourceError("send failed") from exc

    async def send(self, data: bytes | bytearray | memoryview, sent: int = -1) -> None:
        """send_all, but for a plain socket first one non-blocking write (unless the caller
        did it already: `sent` is what it wrote). The caller holds `lock`; the pumps'
        receives remain the checkpoints when the kernel takes everything."""
        if sent < 0:
            sent = self.try_send(data)
        if sent == len(data):
            return
        await self.stream.send_all(memoryview(data)[sent:] if sent else data)  # type: ignore[union-attr]

    def read_ready(self, fd: int) -> bytes | None:
        """One non-blocking read after `wait_readable(fd)` said the socket is readable: b""
        at EOF, None when there was nothing after all (wait again). Raises like receive_some
        (ClosedResourceError when the leg was closed meanwhile, BrokenResourceError).

        The pumps use this instead of receive_some after a short read (one that did not fill
        the buffer), where the next read would almost surely find nothing: receive_some
        first tries a recv that fails with EAGAIN, raises, and only then waits."""
        if self.fd != fd:
            raise trio.ClosedResourceError("leg closed")
        try:
            return os.read(fd, RECV_SIZE)
        except BlockingIOError:
            return None
        except OSError as exc:
            raise trio.BrokenResourceError("receive failed") from exc

    def check(self) -> None:
        if self.in_closed and self.out_closed:
            self.finished.set()

    def dead(self) -> None:
        self.in_closed = self.out_closed = True
        self.finished.set()


class _Splice:
    def __init__(
        self,
        client: trio.abc.Stream,
        client_buffered: bytes,
        connect: Callable[[], Awaitable[tuple[trio.abc.Stream, bytes]]],
        policy: SplicePolicy,
        stats: SpliceStats,
        shutdown: trio.Event | None,
    ) -> None:
        self.c = _Leg("client")
        self.c.attach(client)
        self.up = _Leg("upstream")
        self.client_buffered = client_buffered
        self.connect = connect
        self.policy = policy
        self.stats = stats
        self.shutdown = shutdown
        self.keys = MaskKeys()
        self.observer = policy.upstream_observer
        self.closing = trio.Event()
        self.nursery: trio.Nursery
        # upstream opening
        self.up_open = False
        self.up_ready = trio.Event()  # open, or will never open
        self.pending: list[bytes | bytearray] = []
        self.pending_bytes = 0
        self.connect_scope = trio.CancelScope()
        # client -> upstream parse state
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
        self.d_lock_held = False
        self.d_sending = False
        self.down_wire_mid_msg = False  # client wire is inside a message (frame or fragments)

    # ---------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            nursery.start_soon(self._guard, self._connect_task)
            nursery.start_soon(functools.partial(self._guard, self._c2u, reads=self.c))
            p = self.policy
            if p.idle_timeout or p.max_session_seconds or p.client_keepalive:
                nursery.start_soon(self._guard, self._timers)
            if self.shutdown is not None:
                nursery.start_soon(self._guard, self._watch_shutdown)
            await self.closing.wait()
            with trio.move_on_after(CLOSE_TIMEOUT):
                async with trio.open_nursery() as legs:
                    legs.start_soon(self._finish_leg, self.c)
                    legs.start_soon(self._finish_leg, self.up)
            nursery.cancel_scope.cancel()

    async def _finish_leg(self, leg: _Leg) -> None:
        await leg.finished.wait()
        leg.fd = -1  # the number may be reused once closed
        if leg.stream is not None:
            await trio.aclose_forcefully(leg.stream)

    async def _guard(self, fn: Callable[..., Awaitable[None]], *args: object, reads: _Leg | None = None) -> None:
        """Run a session task; an unexpected exception ends the session, never the worker.
        `reads` is the leg the task was parsing: its stream can no longer be parsed, so after
        our close it is drained until the peer's EOF."""
        try:
            await fn(*args)
        except Exception:
            self._end("error")
            closes = {self.c: (1011, "internal error"), self.up: (1000, "")}
            for leg, (code, reason) in closes.items():
                if leg is not reads:
                    self._spawn_close(leg, code, reason)
            if reads is not None:
                await self._close_leg(reads, *closes[reads])
                if not reads.in_closed:
                    await self._drain(reads)

    def _end(self, reason: str) -> bool:
        """Record why the session ends (first cause wins); False if it was already ending."""
        if self.closing.is_set():
            return False
        self.stats.end_reason = reason
        self.closing.set()
        return True

    def _spawn_close(self, leg: _Leg, code: int | None, reason: str, inject: list[bytes] | None = None) -> None:
        if not leg.out_closed:
            self.nursery.start_soon(self._close_leg, leg, code, reason, inject)

    async def _close_leg(self, leg: _Leg, code: int | None, reason: str, inject: list[bytes] | None = None) -> None:
        """Send our close frame on `leg` once (after `inject` text frames toward the client,
        when its wire is at a message boundary). `code` None sends a close without status."""
        if leg.out_closed:
            return
        if leg is self.up and leg.stream is None:
            self._abandon_upstream()
            return
        async with leg.lock:
            if leg.out_closed:
                return
            leg.out_closed = True
            if leg.broken:
                leg.dead()
                return
            payload = build_close_payload(code, reason)
            if leg is self.c:
                frame = build_frame(OP_CLOSE, payload)
                if inject and not self.down_wire_mid_msg:
                    frame = b"".join([*(build_frame(OP_TEXT, p) for p in inject), frame])
                self.stats.sent_client_close_code = 1005 if code is None else code
            else:
                frame = build_frame(OP_CLOSE, payload, keys=self.keys)
            assert leg.stream is not None
            try:
                await leg.send(frame)
            except _Broken:
                leg.in_closed = True
            leg.check()

    def _abandon_upstream(self) -> None:
        """The upstream is not open (and now never will be)."""
        self.connect_scope.cancel()
        self.up.dead()
        self.pending.clear()
        self.pending_bytes = 0
        self.up_ready.set()

    def _client_dropped(self) -> None:
        self.c.dead()
        self._end("client_closed")
        self._spawn_close(self.up, 1000, "")
        if self.up.stream is None:
            self._abandon_upstream()

    def _upstream_dropped(self) -> None:
        self.up.dead()
        self.up_ready.set()
        self._end("upstream_closed")
        self._spawn_close(self.c, 1011, "upstream error")

    def _limit_frames(self, code: str) -> list[bytes] | None:
        return self.policy.on_limit(code) if self.policy.on_limit else None

    def _limit(self, code: str) -> None:
        """A gateway limit ends the session: on_limit frames, then the limit's close codes."""
        if not self._end("limit:" + code):
            return
        limit = LIMITS[code]
        self._spawn_close(self.c, limit.client_close, code, self._limit_frames(code))
        self._spawn_close(self.up, limit.upstream_close, code)

    async def _drain(self, leg: _Leg) -> None:
        """After failing a leg (its byte stream can no longer be parsed): let the peer see
        EOF after our close frame, discard what it still sends, and stop at its EOF."""
        stream = leg.stream
        if stream is None:
            leg.dead()
            return
        if isinstance(stream, trio.abc.HalfCloseableStream):
            try:
                async with leg.lock:
                    await stream.send_eof()
            except (*_Broken, trio.BusyResourceError):
                pass
        try:
            while await stream.receive_some(RECV_SIZE):
                pass
        except _Broken:
            pass
        leg.in_closed = True
        leg.check()

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
        self.stats.upstream_connect_seconds = trio.current_time() - t0
        up = self.up
        up.attach(stream)
        try:
            async with up.lock:
                while self.pending:  # frames the client sent meanwhile, in order
                    batch = self.pending[0] if len(self.pending) == 1 else b"".join(self.pending)
                    self.pending.clear()
                    self.pending_bytes = 0
                    if not up.out_closed:
                        await up.send(batch)
                self.up_open = True
                self.up_wire_mid_msg = self.c_msg_op is not None
        except _Broken:
            self._upstream_dropped()
            return
        finally:
            self.up_ready.set()
        self.nursery.start_soon(functools.partial(self._guard, self._u2c, buffered, reads=self.up))

    def _upstream_failed(self, err: UpstreamConnectError) -> None:
        if not self._end("upstream_failed:" + err.kind):
            return
        self._abandon_upstream()
        handler = self.policy.on_upstream_failure or default_upstream_failure
        inject, code, reason = handler(err)
        self._spawn_close(self.c, code, reason, inject)

    # ---------------------------------------------------------------- client -> upstream

    async def _c2u(self) -> None:
        c = self.c
        stream = c.stream
        assert stream is not None
        buf = bytearray()
        data: bytes | bytearray = self.client_buffered
        while True:
            if data:
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
                    await self._send_control(c, down)
                if up:
                    sent = self._send_up_nowait(up)
                    if sent != len(up):
                        await self._send_up(up, sent)
                if action is not None:
                    await self._client_action(action)
                    return
                if work is buf:
                    del buf[:consumed]
                elif consumed < len(work):
                    buf = bytearray(memoryview(work)[consumed:])
            if c.in_closed:
                return
            try:
                fd = c.fd
                if fd >= 0 and len(data) < RECV_SIZE:  # wait first, then read (see read_ready)
                    while True:
                        await _wait_readable(fd)
                        got = c.read_ready(fd)
                        if got is not None:
                            break
                    data = got
                else:
                    data = await stream.receive_some(RECV_SIZE)
            except _Broken:
                data = b""
            if not data:
                if not c.in_closed:
                    self._client_dropped()
                return

    def _client_frames(self, work: bytes | bytearray) -> tuple[int, bytes | bytearray, bytearray | None, tuple | None]:
        """Parse the complete client frames in `work`: (bytes consumed, re-masked frames for
        the upstream, control frames for the client, action that stops the pump or None)."""
        end = len(work)
        fast = parse_client_data_header(work, 0)
        if fast is not None and fast[2] + fast[1] == end and fast[0] in _WHOLE_MESSAGE_B0:
            # The usual realtime read: exactly one whole unfragmented message.
            b0, ln, size, cmask = fast
            if self.c_msg_op is None and ln <= self.policy.max_message_bytes:
                key = self.keys.next32()
                stats = self.stats
                stats.frames_up += 1
                stats.bytes_up += ln
                self.c_saw_data = True
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
                if b0 & 0x80:
                    self.c_msg_op = None
                    self.c_msg_size = 0
                else:
                    if op != OP_CONT:
                        self.c_msg_op = op
                    self.c_msg_size = total
                # Re-mask with a fresh gateway key in one pass: the payload is masked with
                # the client's key, so XOR with (client key ^ gateway key).
                key = keys.next32()
                frame = build_masked_header(b0, ln, key)
                if ln:
                    frame += xor_mask_at(work, start, fend, cmask ^ key)
                if not up:
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

    @staticmethod
    def _write_now(fd: int, data: bytes | bytearray | memoryview) -> int | None:
        """One non-blocking write: bytes written, 0 when the socket buffer is full, None
        when the peer is gone."""
        try:
            return os.write(fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            return None

    def _send_up_nowait(self, data: bytes | bytearray) -> int:
        """The usual `_send_up` without a coroutine: upstream open, its lock free, a plain
        socket. Returns the bytes written (all, or the caller finishes with
        `await self._send_up(data, sent)`), -1 when nothing was tried."""
        up = self.up
        fd = up.fd
        if fd < 0 or not self.up_open or up.out_closed or up.lock.held:
            return -1
        sent = self._write_now(fd, data)
        if sent is None:
            self._upstream_dropped()
            return len(data)
        self.up_wire_mid_msg = self.c_msg_op is not None
        return sent

    async def _send_up(self, data: bytes | bytearray, sent: int = -1) -> None:
        """Frames to the upstream (`sent`: bytes of `data` _send_up_nowait already wrote)."""
        up = self.up
        if up.out_closed:
            return  # P11: client frames after the upstream closed are dropped
        if not self.up_open:
            self.pending.append(data)
            self.pending_bytes += len(data)
            if self.pending_bytes >= self.policy.max_pending_bytes:
                await self.up_ready.wait()  # backpressure: stop reading the client
            return
        lock = up.lock
        if lock.held:
            await lock.acquire()
        else:
            lock.held = True  # uncontended: no await at all
        try:
            if up.out_closed:
                return
            try:
                await up.send(data, sent)
            except _Broken:
                self._upstream_dropped()
            self.up_wire_mid_msg = self.c_msg_op is not None
        finally:
            lock.release()

    async def _client_action(self, action: tuple) -> None:
        kind = action[0]
        c = self.c
        if kind == "close":
            _, code, reason = action
            c.in_closed = True
            self.stats.client_close_code = 1005 if code is None else code
            if c.out_closed:  # the reply to our close
                c.check()
                return
            self._end("client_closed")
            self._spawn_close(self.up, map_close_code(code, toward="upstream"), safe_reason(reason))
            await self._close_leg(c, code, "")  # echo the client's code (RFC 6455 §5.5.1)
            return
        if kind == "protocol":
            if self._end("protocol_error:client"):
                self._spawn_close(self.up, 1000, "")
            await self._close_leg(c, 1002, "protocol error")
        else:  # a message over max_message_bytes
            limit = action[1]
            inject = None
            if self._end("limit:" + limit):
                inject = self._limit_frames(limit)
                self._spawn_close(self.up, LIMITS[limit].upstream_close, limit)
            await self._close_leg(c, LIMITS[limit].client_close, limit, inject)
            # Refused from its header: the payload is never read, not even to drain it
            # (issue 16 §6); TCP is closed once our close frame is out.
            c.dead()
            return
        # The rest of the client's byte stream cannot be parsed any more.
        if c.out_closed and not c.in_closed:
            await self._drain(c)
        else:
            c.dead()

    async def _send_control(self, leg: _Leg, frames: bytes | bytearray) -> None:
        """Control frames (pongs) from a pump to the other side of its leg. An idle leg gets
        them at once, from the pump itself, so a pong leaves before anything the pump forwards
        next. While the leg's lock is busy (a frame mid-stream) they are queued for a helper
        task and the pump keeps reading; past MAX_QUEUED_CONTROL the pump waits for the leg
        too, so a peer that floods pings and never reads cannot grow the worker's memory."""
        leg.ctrl.append(frames)
        leg.ctrl_bytes += len(frames)
        if leg.ctrl_task or leg.lock.locked():
            if not leg.ctrl_task:
                leg.ctrl_task = True
                self.nursery.start_soon(self._flush_control, leg)
            if leg.ctrl_bytes <= MAX_QUEUED_CONTROL:
                return
        await self._write_control(leg)

    async def _flush_control(self, leg: _Leg) -> None:
        try:
            await self._write_control(leg)
        finally:
            leg.ctrl_task = False
            leg.ctrl.clear()
            leg.ctrl_bytes = 0

    async def _write_control(self, leg: _Leg) -> None:
        async with leg.lock:
            while leg.ctrl:
                data = b"".join(leg.ctrl)
                leg.ctrl.clear()
                leg.ctrl_bytes = 0
                if leg.out_closed or leg.stream is None:
                    continue
                try:
                    await leg.send(data)
                except _Broken:
                    if leg is self.c:
                        self._client_dropped()
                    else:
                        self._upstream_dropped()

    # ---------------------------------------------------------------- upstream -> client

    async def _u2c(self, data: bytes) -> None:
        up = self.up
        stream = up.stream
        assert stream is not None
        try:
            while True:
                if data:
                    out, ctrl, action = self._upstream_frames(data)
                    if out:
                        chunk = out[0] if len(out) == 1 else b"".join(out)
                        sent = self._send_down_nowait(chunk)
                        if sent != len(chunk):
                            await self._send_down(chunk, sent)
                    if ctrl:
                        await self._send_control(up, ctrl)
                    if action is not None:
                        await self._upstream_action(action)
                        return
                if up.in_closed:
                    return
                try:
                    fd = up.fd
                    if fd >= 0 and len(data) < RECV_SIZE:  # wait first, then read (see read_ready)
                        while True:
                            await _wait_readable(fd)
                            got = up.read_ready(fd)
                            if got is not None:
                                break
                        data = got
                    else:
                        data = await stream.receive_some(RECV_SIZE)
                except _Broken:
                    data = b""
                if not data:
                    if not up.in_closed:
                        self._release_client_lock()
                        self._upstream_dropped()
                    return
        finally:
            self._release_client_lock()

    def _release_client_lock(self) -> None:
        if self.d_lock_held:
            if self.d_rem or self.d_sending:
                self.c.broken = True  # a frame was cut: the client can only get a TCP close
            self.d_lock_held = False
            self.c.lock.release()

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
            if self.d_msg_op == OP_BINARY and observer is not None:
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

    def _send_down_nowait(self, data: bytes | memoryview) -> int:
        """The usual `_send_down` without a coroutine: whole frames only (no frame left
        incomplete, so the client lock is not kept), the lock free, a plain socket. Returns
        the bytes written (all, or the caller finishes with `await self._send_down(data,
        sent)`), -1 when nothing was tried."""
        c = self.c
        fd = c.fd
        if fd < 0 or self.d_rem or self.d_lock_held or c.lock.held or c.out_closed:
            return -1
        sent = self._write_now(fd, data)
        if sent is None:
            self._client_dropped()
            return len(data)
        self.down_wire_mid_msg = self.d_msg_op is not None
        return sent

    async def _send_down(self, data: bytes | memoryview, sent: int = -1) -> None:
        """Upstream bytes to the client (`sent`: bytes of `data` _send_down_nowait already
        wrote). Keeps the client lock while a forwarded frame is incomplete."""
        c = self.c
        if not self.d_lock_held:
            if c.out_closed:
                return  # the client leg is closing: upstream frames are dropped
            if c.lock.held:
                await c.lock.acquire()
            else:
                c.lock.held = True  # uncontended: no await at all
            self.d_lock_held = True
        if c.out_closed:
            self.d_lock_held = False
            c.lock.release()
            return
        self.d_sending = True
        try:
            await c.send(data, sent)
        except _Broken:
            self.d_sending = False
            self._release_client_lock()
            self._client_dropped()
            return
        self.d_sending = False
        self.down_wire_mid_msg = self.d_msg_op is not None
        if not self.d_rem:
            self.d_lock_held = False
            c.lock.release()

    async def _upstream_action(self, action: tuple) -> None:
        kind = action[0]
        up = self.up
        if kind == "close":
            _, code, reason = action
            up.in_closed = True
            self.stats.upstream_close_code = 1005 if code is None else code
            if up.out_closed:  # the reply to our close
                up.check()
                return
            self._end("upstream_closed")
            to_client = map_close_code(code, toward="client")
            self._spawn_close(self.c, to_client, generic_close_reason(to_client, reason, self.scrub))
            await self._close_leg(up, code, "")
            return
        # protocol error from the upstream: 1002 toward it, 1011 toward the client
        if self._end("protocol_error:upstream"):
            self._spawn_close(self.c, 1011, "upstream error")
            await self._close_leg(up, 1002, "protocol error")
        if up.out_closed and not up.in_closed:
            await self._drain(up)
        else:
            up.dead()

    # ---------------------------------------------------------------- timers

    async def _watch_shutdown(self) -> None:
        assert self.shutdown is not None
        await self.shutdown.wait()
        self._limit("shutting_down")

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
                    await self._send_keepalive(ka_payload)
                    continue
                deadline = min(deadline, ka_due)
            with trio.move_on_at(deadline):
                await self.closing.wait()

    async def _send_keepalive(self, payload: bytes) -> None:
        up = self.up
        if not self.up_open or up.out_closed:
            return
        async with up.lock:
            if up.out_closed or self.up_wire_mid_msg:
                return  # never inside a fragmented client message
            try:
                await up.send(build_frame(OP_TEXT, payload, keys=self.keys))
            except _Broken:
                self._upstream_dropped()
