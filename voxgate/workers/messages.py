"""Complete messages out of one leg's byte stream, for the translator (sans-IO).

Frames come from the shared `frameparser.FrameParser` (the same rules as the splice);
this layer joins fragments, decodes text (so checks UTF-8, which the translator's core needs
for the JSON) and turns a stream that cannot go on into the close code the translator sends.
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.workers.frameparser import CloseFrame, ControlFrame, FrameParser, MessageTooLarge
from voxgate.workers.frames import OP_PING, OP_TEXT, xor_mask_at

__all__ = [
    "BinaryMessage",
    "Message",
    "MessageReader",
    "PeerClosed",
    "Ping",
    "StreamFailed",
    "TextMessage",
]


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A whole text message, decoded."""

    text: str


@dataclass(frozen=True, slots=True)
class BinaryMessage:
    """A whole binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping; the session answers it with a pong carrying `payload`."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PeerClosed:
    """The peer's close frame (`code` None when it carried no status). Nothing follows."""

    code: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class StreamFailed:
    """The stream cannot be read any further: close the leg with `code` (1002 protocol error,
    1007 invalid UTF-8, 1009 message too large). Nothing follows."""

    code: int
    reason: str


Message = TextMessage | BinaryMessage | Ping | PeerClosed | StreamFailed


class MessageReader:
    """`feed(bytes)` returns the `Message`s completed by those bytes, in arrival order:
    `TextMessage`, `BinaryMessage`, `Ping`, and last `PeerClosed` or `StreamFailed` (a message
    over `max_message` is refused from its frame header, so it is never buffered). After
    either of those it returns nothing more. Pongs are dropped. `masked` is what the peer must
    do (True for a client leg)."""

    __slots__ = ("parser", "buf", "parts", "done")

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self.parser = FrameParser(masked=masked, max_message=max_message)
        self.buf = bytearray()
        self.parts: list[bytes] = []
        self.done = False

    @property
    def masked(self) -> bool:
        return self.parser.masked

    def feed(self, data: bytes | bytearray) -> list[Message]:
        if self.done:
            return []
        buf = self.buf
        if buf:
            buf += data
            work: bytes | bytearray = buf
        else:
            work = data
        events: list[Message] = []
        parser = self.parser
        pos = 0
        end = len(work)
        while pos < end:
            ev = parser.next(work, pos)
            if ev is None:
                break
            if type(ev) is tuple:
                b0, msg_op, start, ln, key = ev
                pos = start + ln
                if not ln:
                    payload = b""
                elif key:
                    payload = xor_mask_at(work, start, pos, key)
                else:
                    payload = bytes(work[start:pos])
                if not self._data(events, b0 & 0x80, msg_op, payload):
                    return events
            elif type(ev) is ControlFrame:
                pos = ev.end
                if ev.opcode == OP_PING:
                    events.append(Ping(ev.payload))
                # pongs: dropped
            else:
                self._last(events, ev)  # type: ignore[arg-type]
                return events
        if work is buf:
            del buf[:pos]
        elif pos < end:
            self.buf = bytearray(memoryview(work)[pos:])
        return events

    def _data(self, events: list[Message], fin: int, msg_op: int, payload: bytes) -> bool:
        """One data frame's payload; a finished message goes to `events`. False when the
        stream has failed (invalid UTF-8)."""
        if not fin:
            self.parts.append(payload)
            return True
        if self.parts:
            self.parts.append(payload)
            payload = b"".join(self.parts)
            self.parts = []
        if msg_op != OP_TEXT:
            events.append(BinaryMessage(payload))
            return True
        try:
            events.append(TextMessage(payload.decode()))
        except UnicodeDecodeError:
            self._fail(events, 1007, "invalid UTF-8")
            return False
        return True

    def _last(self, events: list[Message], ev: object) -> None:
        """The event that ends the stream: the peer's close, or why it cannot be parsed."""
        if type(ev) is CloseFrame:
            try:
                self._stop(events, PeerClosed(ev.code, ev.reason.decode()))
            except UnicodeDecodeError:
                self._fail(events, 1007, "invalid UTF-8")
        elif type(ev) is MessageTooLarge:
            self._fail(events, 1009, "message too large")
        else:
            self._fail(events, 1002, "protocol error")

    def _fail(self, events: list[Message], code: int, reason: str) -> None:
        self._stop(events, StreamFailed(code, reason))

    def _stop(self, events: list[Message], last: PeerClosed | StreamFailed) -> None:
        """Nothing is read after `last`."""
        self.done = True
        self.buf = bytearray()
        self.parts = []
        events.append(last)
