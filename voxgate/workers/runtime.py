"""What every worker process runs: receive handed-off sockets, run one session per socket in
its own nursery, send heartbeats, drain on request, die with the supervisor.

A provider package supplies only a table of route handlers (`async def handler(session)`);
everything else - control channel, accept bookkeeping, counters, drain - lives here.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from voxgate import logs
from voxgate.config import Config
from voxgate.control import CONTROL_FD_ENV, Channel, ChannelClosed
from voxgate.workers.handshake import ClientHandshake
from voxgate.workers.usage import TOKEN_KINDS, Usage

CLOSE_AFTER_SHUTDOWN = 3.0
REPORTS_PER_MESSAGE = 200  # session reports per control message (bounded datagram size)


@dataclass
class WorkerCounters:
    """Counts since the last heartbeat; each heartbeat ships them and starts afresh, so the
    supervisor can keep monotonic totals across worker restarts."""

    sessions_total: Counter = field(default_factory=Counter)  # route -> count
    frames: Counter = field(default_factory=Counter)  # "route|up" / "route|down" -> frames
    bytes: Counter = field(default_factory=Counter)
    closes: Counter = field(default_factory=Counter)  # "leg|code" -> count
    upstream_failures: Counter = field(default_factory=Counter)  # kind -> count
    connect_seconds: list[float] = field(default_factory=list)  # recent upstream connect latencies

    def take(self) -> dict[str, Any]:
        """The deltas since the previous call, as plain JSON-able dicts."""
        out = {
            "sessions_total": dict(self.sessions_total),
            "frames": dict(self.frames),
            "bytes": dict(self.bytes),
            "closes": dict(self.closes),
            "upstream_failures": dict(self.upstream_failures),
            "connect_seconds": self.connect_seconds,
        }
        for counter in (self.sessions_total, self.frames, self.bytes, self.closes, self.upstream_failures):
            counter.clear()
        self.connect_seconds = []
        return out


@dataclass
class Session:
    """One client connection inside a worker, as a route handler sees it."""

    sid: str
    route: str
    peer: str
    trace: str
    stream: trio.SocketStream
    handshake: ClientHandshake | None  # None for a plain HTTP route (`handler.plain_http`)
    config: Config
    log: logs.EventLog
    counters: WorkerCounters
    preread: bytes = b""  # every byte the supervisor read, request head included
    tls: bool = False  # the client reached the supervisor over TLS (plain HTTP routes add HSTS)
    shutdown: trio.Event = field(default_factory=trio.Event)
    summary: dict[str, Any] = field(default_factory=dict)  # handler fills: codes, frames, bytes
    # (frames_up, frames_down, bytes_up, bytes_down) so far; set by the handler so traffic
    # shows in /metrics while the session runs, not only when it ends
    traffic: Callable[[], tuple[int, int, int, int]] | None = None
    connect_latency: Callable[[], float | None] | None = None
    usage: Usage = field(default_factory=Usage)
    token_label: str | None = None  # the client token's label (never the token)
    stop_reason: str = "shutting_down"  # why `shutdown` was set: a gateway limit code
    _reported: tuple[int, int, int, int] = (0, 0, 0, 0)
    _latency_reported: bool = False
    _last_report: dict[str, Any] | None = None

    def stop(self, reason: str) -> None:
        """End the session from outside (drain, operator kill, budget): the handler sends the
        client what `reason` calls for and closes both legs."""
        if not self.shutdown.is_set():
            self.stop_reason = reason
            self.shutdown.set()

    def report(self) -> dict[str, Any]:
        """Traffic and usage so far, for the supervisor's session registry."""
        traffic = self.traffic() if self.traffic is not None else (0, 0, 0, 0)
        return {"traffic": list(traffic), "usage": self.usage.snapshot()}

    def changed_report(self) -> dict[str, Any] | None:
        """`report()` when it differs from the last one sent, else None."""
        now = self.report()
        if now == self._last_report:
            return None
        self._last_report = now
        return now

    def fold_traffic(self) -> None:
        """Add the traffic since the last fold (and the connect latency, once) to the counters."""
        if not self._latency_reported and self.connect_latency is not None:
            latency = self.connect_latency()
            if latency is not None:
                self.counters.connect_seconds.append(latency)
                self._latency_reported = True
        if self.traffic is None:
            return
        now = self.traffic()
        last = self._reported
        self._reported = now
        route = self.route
        self.counters.frames[f"{route}|up"] += now[0] - last[0]
        self.counters.frames[f"{route}|down"] += now[1] - last[1]
        self.counters.bytes[f"{route}|up"] += now[2] - last[2]
        self.counters.bytes[f"{route}|down"] += now[3] - last[3]


