"""The supervisor: the arbiter of one listening port, read top to bottom like gunicorn's.

`run` starts the shared store, the worker pools (supervisor/workers.py: spawn, watch, restart)
and the listener; then the signal loop: SIGHUP rolls the workers, SIGTERM or SIGINT drains
(a second SIGINT halts at once). Per connection: a bounded request head, then either a plain
HTTP answer (supervisor/endpoints.py) or admission and a hand-off of the connected socket to a
provider worker. Last, the bookkeeping of live sessions (reports, budgets, stops).

After a hand-off the supervisor closes its copy of the socket and is out of the data path:
it never parses a WebSocket frame.
"""

from __future__ import annotations

import signal
import socket
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

import trio

from voxgate.config import KEY_VARS, Config
from voxgate.control import ChannelClosed
from voxgate.http_response import response
from voxgate.logs import EventLog
from voxgate.supervisor import endpoints
from voxgate.supervisor.admission import Admission, AdmissionConfig, Budget, TokenInfo
from voxgate.supervisor.http import Head, HeadError, read_head
from voxgate.supervisor.metrics import Metrics
from voxgate.supervisor.page import Refusals, load_page
from voxgate.supervisor.routing import Route, Router, first_value, split_target
from voxgate.supervisor.sessions import SessionRef, Spent, exhausted
from voxgate.supervisor.store import LocalStore, Ticket
from voxgate.supervisor.tlspump import pump_tls
from voxgate.supervisor.workers import ProviderPool, Worker

HANDOFF_ATTEMPTS = 3
MAX_POST_BODY = 64 << 10
"""A POST body is read whole before the hand-off (token requests; WebRTC SDP offers, which
with a session configuration run to a few KiB)."""


def make_store(server: Supervisor) -> LocalStore:
    """In-process unless --redis-url names a Redis shared with other instances."""
    if not server.config.redis_url:
        return LocalStore(server)
    from voxgate.supervisor.redis_store import RedisStore

    return RedisStore(server)


async def _close(stream: trio.abc.Stream) -> None:
    """Close politely (TLS close_notify) within a second, else forcefully."""
    with trio.move_on_after(1):
        try:
            await stream.aclose()
            return
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
    await trio.aclose_forcefully(stream)


