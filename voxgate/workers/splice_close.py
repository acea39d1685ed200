"""The closing handshake of a splice session (splice.py), and the legs it closes.

After the session ends each leg gets our close, the peer's close is awaited for at most
splice.CLOSE_TIMEOUT, then TCP is closed; a leg whose byte stream can no longer be parsed
(protocol error, oversized message, internal error) is half-closed and drained instead.
Toward the client our close waits for the end of a streamed upstream frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from voxgate.workers.frameparser import CloseFrame, MessageTooLarge
from voxgate.workers.frames import OP_CLOSE, OP_TEXT, MaskKeys, build_close_payload, build_frame
from voxgate.workers.legs import Leg, LegPair
from voxgate.workers.limits import LIMITS
from voxgate.workers.splice_pumps import Pump, Stop, ToClient

if TYPE_CHECKING:
    from voxgate.workers.splice import SplicePolicy, SpliceStats

__all__ = ["SpliceLeg", "ClosingHandshake"]


class SpliceLeg(Leg):
    """A leg of a splice session."""

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


class ClosingHandshake(LegPair):
    """The closing-handshake half of `splice._Splice`: every way a session ends (a peer's
    close, EOF, a drop, a protocol violation, a limit, a fault) and the close frames that
    follow, each leg's once. The session provides the pumps, backpressure (`_flow`) and the
    write path (`_write`, `_flush_control`)."""

    c: SpliceLeg
    up: SpliceLeg
    to_client: ToClient
    policy: SplicePolicy
    stats: SpliceStats
    keys: MaskKeys
    closing: trio.Event
    connect_scope: trio.CancelScope
    pending: list[bytes | bytearray]
    pending_bytes: int
    c_close_pending: tuple | None  # our client close, waiting for a frame's end

    def _flow(self) -> None:
        raise NotImplementedError

    def _flush_control(self, leg: SpliceLeg, force: bool = False) -> None:
        raise NotImplementedError

    def _fault(self, reads: SpliceLeg | None, exc: BaseException | None = None) -> None:
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

    def _client_boundary(self) -> None:
        """The client wire is at a frame boundary again: what waited for it goes out."""
        c = self.c
        if c.ctrl:
            self._flush_control(c)
        pending = self.c_close_pending
        if pending is not None:
            self.c_close_pending = None
            self._close_leg(c, *pending)

    def _stop(self, pump: Pump, ev: Stop) -> None:
        """The event that ends a direction: its source's close, a message over the limit, or
        a protocol violation (the rest of that byte stream cannot be parsed)."""
        src, dst = pump.src, pump.dst
        if type(ev) is CloseFrame:
            src.in_closed = True
            to_dst = pump.peer_closed(ev.code, ev.reason)
            if src.out_closed:  # the reply to our close
                self._check()
                return
            self._end(src.name + "_closed")
            self._close_leg(dst, *to_dst)
            self._close_leg(src, ev.code, "")  # echo the peer's code (RFC 6455 §5.5.1)
            return
        if type(ev) is MessageTooLarge:
            self._too_large(src)
            return
        if self._end("protocol_error:" + src.name):
            self._close_leg(dst, *pump.violation_to_peer)
        self._close_leg(src, 1002, "protocol error")
        if not src.in_closed:
            self._drain(src)

    def _too_large(self, src: SpliceLeg) -> None:
        """A client message over max_message_bytes, refused from its header: the payload is
        never read, not even to drain it (issue 16 §6); TCP is closed once our close is out."""
        limit = "message_too_large"
        inject = None
        if self._end("limit:" + limit):
            inject = self._limit_frames(limit)
            self._close_leg(self.up, LIMITS[limit].upstream_close, limit)
        self._close_leg(src, LIMITS[limit].client_close, limit, inject)
        src.in_closed = True
        self._flow()
        self._check()

    def _close_leg(self, leg: SpliceLeg, code: int | None, reason: str, inject: list[bytes] | None = None) -> None:
        """Send our close frame on `leg` once (after `inject` text frames toward the client,
        when its wire is at a message boundary). `code` None sends a close without status.
        Toward a client whose wire is inside a streamed frame, it waits for that frame's end."""
        if leg.out_closed:
            return
        if leg is self.up and leg.conn is None:
            self._abandon_upstream()
            return
        if leg is self.c and self.to_client.rem and not leg.broken:
            if self.c_close_pending is None:
                self.c_close_pending = (code, reason, inject)
            return
        if leg.broken:
            leg.dead()
            self._check()
            return
        conn = leg.conn
        assert conn is not None
        if leg.ctrl:
            self._flush_control(leg, force=True)
        leg.out_closed = True
        payload = build_close_payload(code, reason)
        if leg is self.c:
            frame = build_frame(OP_CLOSE, payload)
            if inject and not self.to_client.wire_mid_message():
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

    def _on_client_eof(self) -> None:
        c = self.c
        if c.draining:
            c.in_closed = True
            self._check()
        elif not c.in_closed:
            self._client_dropped()

    def _on_up_eof(self) -> None:
        up = self.up
        if up.draining:
            up.in_closed = True
            self._check()
            return
        if up.in_closed:
            return
        if self.to_client.rem:
            self.c.broken = True  # a frame was cut: the client can only get a TCP close
            self.to_client.rem = 0
            if self.c_close_pending is not None:
                self._client_boundary()
        self._upstream_dropped()

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

    def _drain(self, leg: SpliceLeg) -> None:
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
