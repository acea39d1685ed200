"""A minimal epoll loop and a raw WebSocket client connection on it.

Why not trio here: the generator must push ~10k frames/s each way on a 2-core machine it
shares with the gateway and the upstream. Each trio await costs a scheduler pass and an
epoll_ctl; this loop registers a socket once, reads whole batches of frames per recv and
writes several frames with one send, so a message costs a few microseconds.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import select
import socket
import ssl
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

from voxgate.bench.wire import (
    HEAD_END,
    MAX_HEAD,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    ZERO_MASK,
    client_frame,
    close_code,
    close_payload,
    parse_frame,
    response_status,
    upgrade_request,
)

EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
EPOLLERR_HUP = select.EPOLLERR | select.EPOLLHUP
RECV_SIZE = 262144


class Loop:
    """epoll + a timer heap. `run` returns when `done()` holds or the deadline passes."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, Any] = {}
        self.timers: list[tuple[int, int, Callable[..., None], tuple]] = []
        self._tie = itertools.count()

    def register(self, fd: int, handler: Any, events: int) -> None:
        self.handlers[fd] = handler
        self.ep.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        self.ep.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_at(self, when_ns: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.timers, (when_ns, next(self._tie), fn, args))

    def run(self, until_ns: int, done: Callable[[], bool] | None = None) -> bool:
        """Process events and timers; True if `done()` became true before `until_ns`."""
        timers = self.timers
        handlers = self.handlers
        poll = self.ep.poll
        pop = heapq.heappop
        while True:
            now = perf_counter_ns()
            while timers and timers[0][0] <= now:
                _, _, fn, args = pop(timers)
                fn(*args)
            if done is not None and done():
                return True
            now = perf_counter_ns()
            if now >= until_ns:
                return False
            wake = until_ns if not timers or timers[0][0] > until_ns else timers[0][0]
            timeout = min(1.0, max(0.0, (wake - now) / 1e9))
            for fd, ev in poll(timeout, 1024):
                handler = handlers.get(fd)
                if handler is not None:
                    handler.on_event(ev)

    def close(self) -> None:
        self.ep.close()


IDLE, CONNECTING, HANDSHAKE, OPEN, CLOSING, CLOSED, TLS_HANDSHAKE = range(7)