Handler = Callable[[Session], Awaitable[None]]


class Worker:
    """The worker process main loop."""

    def __init__(self, provider: str, handlers: dict[str, Handler]) -> None:
        self.provider = provider
        self.handlers = handlers
        self.config = Config.for_worker(provider)
        self.worker_id = os.environ.get("VOXGATE_WORKER_ID", provider)
        self.log = logs.setup(f"worker.{provider}", level=self.config.log_level, fmt=self.config.log_format)
        logs.register_secret(self.config.key_for(provider))
        self.counters = WorkerCounters()
        self.sessions: dict[str, Session] = {}
        self.draining = False
        self._idle = trio.Event()

    async def main(self) -> None:
        fd = int(os.environ[CONTROL_FD_ENV])
        channel = Channel(socket.socket(fileno=fd))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._heartbeat, channel)
            nursery.start_soon(self._signals)
            await channel.send({"t": "ready", "pid": os.getpid()})
            try:
                while True:
                    msg = await channel.receive()
                    kind = msg.header.get("t")
                    if kind == "conn" and msg.fd is not None:
                        # Say at once whether we took the socket: until then the supervisor
                        # keeps its copy, so a socket never dies unanswered with a worker.
                        sid = msg.header.get("sid", "")
                        if self.draining:
                            os.close(msg.fd)
                            await channel.send({"t": "refused", "sid": sid})
                            continue
                        nursery.start_soon(self._session, channel, msg.header, msg.payload, msg.fd)
                        await channel.send({"t": "took", "sid": sid})
                    elif kind == "drain":
                        nursery.start_soon(self.drain, float(msg.header.get("grace", self.config.grace)))
                    elif kind == "stop":
                        session = self.sessions.get(str(msg.header.get("sid", "")))
                        if session is not None:
                            session.stop(str(msg.header.get("reason", "terminated")))
            except ChannelClosed:
                # The supervisor is gone: nothing may outlive it.
                self.log.warning("supervisor gone, exiting")
                nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                await self.drain(self.config.grace)

    async def _heartbeat(self, channel: Channel) -> None:
        parent = os.getppid()
        while True:
            await trio.sleep(self.config.heartbeat_interval)
            if os.getppid() != parent:
                # Re-parented: the supervisor died without closing the channel cleanly.
                # (A parent-death signal is no use here: it follows the spawning thread,
                # and trio spawns from short-lived helper threads.)
                self.log.warning("supervisor gone, exiting")
                os._exit(0)
            reports = {}
            for sid, session in self.sessions.items():
                session.fold_traffic()
                report = session.changed_report()
                if report is not None:
                    reports[sid] = report
            try:
                await channel.send(
                    {"t": "hb", "active": len(self.sessions), "stats": self.counters.take()}
                )
                items = list(reports.items())
                for i in range(0, len(items), REPORTS_PER_MESSAGE):
                    await channel.send({"t": "sessions", "reports": dict(items[i : i + REPORTS_PER_MESSAGE])})
            except ChannelClosed:
                return

    async def drain(self, grace: float) -> None:
        """Finish sessions within `grace`, then close what is left with 1001 and exit."""
        if self.draining:
            return
        self.draining = True
        self.log.info("draining", worker=self.worker_id, sessions=len(self.sessions), grace=f"{grace:g}s")
        with trio.move_on_after(grace):
            while self.sessions:
                await self._idle.wait()
        for session in list(self.sessions.values()):
            session.stop("shutting_down")
        with trio.move_on_after(CLOSE_AFTER_SHUTDOWN):
            while self.sessions:
                await self._idle.wait()
        self.log.info("drained", worker=self.worker_id)
        self._nursery.cancel_scope.cancel()

    async def _session(self, channel: Channel, header: dict[str, Any], pre: bytes, fd: int) -> None:
        sid = str(header.get("sid", ""))
        route = str(header.get("route", ""))
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        log = self.log.bind(sid=sid, trace=header.get("trace", sid))
        try:
            handler = self.handlers[route]
            handshake = (
                None if getattr(handler, "plain_http", False)
                else ClientHandshake(pre, int(header.get("head_len", len(pre))))
            )
        except (ValueError, KeyError):
            log.warning("session refused", route=route, reason="invalid hand-off")
            await trio.aclose_forcefully(stream)
            await self._ended(channel, sid, route, {})
            return
        session = Session(
            sid=sid, route=route, peer=str(header.get("peer", "")), trace=str(header.get("trace", sid)),
            stream=stream, handshake=handshake, config=self.config, log=log, counters=self.counters,
            preread=pre, tls=bool(header.get("tls", False)), token_label=header.get("label"),
        )
        self.sessions[sid] = session
        self.counters.sessions_total[route] += 1
        started = trio.current_time()
        try:
            async with trio.open_nursery() as timers:
                deadline = header.get("max_seconds")
                if isinstance(deadline, int | float) and deadline > 0:
                    timers.start_soon(_stop_after, session, float(deadline), "budget_exhausted")
                await handler(session)
                timers.cancel_scope.cancel()
        except Exception as exc:  # noqa: BLE001 - one session must never take the worker down
            log.error("session failed", route=route, error=exc.__class__.__name__)
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
                session.fold_traffic()
                del self.sessions[sid]
                self._idle.set()
                self._idle = trio.Event()
                session.summary["duration"] = round(trio.current_time() - started, 3)
                report = session.report()
                log.info("session closed", route=route, **session.summary, **usage_fields(report["usage"]),
                         suppressed=log.suppressed() or None)
                await self._ended(channel, sid, route, report)

    async def _ended(self, channel: Channel, sid: str, route: str, report: dict[str, Any]) -> None:
        try:
            await channel.send({"t": "end", "sid": sid, "route": route, "report": report})
        except ChannelClosed:
            pass


