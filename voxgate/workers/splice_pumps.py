"""The two directions of the splice (splice.py): what the frames read from one leg become on
the other. Each pump is a sans-IO step over `frameparser.FrameParser`: `frames(bytes read)`
returns (bytes for the other leg, control answers for the leg read, the event that stops
the direction or None); the session (`splice._Splice`) does every read, write and close.

- `ToUpstream` (client -> upstream): complete frames (bounded by `max_message_bytes`) are
  re-masked with a fresh gateway key in one XOR pass (client key XOR gateway key) and
  batched per read; a ping is answered toward the client and forwarded; the client
  observer sees whole text messages.
- `ToClient` (upstream -> client): server frames are unmasked, so the bytes go out as they
  are, streamed (a frame is forwarded while it arrives, never buffered whole); only control
  frames are cut out. Text payloads pass the key scrubber; the observer sees whole text
  messages and may inject frames right after one.

Both keep the measured fast paths: a read holding exactly one whole unfragmented message
skips the parse loop (`FrameParser.whole_message`); data frames come from the parser as
plain tuples (see frameparser.py); XOR re-masking as big-int below 448 B and numpy words
above (frames.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from voxgate.workers.closecodes import map_close_code, safe_reason
from voxgate.workers.frameparser import (
    CloseFrame,
    ControlFrame,
    FrameParser,
    MessageTooLarge,
    ProtocolViolation,
)
from voxgate.workers.frames import (
    OP_BINARY,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    MaskKeys,
    build_frame,
    build_masked_header,
    xor_mask_at,
)
from voxgate.workers.keyscrub import PIECE, KeyScrubber, generic_close_reason

if TYPE_CHECKING:
    from voxgate.workers.legs import Leg
    from voxgate.workers.splice import ClientObserver, SpliceStats, UpstreamObserver

__all__ = ["Pump", "ToUpstream", "ToClient", "MAX_OBSERVED_TEXT", "Stop"]

MAX_OBSERVED_TEXT = 1 << 20  # larger upstream text messages are forwarded but not observed

Stop = CloseFrame | ProtocolViolation | MessageTooLarge  # what ends a direction


class Pump:
    """One direction: frames read from `src` become bytes for `dst`."""

    name: str  # the leg read ("client" / "upstream"): names the session's end reasons
    violation_to_peer: tuple[int, str]  # our close toward `dst` when `src` breaks the protocol

    def __init__(self, src: Leg, dst: Leg, parser: FrameParser, keys: MaskKeys, stats: SpliceStats) -> None:
        self.src = src
        self.dst = dst
        self.parser = parser
        self.keys = keys
        self.stats = stats

    def frames(self, data: bytes) -> tuple[bytes | bytearray | None, bytearray | None, Stop | None]:
        raise NotImplementedError

    def wire_mid_message(self) -> bool:
        """Whether `dst`'s wire is inside a message we forward (nothing may be injected)."""
        raise NotImplementedError

    def peer_closed(self, code: int | None, reason: bytes) -> tuple[int | None, str]:
        """`src` sent its close (code None: no status): record it, and say what `dst` gets."""
        raise NotImplementedError


