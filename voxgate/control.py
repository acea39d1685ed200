"""The supervisor <-> worker control channel: one AF_UNIX SOCK_SEQPACKET pair per worker.

A message is one datagram: a 4-byte big-endian length, a compact JSON header, then an
optional raw payload (the request bytes the supervisor already read). A handed-off client
socket travels as SCM_RIGHTS ancillary data on the same datagram, so header, bytes and fd
arrive together or not at all. EOF on the channel means the peer process is gone.
"""

from __future__ import annotations

import array
import socket
import struct
from dataclasses import dataclass
from typing import Any

import orjson
import trio

MAX_MESSAGE = 256 * 1024
CONTROL_FD_ENV = "VOXGATE_CONTROL_FD"  # tells a worker which inherited fd is its channel end
_LEN = struct.Struct(">I")


@dataclass(slots=True)
class Message:
    header: dict[str, Any]
    payload: bytes = b""
    fd: int | None = None


class ChannelClosed(Exception):
    """The other end of the control channel went away."""


def make_pair() -> tuple[socket.socket, socket.socket]:
    """(supervisor end, worker end); the worker end is inheritable for `pass_fds`."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (parent, child):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
    child.set_inheritable(True)
    return parent, child


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _LEN.pack(len(head)) + head + payload


def decode(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = _LEN.unpack_from(data)
    header = orjson.loads(data[_LEN.size : _LEN.size + size])
    return header, data[_LEN.size + size :]


class Channel:
    """Async send/receive of control messages over a trio socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = trio.socket.from_stdlib_socket(sock)
        self._send_lock = trio.Lock()

    def fileno(self) -> int:
        return self._sock.fileno()

    async def send(self, header: dict[str, Any], payload: bytes = b"", fd: int | None = None) -> None:
        data = encode(header, payload)
        if len(data) > MAX_MESSAGE:
            raise ValueError("control message too large")
        ancillary = []
        if fd is not None:
            ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd])))
        async with self._send_lock:
            try:
                await self._sock.sendmsg([data], ancillary)
            except (BrokenPipeError, ConnectionResetError, OSError) as exc:
                raise ChannelClosed(str(exc)) from None

    async def receive(self) -> Message:
        try:
            data, ancillary, _flags, _addr = await self._sock.recvmsg(
                MAX_MESSAGE, socket.CMSG_SPACE(array.array("i").itemsize)
            )
        except (ConnectionResetError, OSError) as exc:
            raise ChannelClosed(str(exc)) from None
        fd = None
        for level, kind, blob in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(blob[: len(blob) - len(blob) % fds.itemsize])
                for extra in fds[1:]:
                    socket.close(extra)
                fd = fds[0] if fds else None
        if not data:
            if fd is not None:
                socket.close(fd)
            raise ChannelClosed("peer closed the control channel")
        header, payload = decode(data)
        return Message(header, payload, fd)

    def close(self) -> None:
        self._sock.close()
