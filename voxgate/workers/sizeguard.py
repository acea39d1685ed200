"""Refusing an over-size client message from its frame headers, before its payload is read.

A message engine that assembles whole messages (the translator's) learns that a message is
too big only while it reads and unmasks it: a 50 MiB message cost every other session of the
worker tens of milliseconds (issue 16 §6). `SizeGuard` sits on the raw byte stream in front
of that engine. It follows frame boundaries (headers only, payloads are counted, never
looked at) and stops the stream at the header of the frame that would take a message past
the limit: a single frame announcing too much, or the fragment that passes the limit.
Sans-IO: bytes in, the bytes the engine may see out.
"""

from __future__ import annotations

from voxgate.workers.frames import OP_CONT, parse_header

__all__ = ["SizeGuard"]


class SizeGuard:
    """Follows the client's frames; `tripped` once a message passes `limit` bytes."""

    __slots__ = ("limit", "tripped", "_rem", "_tail", "_msg_size")

    def __init__(self, limit: int, *, skip: int = 0) -> None:
        self.limit = limit
        self.tripped = False
        # Bytes to pass before the first frame (the request head, when the stream has it),
        # then payload bytes of the current frame not yet passed.
        self._rem = skip
        self._tail = b""  # an incomplete header
        self._msg_size = 0  # data bytes of the fragmented message so far

    def feed(self, data: bytes) -> bytes:
        """The part of `data` the message engine may read: all of it, or everything before
        the header of the frame that makes a message too large (then `tripped` is set and
        nothing more ever passes)."""
        if self.tripped:
            return b""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        pos = 0
        end = len(data)
        while pos < end:
            if self._rem:
                step = min(self._rem, end - pos)
                self._rem -= step
                pos += step
                continue
            header = parse_header(data, pos)
            if header is None:
                self._tail = data[pos:]
                return data[:pos]
            if header.opcode < 8:  # data frame: counts toward its message
                total = (self._msg_size if header.opcode == OP_CONT else 0) + header.length
                if total > self.limit:
                    self.tripped = True
                    return data[:pos]
                self._msg_size = 0 if header.fin else total
            self._rem = header.length
            pos += header.size
        return data
