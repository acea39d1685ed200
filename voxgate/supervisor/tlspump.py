"""The supervisor's TLS pump on the data plane.

With `--tls-cert` the supervisor terminates TLS (a TLS session cannot move to a worker) and
moves every byte of a `wss://` session between the client's socket and the worker's end of a
socket pair. Two trio tasks per session doing `receive_some`/`send_all` cost a scheduler pass
per frame and direction, which made the supervisor use about twice the CPU of the worker it
feeds (`voxgate bench --scenario wss`). Here both sockets are conns of the process's readiness
loop (`workers/dataplane.py`) and the TLS record layer runs inside the loop through the
`ssl.SSLObject` and memory BIOs of the handshake's `trio.SSLStream`: no wake-up per frame.
After the pump, the stream is closed by its owner as before (close_notify through trio).
"""

from __future__ import annotations

import ssl

import trio

from voxgate.workers.dataplane import HIGH_WATER, FdConn, plane

__all__ = ["pump_tls"]

DRAIN_SECONDS = 1.0  # what is queued toward either side may take this long to leave


class _TlsPump:
    def __init__(self, tls: trio.SSLStream, tcp: trio.SocketStream, inside: trio.SocketStream) -> None:
        # The handshake's TLS state: the record layer continues on the same objects.
        self.obj: ssl.SSLObject = tls._ssl_object  # noqa: SLF001
        self.incoming: ssl.MemoryBIO = tls._incoming  # noqa: SLF001
        self.outgoing: ssl.MemoryBIO = tls._outgoing  # noqa: SLF001
        dp = plane()
        self.outside = FdConn(dp, tcp)
        self.inside = FdConn(dp, inside)
        for conn, on_data in ((self.outside, self._from_client), (self.inside, self._from_worker)):
            conn.on_data = on_data
            conn.on_eof = conn.on_error = self._finish
            conn.on_drained = self._drained
            conn.on_fault = self._fault
        self.done = trio.Event()
        self.flushed = trio.Event()
        # TLS 1.3 session tickets trio holds back until the first application data it sends
        # (trio issue 819); they must precede our first record.
        self.held: bytes | None = tls._delayed_outgoing  # noqa: SLF001
        tls._delayed_outgoing = None  # noqa: SLF001

    def start(self) -> None:
        if self.held:
            self.outside.write(self.held)
        self._decrypt()  # records the handshake's reads already took in
        self._flow()

    def _from_client(self, raw: bytes) -> None:
        self.incoming.write(raw)
        self._decrypt()
        self._flow()

    def _decrypt(self) -> None:
        parts = []
        while True:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLError, ValueError):  # close_notify, a broken record, a closed object
                self._finish()
                break
            if not chunk:
                self._finish()
                break
            parts.append(chunk)
        if parts:
            self.inside.write(parts[0] if len(parts) == 1 else b"".join(parts))
        self._send_records()

    def _from_worker(self, plain: bytes) -> None:
        try:
            self.obj.write(plain)
        except (ssl.SSLError, ValueError):
            self._finish()
            return
        self._send_records()
        self._flow()

    def _send_records(self) -> None:
        if self.outgoing.pending:
            self.outside.write(self.outgoing.read())

    def _flow(self) -> None:
        """A side is not read while the other side's queue is over HIGH_WATER."""
        if self.done.is_set():
            return
        for source, sink in ((self.outside, self.inside), (self.inside, self.outside)):
            if sink.out_bytes > HIGH_WATER:
                source.pause()
            else:
                source.resume()

    def _drained(self) -> None:
        self._flow()
        if self.done.is_set() and self.outside.flushed() and self.inside.flushed():
            self.flushed.set()

    def _finish(self) -> None:
        """Either side ended: stop reading both; what is queued still leaves."""
        self.done.set()
        self.outside.pause()
        self.inside.pause()
        if self.outside.flushed() and self.inside.flushed():
            self.flushed.set()

    def _fault(self, exc: BaseException) -> None:
        self._finish()


async def pump_tls(tls: trio.SSLStream, tcp: trio.SocketStream, inside: trio.SocketStream) -> None:
    """Pump between the TLS client and the worker until either side ends (see the module
    docstring). Leaves both streams open for their owner to close."""
    pump = _TlsPump(tls, tcp, inside)
    try:
        pump.start()
        await pump.done.wait()
        with trio.move_on_after(DRAIN_SECONDS):
            await pump.flushed.wait()
    finally:
        pump.outside.detach()
        pump.inside.detach()
