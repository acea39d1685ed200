"""The worker's data plane: one readiness loop per worker serves every established socket.

Why: a trio task wake-up per frame costs more CPU than a whole relay hop should
(architecture.md §1 "A worker has two planes"). Once a session's handshakes are done, its
sockets are registered in one `select.epoll` per worker. One trio task waits until that
epoll's own fd is readable (`wait_readable(ep.fileno())`, so everything stays in trio's
thread: no locks, no GIL hand-off), then `poll(0)`s and serves every ready socket with
non-blocking `os.read`/`os.write`: one scheduler pass per batch of ready sockets, not per
frame.

A `Conn` is one socket on the plane: the relay gives it three callbacks (`on_data`,
`on_eof`, `on_error`; plus `on_drained`), and writes through `write`, which sends at once
when nothing is queued and otherwise keeps the bytes in a per-socket output queue (EPOLLOUT
is registered only while that queue is non-empty). Backpressure is the relay's: it stops
reading a side (`pause`) while its peer's queue is over `HIGH_WATER`, and resumes from
`on_drained`. Callbacks run synchronously; an exception escaping one is given to the conn's
`on_fault`, so a fault ends one session, never the loop.

Streams that are not plain sockets (TLS upstream legs, test wrappers) cannot be raw fds:
`StreamConn` serves them with a reader and a writer trio task behind the same interface, so
the relays have one code path. TLS stays there because a `ssl.MemoryBIO` inside the loop
would put the whole handshake and record layer on the loop for the (rare) wss upstreams of
real providers, whose latency is dominated by the network anyway.
"""

from __future__ import annotations

import os
import select
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

__all__ = ["Conn", "DataPlane", "FdConn", "StreamConn", "attach", "plane", "HIGH_WATER", "RECV_SIZE"]

RECV_SIZE = 65536
HIGH_WATER = 256 * 1024  # queued output bytes over which the relay stops reading the source
LOW_WATER = 64 * 1024  # `on_drained` fires once the queue is back under this
_IOV_MAX = 64
BURST = 4  # batches served per wake-up at most

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
_ERRHUP = select.EPOLLERR | select.EPOLLHUP

_plane_var: trio.lowlevel.RunVar = trio.lowlevel.RunVar("voxgate_dataplane")


def _nothing(*_: Any) -> None:
    return None


class Conn:
    """One socket on the data plane (see the module docstring). `out_bytes` is what is queued
    and not yet taken by the kernel; `closed` means no more I/O at all."""

    on_data: Callable[[bytes], None]
    on_eof: Callable[[], None]
    on_error: Callable[[], None]
    on_drained: Callable[[], None]
    on_fault: Callable[[BaseException], None]

    def __init__(self) -> None:
        self.on_data = self.on_eof = self.on_error = self.on_drained = _nothing  # type: ignore[assignment]
        self.on_fault = _nothing
        self.out: deque[bytes | memoryview] = deque()
        self.out_bytes = 0
        self.reading = False
        self.closed = False
        self.broken = False  # a write failed: nothing more can be sent
        self.eof_after_flush = False
        self.eof_sent = False

    # the interface the relays use -------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def pause(self) -> None:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def shutdown_after_flush(self) -> None:
        """Half-close (send EOF) once everything queued is sent."""
        raise NotImplementedError

    def discard_output(self) -> None:
        """Drop what is queued (the peer can only get a TCP close now)."""
        self.out.clear()
        self.out_bytes = 0

    def flushed(self) -> bool:
        return self.out_bytes == 0 or self.broken or self.closed

    async def aclose(self) -> None:
        raise NotImplementedError

    def _fault(self, exc: BaseException) -> None:
        try:
            self.on_fault(exc)
        except Exception:  # noqa: BLE001 - the fault handler itself failed: just stop this conn
            self.reading = False