class ToUpstream(Pump):
    """Client -> upstream (see the module docstring)."""

    name = "client"
    violation_to_peer = (1000, "")

    def __init__(self, src: Leg, dst: Leg, keys: MaskKeys, stats: SpliceStats, *, max_message: int,
                 observer: ClientObserver | None, answers: list[bytes],
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(src, dst, FrameParser(masked=True, max_message=max_message), keys, stats)
        self.observer = observer
        self.answers = answers  # the observer's TEXT payloads for the client (the session sends them)
        self.obs: bytearray | None = None  # a fragmented text message being joined for the observer
        self.buf = bytearray()  # an incomplete frame
        # when the client last sent a data frame, kept only for the session's idle timer and
        # keepalive (with their `clock`: a clock read per read is not free)
        self.clock = clock
        self.last_data = clock() if clock is not None else 0.0

    def wire_mid_message(self) -> bool:
        op = self.parser.msg_op
        if op is None:
            return False
        # a text message joined for a rewriting observer goes out whole, at its last fragment
        return not (op == OP_TEXT and self.observer is not None and self.observer.rewrites)

    def peer_closed(self, code: int | None, reason: bytes) -> tuple[int | None, str]:
        self.stats.client_close_code = 1005 if code is None else code
        return map_close_code(code, toward="upstream"), safe_reason(reason)

    def frames(self, data: bytes) -> tuple[bytes | bytearray | None, bytearray | None, Stop | None]:
        buf = self.buf
        if buf:
            buf += data
            work: bytes | bytearray = buf
        else:
            work = data
        whole = self.parser.whole_message(work)
        if whole is not None:
            frame = self._data(work, whole)
            if work is buf:
                buf.clear()
            if self.clock is not None:
                self.last_data = self.clock()
            return frame, None, None
        out, down, pos, stop = self._loop(work)
        if stop is not None:
            return out, down, stop
        if work is buf:
            del buf[:pos]
        elif pos < len(work):
            self.buf = bytearray(memoryview(work)[pos:])
        return out, down, None

    def _loop(self, work: bytes | bytearray) -> tuple[bytes | None, bytearray | None, int, Stop | None]:
        """The complete frames in `work`: (re-masked frames for the upstream, control answers
        for the client, bytes consumed, the event that stops the direction or None)."""
        parser = self.parser
        up: list[bytes] = []
        down: bytearray | None = None
        pos = 0
        end = len(work)
        stop = None
        saw_data = False
        while pos < end:
            ev = parser.next(work, pos)
            if ev is None:
                break
            if type(ev) is tuple:
                saw_data = True
                pos = ev[2] + ev[3]
                frame = self._data(work, ev)
                if frame:
                    up.append(frame)
            elif type(ev) is ControlFrame:
                pos = ev.end
                if ev.opcode == OP_PING:
                    if down is None:
                        down = bytearray()
                    down += build_frame(OP_PONG, ev.payload)
                    up.append(build_frame(OP_PING, ev.payload, keys=self.keys))
                # pongs: dropped (P16)
            else:
                stop = _checked_close(ev)  # type: ignore[arg-type]
                break
        if saw_data:  # the idle timer restarts
            self._touch()
        return (b"".join(up) if up else None), down, pos, stop

    def _touch(self) -> None:
        if self.clock is not None:
            self.last_data = self.clock()

    def _data(self, work: bytes | bytearray, ev: tuple[int, int, int, int, int]) -> bytes:
        """One complete client data frame: the frame for the upstream (b"" when it is held to
        be joined for a rewriting observer)."""
        b0, msg_op, start, ln, cmask = ev
        stats = self.stats
        stats.frames_up += 1
        stats.bytes_up += ln
        fend = start + ln
        if msg_op == OP_BINARY:
            stats.binary_up += ln
        elif self.observer is not None:
            frame = self._watched(work, b0, start, fend, cmask)
            if frame is not None:
                return frame
        # Re-mask with a fresh gateway key in one pass: the payload is masked with the
        # client's key, so XOR with (client key ^ gateway key).
        key = self.keys.next32()
        frame = build_masked_header(b0, ln, key)
        if ln:
            frame += xor_mask_at(work, start, fend, cmask ^ key)
        return frame

    def _watched(self, work: bytes | bytearray, b0: int, start: int, fend: int, cmask: int) -> bytes | None:
        """A text frame the client observer sees: the frame to forward when the observer
        answers for it (a whole message, or any message when it `rewrites`; b"" while the
        fragments are joined), None to forward it re-masked as it is."""
        observer = self.observer
        assert observer is not None
        part = xor_mask_at(work, start, fend, cmask) if fend > start else b""
        fin = b0 & 0x80
        if not fin:
            self.obs = (self.obs or bytearray()) + part
            return b"" if observer.rewrites else None
        rewrites = observer.rewrites or self.obs is None
        whole = part if self.obs is None else bytes(self.obs + part)
        self.obs = None
        if rewrites:
            return self._observed(whole)
        self.answers.extend(observer.observe_client_text(whole)[1])
        return None

    def _observed(self, payload: bytes) -> bytes:
        """A complete client text message through the observer: the masked frame to forward
        (its replacement, when the observer gives one)."""
        assert self.observer is not None
        replacement, answers = self.observer.observe_client_text(payload)
        if answers:
            self.answers.extend(answers)
        return build_frame(OP_TEXT, payload if replacement is None else replacement, keys=self.keys)


def _checked_close(ev: Stop) -> Stop:
    """A client close reason must be UTF-8 (RFC 6455 §5.5.1)."""
    if type(ev) is CloseFrame:
        try:
            ev.reason.decode()
        except UnicodeDecodeError:
            return ProtocolViolation("invalid close frame")
    return ev


class ToClient(Pump):
    """Upstream -> client (see the module docstring)."""

    name = "upstream"
    violation_to_peer = (1011, "upstream error")

    def __init__(self, src: Leg, dst: Leg, keys: MaskKeys, stats: SpliceStats, *,
                 observer: UpstreamObserver | None, scrub: KeyScrubber | None) -> None:
        super().__init__(src, dst, FrameParser(masked=False, stream=True), keys, stats)
        self.observer = observer
        self.scrub = scrub
        self.rem = 0  # payload bytes still to stream for the current data frame
        self.fin = 0  # whether that frame ends its message
        self.op = 0  # that frame's message opcode
        self.watch = False  # whether its payload is scrubbed or observed (else just forwarded)
        self.obs: bytearray | None = None  # the text message being collected for the observer
        self.scrub_ctx = b""  # last key-piece context of the text message being forwarded
        self.tail = b""  # an incomplete header or control frame

    def wire_mid_message(self) -> bool:
        return self.rem > 0 or self.parser.msg_op is not None

    def peer_closed(self, code: int | None, reason: bytes) -> tuple[int | None, str]:
        self.stats.upstream_close_code = 1005 if code is None else code
        to_client = map_close_code(code, toward="client")
        return to_client, generic_close_reason(to_client, reason, self.scrub)

    def frames(self, data: bytes) -> tuple[bytes | bytearray | None, bytearray | None, Stop | None]:
        if self.tail:
            data = self.tail + data
            self.tail = b""
        elif not self.rem:
            whole = self.parser.whole_message(data)
            if whole is not None and (self.observer is None or whole[0] == 0x82):
                # The usual realtime read: exactly one whole unfragmented message, not observed.
                b0, _, size, ln, _ = whole
                stats = self.stats
                stats.frames_down += 1
                stats.bytes_down += ln
                if b0 == 0x82:
                    stats.binary_down += ln
                    if self.observer is not None:
                        self.observer.observe_binary()
                elif self.scrub is not None:
                    masked = self.scrub.mask(memoryview(data)[size:])
                    if masked is not None:
                        data = data[:size] + masked
                return data, None, None
        return self._loop(data)

    def _loop(self, data: bytes | bytearray) -> tuple[bytes | bytearray | None, bytearray | None, Stop | None]:
        """Split a chunk of upstream bytes: data frames forwarded as they are, also partially
        (runs of unchanged bytes as views of `data`), control frames cut out. The usual
        frame (a whole binary message) is accounted for inline: a call per frame costs."""
        mv = memoryview(data)
        n = len(data)
        pos = 0
        run = -1  # start of the current run of bytes forwarded unchanged
        out: list = []
        ctrl: bytearray | None = None
        stop = None
        parser = self.parser
        stats = self.stats
        while pos < n:
            rem = self.rem
            if rem:  # payload bytes of the current frame
                if run < 0:
                    run = pos
                if self.watch:
                    data, mv, pos, run = self._payload(out, data, mv, pos, n, run)
                elif n - pos >= rem:
                    pos += rem
                    self.rem = 0
                else:
                    self.rem = rem - (n - pos)
                    pos = n
                continue
            ev = parser.next(data, pos)
            if type(ev) is tuple:  # a data frame header, forwarded as it is
                if run < 0:
                    run = pos
                b0, msg_op, pos, ln, _ = ev
                stats.frames_down += 1
                stats.bytes_down += ln
                self.rem = ln
                if b0 == 0x82:  # a whole binary message: metered, its payload just forwarded
                    stats.binary_down += ln
                    self.fin = 0x80
                    self.watch = False
                    if self.observer is not None:
                        self.observer.observe_binary()
                else:
                    run = self._header(out, mv, b0, msg_op, pos, ln, run)
                continue
            if ev is None:
                self.tail = bytes(mv[pos:])
                break
            if run >= 0:
                out.append(mv[run:pos])
                run = -1
            if type(ev) is not ControlFrame:
                stop = ev
                break
            pos = ev.end
            if ev.opcode == OP_PING:
                ctrl = self._pong(ctrl, ev.payload)
            # pongs: dropped (P16)
        if run >= 0 and pos > run:
            out.append(data if run == 0 and pos == n else mv[run:pos])
        if not out:
            return None, ctrl, stop
        return (out[0] if len(out) == 1 else b"".join(out)), ctrl, stop

    def _pong(self, ctrl: bytearray | None, payload: bytes) -> bytearray:
        """The answer to an upstream ping, masked, added to the control answers of this read."""
        if ctrl is None:
            ctrl = bytearray()
        ctrl += build_frame(OP_PONG, payload, keys=self.keys)
        return ctrl

    def _header(self, out: list, mv: memoryview, b0: int, msg_op: int, start: int, ln: int, run: int) -> int:
        """Any other data frame header: message start (scrub context, observed text),
        metering, how its payload is streamed. Returns the run start."""
        observer = self.observer
        if b0 & 0x0F != OP_CONT:
            self.scrub_ctx = b""
            if msg_op == OP_TEXT and observer is not None and observer.wants_text:
                self.obs = bytearray()
        if msg_op == OP_BINARY:
            self.stats.binary_down += ln
            if observer is not None:
                observer.observe_binary()
        fin = b0 & 0x80
        self.fin = fin
        self.op = msg_op
        self.watch = self.obs is not None or (self.scrub is not None and msg_op == OP_TEXT)
        if ln == 0 and fin and self.obs is not None:
            run = self._observe(out, mv, run, start)
        return run

    def _payload(self, out: list, data: bytes | bytearray, mv: memoryview, pos: int, n: int,
                 run: int) -> tuple[bytes | bytearray, memoryview, int, int]:
        """Stream what has arrived of the current frame's payload (scrubbed, observed)."""
        take = min(n - pos, self.rem)
        if self.scrub is not None and self.op == OP_TEXT:
            data, mv = self._scrub_text(data, mv, pos, pos + take)
        obs = self.obs
        if obs is not None:
            if len(obs) + take <= MAX_OBSERVED_TEXT:
                obs += mv[pos : pos + take]
            else:
                self.obs = None
        pos += take
        self.rem -= take
        if not self.rem and self.fin and self.obs is not None:
            run = self._observe(out, mv, run, pos)
        return data, mv, pos, run

    def _scrub_text(self, data: bytes | bytearray, mv: memoryview, start: int, end: int) -> tuple[bytes | bytearray, memoryview]:
        """Mask key pieces in the text payload bytes data[start:end] (keyscrub.py); copies
        `data` only when it holds one. Returns the (possibly new) data and its view."""
        assert self.scrub is not None
        segment = mv[start:end]
        masked = self.scrub.mask(segment, self.scrub_ctx)
        keep = PIECE - 1
        self.scrub_ctx = bytes(segment[-keep:]) if len(segment) >= keep else (self.scrub_ctx + segment)[-keep:]
        if masked is not None:
            if type(data) is not bytearray:
                data = bytearray(data)
                mv = memoryview(data)
            mv[start:end] = masked
        return data, mv

    def _observe(self, out: list, mv: memoryview, run: int, pos: int) -> int:
        """A complete upstream text message was observed: inject the observer's frames right
        after it. Returns the new run start."""
        obs = self.obs
        self.obs = None
        assert self.observer is not None and obs is not None
        inject = self.observer.observe_text(bytes(obs))
        if inject:
            if run >= 0:
                out.append(mv[run:pos])
            out.extend(build_frame(OP_TEXT, p) for p in inject)
            return -1
        return run