async def _stop_after(session: Session, seconds: float, reason: str) -> None:
    await trio.sleep(seconds)
    session.log.info("session budget reached", limit="max_session_seconds")
    session.stop(reason)


def usage_fields(usage: dict[str, Any]) -> dict[str, Any]:
    """The usage of a finished session as `session closed` fields (only what it used)."""
    out: dict[str, Any] = {}
    for direction in ("up", "down"):
        seconds = usage["audio_seconds"][direction]
        if seconds is not None:
            out[f"audio_{direction}_s"] = seconds
        if usage["audio_bytes"][direction]:
            out[f"audio_{direction}_bytes"] = usage["audio_bytes"][direction]
    tokens = usage["tokens"]
    if any(tokens.values()):
        out["tokens_in"] = tokens["input"]
        out["tokens_out"] = tokens["output"]
        out.update({f"tokens_{kind}": tokens[kind] for kind in TOKEN_KINDS if tokens[kind]})
    if usage["characters"]:
        out["characters"] = usage["characters"]
    return out


GC_THRESHOLDS = (20_000, 50, 100)


def tune_gc() -> None:
    """Keep the collector off the latency path: everything alive after start-up (modules,
    config) is frozen out of collections, and young collections run far less often. The
    defaults made a worker under load run a full collection every ~2 s that scanned ~70k
    long-lived objects for 13-20 ms and freed nothing (voxgate/bench/PROFILE.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run(provider: str, handlers: dict[str, Handler]) -> None:
    """Entry point of `python -m voxgate.workers.<provider>`."""
    worker = Worker(provider, handlers)
    tune_gc()
    try:
        trio.run(worker.main)
    except KeyboardInterrupt:
        pass