class DataPlane:
    """The epoll loop of one worker (one per trio run, see `plane`)."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.conns: dict[int, FdConn] = {}
        self.polls = 0  # batches served (observability and tests)
        self.events = 0

    async def serve(self) -> None:
        ep = self.ep
        epfd = ep.fileno()
        wait = trio.lowlevel.wait_readable
        while True:
            await wait(epfd)
            ready = ep.poll(0)
            # Sockets that became ready while a batch was served are served at once, a few
            # batches in a row, without another trip through trio's scheduler (bounded, so
            # timers and the control plane still run between bursts).
            for _ in range(BURST):
                if not ready:
                    break
                self._serve(ready)
                ready = ep.poll(0)
            else:
                if ready:
                    self._serve(ready)

    def _serve(self, ready: list[tuple[int, int]]) -> None:
        conns = self.conns
        self.polls += 1
        self.events += len(ready)
        for fd, ev in ready:
                conn = conns.get(fd)
                if conn is None:
                    continue
                try:
                    if ev & EPOLLOUT or (ev & _ERRHUP and conn.out_bytes):
                        conn._flush()
                    if conn.reading and ev & (EPOLLIN | _ERRHUP):
                        conn._read()
                    elif ev & _ERRHUP and not conn.closed:
                        conn._hangup()
                except Exception as exc:  # noqa: BLE001 - a relay bug ends its session only
                    conn._fault(exc)

    def _set(self, conn: FdConn) -> None:
        """Register exactly the events `conn` wants (nothing: not registered, so a hung-up
        socket nobody reads cannot spin the loop)."""
        if conn.closed:
            return
        want = (EPOLLIN if conn.reading else 0) | (EPOLLOUT if conn.out_bytes else 0)
        have = conn.registered
        if want == have:
            return
        fd = conn.fd
        if not want:
            self.ep.unregister(fd)
            del self.conns[fd]
        elif not have:
            self.ep.register(fd, want)
            self.conns[fd] = conn
        else:
            self.ep.modify(fd, want)
        conn.registered = want

    def _forget(self, conn: FdConn) -> None:
        if conn.registered:
            try:
                self.ep.unregister(conn.fd)
            except (OSError, ValueError):
                pass
            conn.registered = 0
            if self.conns.get(conn.fd) is conn:
                del self.conns[conn.fd]


def plane() -> DataPlane:
    """This trio run's data plane, started on first use (a system task: it lives as long as the
    run, and a session's fault never reaches it)."""
    try:
        return _plane_var.get()
    except LookupError:
        pass
    dp = DataPlane()
    _plane_var.set(dp)
    trio.lowlevel.spawn_system_task(dp.serve, name="voxgate-dataplane")
    return dp


