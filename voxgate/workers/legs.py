"""The two legs of a relayed session and when their TCP may close, shared by both relays on
the data plane (the splice and the translator): each leg's closing-handshake state, and the
one rule that releases a leg's connection once both directions are closed and its output
is flushed."""

from __future__ import annotations

import trio

from voxgate.workers.dataplane import Conn

__all__ = ["Leg", "LegPair"]


class Leg:
    """One side of a relayed session."""

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.out_closed = False  # our close was sent (or nothing can be sent any more)
        self.in_closed = False  # nothing more to read (peer's close, EOF, or given up)
        self.draining = False  # its byte stream cannot be parsed: read and discard until EOF
        self.released = False  # its TCP close was started

    def finished(self) -> bool:
        return self.in_closed and self.out_closed and (self.conn is None or self.conn.flushed())


class LegPair:
    """A session with a client leg `c` and an upstream leg `up`, served in `nursery`;
    `all_done` is set once both legs are released."""

    c: Leg
    up: Leg
    nursery: trio.Nursery
    all_done: trio.Event

    def _write_close(self, leg: Leg, conn: Conn, frame: bytes) -> None:
        """Queue our close frame on `leg`; a leg being drained then gets EOF once it is out."""
        conn.write(frame)
        if conn.broken:
            leg.in_closed = True
        elif leg.draining:
            conn.shutdown_after_flush()
        self._check()

    def _check(self) -> None:
        """Close the TCP of each leg whose closing handshake is over (and flushed)."""
        done = True
        for leg in (self.c, self.up):
            if leg.finished():
                if not leg.released:
                    leg.released = True
                    if leg.conn is not None:
                        self.nursery.start_soon(leg.conn.aclose)
            else:
                done = False
        if done:
            self.all_done.set()