def _socket_pair() -> tuple[trio.SocketStream, socket.socket]:
    """(our trio end, the plain end to hand to a worker) of an AF_UNIX stream pair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(ours)), theirs


class Supervisor:
    """Owns the listener, the worker pools and the per-connection decision."""

    def __init__(self, config: Config, log: EventLog) -> None:
        self.config = config
        self.log = log
        self.router = Router(config.proxy_path)
        self.metrics = Metrics()
        self.pools: dict[str, ProviderPool] = {
            provider: ProviderPool(
                provider, config, log,
                on_restart=lambda p: self.metrics.restarts.labels(p).inc(),
                on_heartbeat=self.metrics.fold_heartbeat,
                on_report=self.on_report,
                on_end=lambda ref: self.store.ended(ref),
            )
            for provider in config.enabled_providers
        }
        self.draining = False
        self.rolling = False
        self.ssl_context: ssl.SSLContext | None = None
        if config.tls_cert and config.tls_key:
            self.ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
        self.tls = self.ssl_context is not None
        self.page = load_page() if config.demo_page else {}
        self.refusals = Refusals()
        self.port = config.port
        self.admission = Admission(
            AdmissionConfig(
                allowed_origins=config.allowed_origins,
                client_tokens=config.client_tokens,
                token_secret=config.token_secret,
                max_sessions=config.max_sessions,
                max_sessions_per_ip=config.max_sessions_per_ip,
                max_new_sessions_per_ip_per_minute=config.max_new_sessions_per_ip_per_minute,
                trust_proxy_headers=config.trust_proxy_headers,
                static_budget=Budget(
                    max_sessions=config.token_max_sessions,
                    max_session_seconds=config.token_max_session_seconds,
                    max_audio_seconds=config.token_max_audio_seconds,
                    max_tokens=config.token_max_tokens,
                ),
            )
        )
        self.store = make_store(self)
        self._nursery: trio.Nursery | None = None
        for provider in self.pools:
            self.metrics.restarts.labels(provider)
        for reason in ("origin", "token_missing", "token_invalid", "global_sessions", "ip_sessions", "ip_rate",
                       "draining", "admin_token", "budget", "redis_unavailable"):
            self.metrics.rejections.labels(reason)

    # -- start, signals, drain ------------------------------------------------------------

    async def run(self, listeners: list[trio.SocketListener], task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self.store.run)
            for pool in self.pools.values():
                nursery.start_soon(pool.run)
            serve_scope = trio.CancelScope()
            nursery.start_soon(self._serve, listeners, serve_scope)
            task_status.started()
            await self._signals(serve_scope, nursery.cancel_scope)

    async def _serve(self, listeners: list[trio.SocketListener], scope: trio.CancelScope) -> None:
        with scope:
            await trio.serve_listeners(self.handle, listeners)

    async def _signals(self, serve_scope: trio.CancelScope, all_scope: trio.CancelScope) -> None:
        """SIGHUP rolls the workers until SIGTERM/SIGINT starts the drain; a second SIGINT
        during the drain halts at once."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            await self._until_stop(signals)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, serve_scope, all_scope)
                async for signum in signals:
                    if signum == signal.SIGINT:
                        self.halt(all_scope)
                        return

    async def _until_stop(self, signals: AsyncIterator[int]) -> None:
        """Serve SIGHUP (one roll at a time) until SIGTERM or SIGINT, which cancels a roll."""
        async with trio.open_nursery() as rolls:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    self.log.info("shutting down", signal=signal.Signals(signum).name, grace=f"{self.config.grace:g}s")
                    rolls.cancel_scope.cancel()
                    return
                if not self.rolling:
                    rolls.start_soon(self.roll)

    async def roll(self) -> None:
        """Re-exec workers one at a time, without dropping the listener or live sessions."""
        self.rolling = True
        try:
            self.log.info("rolling workers")
            for provider, pool in self.pools.items():
                replaced = await pool.roll()
                self.log.info("workers rolled", provider=provider, replaced=replaced)
        finally:
            self.rolling = False

    async def _drain(self, serve_scope: trio.CancelScope, all_scope: trio.CancelScope) -> None:
        # The listener stays open while sessions drain: /readyz answers 503 so a load
        # balancer stops sending, and new upgrades get 503 + Retry-After.
        self.draining = True
        for pool in self.pools.values():
            await pool.drain(self.config.grace)
        with trio.move_on_after(self.config.grace + 5):
            for pool in self.pools.values():
                await pool.wait_stopped()
        serve_scope.cancel()
        for pool in self.pools.values():
            pool.kill()
        self.log.info("stopped")
        all_scope.cancel()

    def halt(self, all_scope: trio.CancelScope) -> None:
        """A second interrupt: kill every worker and leave now."""
        self.log.warning("second interrupt, exiting now")
        for pool in self.pools.values():
            pool.kill()
        all_scope.cancel()

    # -- connections ----------------------------------------------------------------------

    async def handle(self, tcp: trio.SocketStream) -> None:
        """One accepted connection; never raises (a bad client must not hurt the listener).

        Plain TCP: after a hand-off the worker owns the socket and our copy is closed.
        TLS: a TLS session cannot move between processes, so the worker gets one end of a
        socket pair and the data plane pumps decrypted bytes until either side closes
        (tlspump.py)."""
        stream: trio.abc.Stream = tcp
        if self.ssl_context is not None:
            stream = trio.SSLStream(tcp, self.ssl_context, server_side=True, https_compatible=True)
        handed_off: trio.SocketStream | None = None
        try:
            handed_off = await self._handle(stream, tcp.socket.getpeername()[0])
            if handed_off is not None and handed_off is not tcp:
                assert isinstance(stream, trio.SSLStream)
                await pump_tls(stream, tcp, handed_off)
        except Exception as exc:  # noqa: BLE001 - the listener must survive anything
            self.log.error("connection handler failed", error=exc.__class__.__name__)
        finally:
            if handed_off is tcp:
                tcp.socket.close()
            else:
                with trio.CancelScope(shield=True):
                    await _close(stream)
                    if handed_off is not None:
                        await trio.aclose_forcefully(handed_off)

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _handle(self, stream: trio.abc.Stream, peer_ip: str) -> trio.SocketStream | None:
        """Answer or hand off; returns the stream now owned by a worker's end, or None."""
        try:
            head = await read_head(
                stream, max_bytes=self.config.head_max_bytes, timeout=self.config.head_timeout,
                max_body=MAX_POST_BODY,
            )
        except HeadError as exc:
            self.log.info("request rejected", status=exc.status, reason=exc.detail)
            await self._send(stream, response(exc.status, tls=self.tls))
            return None
        path, query = split_target(head.target)
        if head.is_websocket:
            route = self.router.websocket_route(path, query)
        else:
            route = self.router.http_route(head.method, path)  # admitted like any session
            if route is None:
                ip = self.admission.client_ip(head, peer_ip)
                await self._send(stream, await endpoints.answer(self, head, path, query, ip))
                return None
        refusal = self._unservable(route)
        if refusal is not None:
            await self._send(stream, refusal)
            return None
        assert route is not None
        ticket = await self._admit(stream, head, query, route, peer_ip)
        if ticket is None:
            return None
        try:
            handed = await self._hand_off(stream, head, route, self.pools[route.provider], ticket)
        except BaseException:
            self.store.abandoned(ticket)
            raise
        if handed is None:
            self.store.abandoned(ticket)
        return handed

    def _unservable(self, route: Route | None) -> bytes | None:
        """The answer when no worker may take this route: unknown, provider off, or draining."""
        if route is None:
            return response(404, "Not Found", tls=self.tls)
        if route.provider not in self.pools:
            var = KEY_VARS[route.provider]
            body = {"error": "provider_disabled", "message": f"{route.provider} is off: {var} is not set", "missing": var}
            return response(503, body, tls=self.tls)
        if self.draining:
            self.metrics.rejections.labels("draining").inc()
            return response(503, {"error": "draining"}, headers=[("Retry-After", "5")], tls=self.tls)
        return None

    async def _admit(
        self, stream: trio.abc.Stream, head: Head, query: list[tuple[str, str]], route: Route, peer_ip: str,
    ) -> Ticket | None:
        """Admission (identity, then the store's caps and budgets); a refusal is answered here."""
        ip = self.admission.client_ip(head, peer_ip)
        rejection = self.admission.check_identity(head, query, route.provider)
        ticket = Ticket(
            uuid.uuid4().hex[:16], ip, route.provider, route.kind,
            self.admission.identify(head, query, route.provider) if rejection is None else None,
            origin=head.header("origin"),
        )
        ticket.trace = (first_value(query, "traceId") or head.header("x-trace-id") or ticket.sid)[:128]
        if rejection is None:
            rejection = await self.store.admit(ticket, trio.current_time())
        if rejection is None:
            return ticket
        self.metrics.rejections.labels(rejection.reason).inc()
        self.log.info("session rejected", route=route.name, status=rejection.status, reason=rejection.reason,
                      ip=ip, limit=getattr(rejection, "limit", None))
        await self._send(stream, response(rejection.status, rejection.body(), headers=rejection.headers(), tls=self.tls))
        if self.page:
            self.refusals.note(ip, rejection.status, rejection.body(), trio.current_time())
        return None

    def total_sessions(self) -> int:
        return sum(w.load for pool in self.pools.values() for w in pool.workers())

    def ip_sessions(self, ip: str) -> int:
        return sum(
            1 for pool in self.pools.values() for w in pool.workers() for ref in w.sessions.values() if ref.ip == ip
        )

    async def _hand_off(
        self, stream: trio.abc.Stream, head: Head, route: Route, pool: ProviderPool, ticket: Ticket,
    ) -> trio.SocketStream | None:
        sid, ip, token = ticket.sid, ticket.ip, ticket.token
        header = {
            "t": "conn", "sid": sid, "route": route.kind, "peer": ip,
            "head_len": head.head_len, "trace": ticket.trace, "tls": self.tls,
        }
        if token is not None:
            header["label"] = token.label
            if token.budget.max_session_seconds:
                header["max_seconds"] = token.budget.max_session_seconds
        for _ in range(HANDOFF_ATTEMPTS):
            worker: Worker | None = await pool.wait_for_worker(self.config.worker_wait)
            if worker is None:
                break
            if isinstance(stream, trio.SocketStream):
                ours, theirs = stream, stream.socket
            else:
                ours, theirs = _socket_pair()
            self.log.debug("handing off", sid=sid, route=route.name, worker=worker.worker_id)
            ref = SessionRef(
                ip, route.kind, route.provider, sid, origin=head.header("origin"), token=token, trace=header["trace"],
            )
            try:
                taken = await worker.hand_off(header, head.raw, theirs.fileno(), self.config.worker_timeout + 2, ref)
            finally:
                if ours is not stream:
                    theirs.close()
            if not taken:
                self.log.warning("hand-off failed, retrying", route=route.name, sid=sid, worker=worker.worker_id)
                if ours is not stream:
                    ours.socket.close()
                continue
            self.store.started(ticket, ref)
            self.metrics.sessions_total.labels(route.provider, route.kind).inc()
            self.log.debug("handed off", sid=sid, trace=header["trace"], route=route.name, worker=worker.worker_id)
            return ours
        self.log.warning("no worker ready", route=route.name, sid=sid)
        body = {"error": "worker_unavailable", "message": f"no {route.provider} worker is ready, retry shortly"}
        await self._send(stream, response(503, body, headers=[("Retry-After", "2")], tls=self.tls))
        return None

    # -- live sessions, budgets, stops ------------------------------------------------------

    def live_sessions(self) -> list[SessionRef]:
        return [ref for pool in self.pools.values() for w in pool.workers() for ref in w.sessions.values()]

    def on_report(self, ref: SessionRef, report: dict[str, Any]) -> None:
        """A worker's report of one session: keep it, meter the difference, check budgets."""
        usage, traffic = report.get("usage"), report.get("traffic")
        if isinstance(traffic, list) and len(traffic) == 4:
            ref.traffic = traffic
        if not isinstance(usage, dict):
            return
        try:
            self.metrics.fold_usage(ref.provider, ref.route, ref.usage, usage)
            spent = self.store.add_usage(ref, ref.usage, usage)
        except (KeyError, TypeError):
            self.log.warning("malformed session report", sid=ref.sid)
            return
        ref.usage = usage
        if ref.token is not None and spent is not None:
            self.enforce_budget(ref.token, spent)

    def enforce_budget(self, token: TokenInfo, spent: Spent) -> None:
        """End this instance's sessions of a token whose lifetime budget is used up."""
        limit = exhausted(token.budget, spent)
        if limit is not None:
            victims = [r for r in self.live_sessions() if r.token and r.token.key == token.key]
            self.stop_sessions(victims, "budget_exhausted", limit=limit)

    def stop_sessions(self, refs: list[SessionRef], reason: str, **fields: Any) -> int:
        """Tell each session's worker to end it with `reason` (once per session)."""
        count = 0
        for ref in refs:
            if ref.stopping is not None:
                continue
            worker = self._worker_of(ref)
            if worker is None or self._nursery is None:
                continue
            ref.stopping = reason
            count += 1
            self.metrics.budget_stops.labels(reason).inc()
            self.log.info("stopping session", sid=ref.sid, reason=reason, token_label=ref.label, **fields)
            self._nursery.start_soon(self._send_stop, worker, ref.sid, reason)
        return count

    def _worker_of(self, ref: SessionRef) -> Worker | None:
        for pool in self.pools.values():
            for worker in pool.workers():
                if worker.sessions.get(ref.sid) is ref:
                    return worker
        return None

    async def _send_stop(self, worker: Worker, sid: str, reason: str) -> None:
        try:
            await worker.channel.send({"t": "stop", "sid": sid, "reason": reason})
        except ChannelClosed:
            pass