class FdConn(Conn):
    """A plain socket served by the epoll loop."""

    def __init__(self, dp: DataPlane, stream: trio.SocketStream) -> None:
        super().__init__()
        self.dp = dp
        self.stream = stream
        self.sock: socket.socket = stream.socket  # type: ignore[assignment]
        self.fd = stream.socket.fileno()
        self.registered = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.broken or not len(data):
            return
        if self.out_bytes:
            self.out.append(bytes(data) if type(data) is not bytes else data)
            self.out_bytes += len(data)
            return
        try:
            sent = os.write(self.fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._broke()
            return
        if sent < len(data):
            rest = bytes(memoryview(data)[sent:])
            self.out.append(rest)
            self.out_bytes = len(rest)
            self.dp._set(self)

    def _flush(self) -> None:
        out = self.out
        while out:
            try:
                if len(out) == 1:
                    sent = os.write(self.fd, out[0])
                else:
                    sent = os.writev(self.fd, [out[i] for i in range(min(len(out), _IOV_MAX))])
            except BlockingIOError:
                break
            except OSError:
                self._broke()
                return
            self.out_bytes -= sent
            while sent:
                head = out[0]
                if sent >= len(head):
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = memoryview(head)[sent:]
                    sent = 0
            if out:
                break  # the kernel took less than offered: wait for EPOLLOUT
        if not out:
            self.out_bytes = 0
            if self.eof_after_flush:
                self._send_eof()
        self.dp._set(self)
        if self.out_bytes <= LOW_WATER:
            self.on_drained()

    def _read(self) -> None:
        try:
            data = os.read(self.fd, RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.on_data(data)
        else:
            self.reading = False
            self.dp._set(self)
            self.on_eof()

    def _hangup(self) -> None:
        """ERR/HUP while we neither read nor write: nothing to do but stop watching."""
        self.dp._forget(self)

    def _broke(self) -> None:
        self.broken = True
        self.discard_output()
        self.dp._set(self)
        self.on_error()

    def _send_eof(self) -> None:
        if self.eof_sent or self.closed:
            return
        self.eof_sent = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def pause(self) -> None:
        if self.reading:
            self.reading = False
            self.dp._set(self)

    def resume(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self.dp._set(self)

    def shutdown_after_flush(self) -> None:
        if self.out_bytes:
            self.eof_after_flush = True
        else:
            self._send_eof()

    def discard_output(self) -> None:
        super().discard_output()
        if not self.closed:
            self.dp._set(self)

    def detach(self) -> None:
        """Leave the loop without closing the socket (its owner closes it, politely)."""
        if not self.closed:
            self.dp._forget(self)
            self.closed = True
            self.reading = False
            self.out.clear()
            self.out_bytes = 0

    async def aclose(self) -> None:
        self.detach()
        await trio.aclose_forcefully(self.stream)


class StreamConn(Conn):
    """Any other trio stream (TLS, wrappers): a reader and a writer task in `nursery` drive the
    same callbacks as the epoll loop does."""

    def __init__(self, stream: trio.abc.Stream, nursery: trio.Nursery) -> None:
        super().__init__()
        self.stream = stream
        self._wake_writer = trio.Event()
        self._wake_reader = trio.Event()
        self.scope = trio.CancelScope()
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)

    async def _reader(self) -> None:
        while not self.closed:
            if not self.reading:
                self._wake_reader = trio.Event()
                await self._wake_reader.wait()
                continue
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            except trio.BusyResourceError:
                return
            if self.closed:
                return
            try:
                if data:
                    self.on_data(data)
                else:
                    self.reading = False
                    self.on_eof()
                    return
            except Exception as exc:  # noqa: BLE001 - a relay bug ends its session only
                self._fault(exc)
                return

    async def _writer(self) -> None:
        while not self.closed:
            if not self.out:
                if self.eof_after_flush and not self.eof_sent:
                    self.eof_sent = True
                    if isinstance(self.stream, trio.abc.HalfCloseableStream):
                        try:
                            await self.stream.send_eof()
                        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
                            pass
                self._wake_writer = trio.Event()
                await self._wake_writer.wait()
                continue
            chunk = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            try:
                await self.stream.send_all(chunk)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                if self.closed:
                    return
                self.broken = True
                self.discard_output()
                try:
                    self.on_error()
                except Exception as exc:  # noqa: BLE001
                    self._fault(exc)
                return
            self.out_bytes -= len(chunk)
            if self.out_bytes <= LOW_WATER:
                try:
                    self.on_drained()
                except Exception as exc:  # noqa: BLE001
                    self._fault(exc)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.broken or not len(data):
            return
        self.out.append(bytes(data) if type(data) is not bytes else data)
        self.out_bytes += len(data)
        self._wake_writer.set()

    def pause(self) -> None:
        self.reading = False

    def resume(self) -> None:
        if not self.reading and not self.closed:
            self.reading = True
            self._wake_reader.set()

    def shutdown_after_flush(self) -> None:
        self.eof_after_flush = True
        self._wake_writer.set()

    async def aclose(self) -> None:
        self.closed = True
        self.reading = False
        self.scope.cancel()
        await trio.aclose_forcefully(self.stream)


def attach(stream: trio.abc.Stream, nursery: trio.Nursery) -> Conn:
    """A conn for `stream`: on the epoll loop when it is a plain socket, else task-driven.
    It does not read until `resume()`."""
    if type(stream) is trio.SocketStream:
        return FdConn(plane(), stream)
    return StreamConn(stream, nursery)