def _client_tls_context() -> ssl.SSLContext:
    """The generator talks to a gateway with a throw-away certificate: no verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_TLS_CONTEXT: ssl.SSLContext | None = None


class WsClient:
    """One client WebSocket over a non-blocking socket. Subclasses override the `on_*`
    hooks; `on_frame` gets offsets into the read buffer (no payload copy)."""

    def __init__(self, loop: Loop, host: str, port: int, path: str) -> None:
        self.loop = loop
        self.host = host
        self.port = port
        self.path = path
        self.sock: socket.socket | None = None
        self.fd = -1
        self.state = IDLE
        self.out = bytearray()
        self.rbuf = b""
        self.frag: bytearray | None = None
        self.frag_op = 0
        self.error: str | None = None
        self.close_code: int | None = None
        self.t_start = 0
        self.t_open = 0
        self.tls: ssl.SSLObject | None = None  # wss: TLS through memory BIOs (see enable_tls)
        self._tls_in: ssl.MemoryBIO | None = None
        self._tls_out: ssl.MemoryBIO | None = None

    def enable_tls(self) -> None:
        """Speak wss: TLS runs inside this loop through memory BIOs, so a wss client costs the
        generator the same wake-ups as a ws one plus the record layer."""
        global _TLS_CONTEXT
        if _TLS_CONTEXT is None:
            _TLS_CONTEXT = _client_tls_context()
        self._tls_in, self._tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = _TLS_CONTEXT.wrap_bio(self._tls_in, self._tls_out, server_hostname=self.host)

    # -- lifecycle -----------------------------------------------------------------------

    def connect(self) -> None:
        self.t_start = perf_counter_ns()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex((self.host, self.port))
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.fail(f"connect: {errno.errorcode.get(err, err)}")
            return
        self.sock = sock
        self.fd = sock.fileno()
        self.state = CONNECTING
        self.loop.register(self.fd, self, EPOLLOUT)

    def fail(self, reason: str) -> None:
        """End the connection with an error (the first reason is kept)."""
        if self.state == CLOSED:
            return
        if self.error is None:
            self.error = reason
        self._teardown()
        self.on_closed()

    def _teardown(self) -> None:
        if self.sock is not None:
            self.loop.unregister(self.fd)
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None
        self.state = CLOSED

    def close(self, code: int = 1000) -> None:
        """Send our close frame; the connection ends at the peer's close or EOF."""
        if self.state == OPEN:
            self.send(client_frame(OP_CLOSE, close_payload(code)))
            self.state = CLOSING
        elif self.state in (IDLE, CONNECTING, HANDSHAKE):
            self._teardown()
            self.on_closed()

    def abort(self) -> None:
        if self.state != CLOSED:
            self._teardown()
            self.on_closed()

    # -- hooks ---------------------------------------------------------------------------

    def request_path(self) -> str:
        return self.path

    def on_open(self, now: int) -> None:
        """The 101 arrived."""

    def on_frame(self, op: int, buf: bytes, start: int, end: int, now: int) -> None:
        """A complete data frame (or a reassembled message)."""

    def after_read(self, now: int) -> None:
        """All frames of one recv were delivered (batch replies here)."""

    def on_closed(self) -> None:
        """The connection is over (self.error says whether it was clean)."""

    # -- I/O -----------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.tls is not None:
            if self.sock is None:
                return
            try:
                self.tls.write(data)
            except ssl.SSLError as exc:
                self.fail(f"tls: {exc}")
                return
            data = self._tls_out.read()  # type: ignore[union-attr]
        self._send_raw(data)

    def _send_raw(self, data: bytes) -> None:
        if self.sock is None or not data:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send: {exc.strerror or exc}")
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self.loop.modify(self.fd, EPOLLIN | EPOLLOUT)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"send: {exc.strerror or exc}")
            return
        del self.out[:sent]
        if not self.out:
            self.loop.modify(self.fd, EPOLLIN)

    def on_event(self, ev: int) -> None:
        state = self.state
        if state == CONNECTING:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            if err:
                self.fail(f"connect: {errno.errorcode.get(err, err)}")
                return
            self.loop.modify(self.fd, EPOLLIN)
            if self.tls is not None:
                self.state = TLS_HANDSHAKE
                self._tls_step()
                return
            self.state = HANDSHAKE
            self.send(upgrade_request(self.request_path(), f"{self.host}:{self.port}"))
            return
        if ev & EPOLLOUT and self.out:
            self._flush()
            if self.state == CLOSED:
                return
        if ev & (EPOLLIN | EPOLLERR_HUP):
            self._read()

    def _tls_step(self) -> None:
        """Advance the TLS handshake; once done, send the upgrade request."""
        assert self.tls is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._send_raw(self._tls_out.read())  # type: ignore[union-attr]
            return
        except ssl.SSLError as exc:
            self.fail(f"tls: {exc}")
            return
        self._send_raw(self._tls_out.read())  # type: ignore[union-attr]
        self.state = HANDSHAKE
        self.send(upgrade_request(self.request_path(), f"{self.host}:{self.port}"))

    def _tls_read(self, raw: bytes) -> bytes | None:
        """Raw bytes in, plaintext out (b"" at the peer's EOF); None: nothing yet / failed."""
        assert self.tls is not None and self._tls_in is not None
        if raw:
            self._tls_in.write(raw)
        else:
            self._tls_in.write_eof()
        if self.state == TLS_HANDSHAKE:
            self._tls_step()
            if self.state == TLS_HANDSHAKE or self.state == CLOSED:
                return b"" if not raw and self.state != CLOSED else None
        parts = []
        while True:
            try:
                chunk = self.tls.read(RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(parts) if parts else b""
            except ssl.SSLError as exc:
                self.fail(f"tls: {exc}")
                return None
            if not chunk:
                return b"".join(parts) if parts else b""
            parts.append(chunk)
        if self._tls_out.pending:  # type: ignore[union-attr]
            self._send_raw(self._tls_out.read())  # type: ignore[union-attr]
        if not parts:
            return b"" if not raw else None
        return b"".join(parts)

    def _read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"recv: {exc.strerror or exc}")
            return
        if self.tls is not None:
            got = self._tls_read(data)
            if got is None:
                return
            data = got
        now = perf_counter_ns()
        if not data:
            if self.state == CLOSING:
                self._teardown()
                self.on_closed()
            else:
                self.fail("EOF without close frame" if self.state == OPEN else "EOF during handshake")
            return
        if self.rbuf:
            data = self.rbuf + data
            self.rbuf = b""
        if self.state == HANDSHAKE:
            end = data.find(HEAD_END)
            if end < 0:
                if len(data) > MAX_HEAD:
                    self.fail("response head too large")
                else:
                    self.rbuf = data
                return
            status = response_status(data[:end])
            if status != 101:
                self.fail(f"HTTP {status}")
                return
            self.state = OPEN
            self.t_open = now
            data = data[end + 4 :]
            self.on_open(now)
            if self.state != OPEN:
                return
        self._frames(data, now)

    def _frames(self, buf: bytes, now: int) -> None:
        pos = 0
        n = len(buf)
        on_frame = self.on_frame
        while pos < n:
            got = parse_frame(buf, pos)
            if got is None:
                break
            op, fin, key, start, end = got
            pos = end
            if key is not None:
                self.fail("masked server frame")
                return
            if op >= 8:
                self._control(op, buf[start:end])
                if self.state == CLOSED:
                    return
                continue
            if fin and op != OP_CONT and self.frag is None:
                on_frame(op, buf, start, end, now)
            else:  # a fragmented message: reassemble (rare; relays keep frames whole here)
                if op != OP_CONT:
                    self.frag, self.frag_op = bytearray(), op
                if self.frag is None:
                    self.fail("continuation without start")
                    return
                self.frag += buf[start:end]
                if fin:
                    whole = bytes(self.frag)
                    self.frag = None
                    on_frame(self.frag_op, whole, 0, len(whole), now)
            if self.state == CLOSED:
                return
        if pos < n:
            self.rbuf = buf[pos:]
        self.after_read(now)

    def _control(self, op: int, payload: bytes) -> None:
        if op == OP_PING:
            self.send(client_frame(OP_PONG, payload, ZERO_MASK))
        elif op == OP_CLOSE:
            self.close_code = close_code(payload)
            if self.state == CLOSING:
                self._teardown()
                self.on_closed()
            else:
                self.send(client_frame(OP_CLOSE, payload[:2]))
                self.fail(f"closed by peer ({self.close_code})")
