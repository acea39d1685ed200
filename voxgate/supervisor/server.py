"""The supervisor: one listening port, a bounded request head per connection, then either a
plain HTTP answer or a hand-off of the connected socket to a provider worker.

After a hand-off the supervisor closes its copy of the socket and is out of the data path:
it never parses a WebSocket frame.
"""

from __future__ import annotations

import hmac
import signal
import socket
import ssl
import time
import uuid
from typing import Any

import orjson
import trio

from voxgate.config import KEY_VARS, Config, valid_label
from voxgate.control import ChannelClosed
from voxgate.logs import EventLog
from voxgate.supervisor import metrics
from voxgate.supervisor.admission import (
    TOKEN_TTL_DEFAULT,
    TOKEN_TTL_MAX,
    Admission,
    AdmissionConfig,
    Budget,
    TokenInfo,
    mint_token,
)
from voxgate.supervisor.http import Head, HeadError, read_head, response
from voxgate.supervisor.metrics import Metrics
from voxgate.supervisor.page import PAGE_HEADERS, REFUSAL_PATH, Refusals, load_page
from voxgate.supervisor.routing import HTTP_ENDPOINTS, Route, Router, first_value, split_target
from voxgate.supervisor.sessions import SessionRef, Spent, entry_matches, exhausted, parse_filters
from voxgate.supervisor.store import LocalStore, Ticket, token_id
from voxgate.supervisor.tlspump import pump_tls
from voxgate.supervisor.workers import ProviderPool, Worker

HANDOFF_ATTEMPTS = 3
SESSIONS_PATH = "/v1/sessions"
TOKENS_PATH = "/v1/tokens/"
USAGE_PATH = "/v1/usage"
CLIENT_SECRETS_PATH = "/v1/realtime/client_secrets"
CLIENT_SECRET_TTL_DEFAULT = 600  # OpenAI's default for client secrets
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

    # -- plain HTTP ---------------------------------------------------------------------

    def readiness(self, only: str | None = None) -> tuple[int, dict[str, Any]]:
        """`/readyz`: per provider enabled/ready/workers. 200 while at least one enabled
        provider can serve, so one crash-looping provider does not take the healthy one out
        of a load balancer (issue 16 §2); 503 when none can, or while draining.
        `only` (`/readyz/<provider>`) answers for that provider alone."""
        services: dict[str, Any] = {}
        for provider, path in (("deepgram", self.config.proxy_path), ("openai", "/openai")):
            pool = self.pools.get(provider)
            if pool is None:
                services[provider] = {
                    "enabled": False, "path": None, "ready": False,
                    "reason": f"{KEY_VARS[provider]} not set", "workers": [], "sessions": 0,
                }
                continue
            workers = pool.snapshot()
            services[provider] = {
                "enabled": True, "path": path, "ready": bool(pool.ready_workers()), "workers": workers,
                "sessions": sum(w["sessions"] for w in workers), "restarts": pool.restarts,
            }
        enabled = [name for name, svc in services.items() if svc["enabled"] and (only is None or name == only)]
        down = [name for name in enabled if not services[name]["ready"]]
        ok = not self.draining and len(down) < len(enabled)
        if self.draining:
            status = "draining"
        else:
            status = "ready" if not down else ("degraded" if ok else "not_ready")
        body = {
            "status": status, "ready": ok, "not_ready": down,
            "port": self.port, "https": self.tls, "services": services, "store": self.store.readiness(),
        }
        return (200 if ok else 503), body

    def cors_preflight(self, head: Head) -> bytes:
        """P25: 204 with CORS headers for an allowed Origin, else 403."""
        origin = head.header("origin")
        if origin is None or not self.admission.origin_allowed(origin):
            return response(403, "Origin not allowed", tls=self.tls)
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
            ("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Trace-Id, X-Request-Id"),
            ("Vary", "Origin"),
        ]
        return response(204, headers=headers, tls=self.tls)

    def admin_ok(self, head: Head) -> bool:
        """The request carries the admin token as its bearer (compared in constant time)."""
        admin = self.config.admin_token
        auth = head.header("authorization") or ""
        given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
        if admin and hmac.compare_digest(given, admin.encode()):
            return True
        self.metrics.rejections.labels("admin_token").inc()
        return False

    def _unauthorized(self) -> bytes:
        return response(401, {"error": "unauthorized", "message": "admin token required"}, tls=self.tls)

    def _bad(self, message: str) -> bytes:
        return response(400, {"error": "bad_request", "message": message}, tls=self.tls)

    @staticmethod
    def json_body(head: Head) -> dict | str:
        """The request's JSON object body ({} when empty), or what is wrong with it."""
        try:
            body = orjson.loads(head.body) if head.body.strip() else {}
        except orjson.JSONDecodeError:
            return "body must be JSON"
        return body if isinstance(body, dict) else "body must be a JSON object"

    @staticmethod
    def token_terms(body: dict) -> tuple[str | None, Budget] | str:
        """A minting request's label and budget, or what is wrong with them."""
        label = body.get("label")
        if label is not None and not valid_label(label):
            return "label must be 1-64 letters, digits or _.@-"
        values: dict[str, float] = {}
        for name, _ in Budget().items():
            value = body.get(name)
            if value is None:
                continue
            integral = name in ("max_sessions", "max_tokens")
            kinds = int if integral else int | float
            if not isinstance(value, kinds) or isinstance(value, bool) or value <= 0:
                return f"{name} must be a positive {'integer' if integral else 'number'}"
            values[name] = value
        return label, Budget(**values)

    def mint(self, head: Head) -> bytes:
        """POST /v1/tokens: a signed short-lived client token, for holders of the admin token."""
        cfg = self.config
        if not cfg.token_secret or not cfg.admin_token:
            return response(404, "Not Found", tls=self.tls)
        if not self.admin_ok(head):
            return self._unauthorized()
        body = self.json_body(head)
        if isinstance(body, str):
            return self._bad(body)
        ttl = body.get("ttl", TOKEN_TTL_DEFAULT)
        origin = body.get("origin")
        provider = body.get("provider")
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= TOKEN_TTL_MAX:
            return self._bad(f"ttl must be 1..{TOKEN_TTL_MAX} seconds")
        if origin is not None and not isinstance(origin, str):
            return self._bad("origin must be a string")
        if provider is not None and provider not in ("openai", "deepgram"):
            return self._bad("provider must be openai or deepgram")
        terms = self.token_terms(body)
        if isinstance(terms, str):
            return self._bad(terms)
        label, budget = terms
        token, expires = mint_token(
            cfg.token_secret, ttl=ttl, origin=origin, provider=provider, label=label, budget=budget
        )
        ident = token_id(self.admission.token_info(token, origin, provider))
        return response(200, {"token": token, "id": ident, "expires_at": expires, "ttl": ttl}, tls=self.tls)

    def client_secret(self, head: Head) -> bytes:
        """POST /v1/realtime/client_secrets in OpenAI's request and response shapes, so a backend
        using the official SDK against voxgate's base URL gets a voxgate client token that a
        browser then offers as its `openai-insecure-api-key.` subprotocol."""
        cfg = self.config

        def error(status: int, message: str, kind: str = "invalid_request_error") -> bytes:
            body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
            return response(status, body, tls=self.tls)

        if not cfg.token_secret or not cfg.admin_token:
            return error(404, "client secrets need --token-secret and --admin-token", "not_found")
        if not self.admin_ok(head):
            return error(401, "admin token required as the bearer", "invalid_api_key")
        body = self.json_body(head)
        if isinstance(body, str):
            return error(400, body)
        expires_after = body.get("expires_after") or {}
        ttl = expires_after.get("seconds", CLIENT_SECRET_TTL_DEFAULT) if isinstance(expires_after, dict) else None
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 10 <= ttl <= TOKEN_TTL_MAX:
            return error(400, f"expires_after.seconds must be 10..{TOKEN_TTL_MAX}")
        session = body.get("session") or {"type": "realtime"}
        if not isinstance(session, dict):
            return error(400, "session must be an object")
        terms = self.token_terms(body)
        if isinstance(terms, str):
            return error(400, terms)
        label, budget = terms
        token, expires = mint_token(
            cfg.token_secret, ttl=ttl, provider="openai", label=label or "client_secret", budget=budget
        )
        from voxgate.workers.openai.upstream import base_and_model

        described = {
            "type": "realtime", "model": base_and_model(cfg)[1], **session,
            "object": "realtime.session", "id": f"sess_{uuid.uuid4().hex[:24]}", "expires_at": 0,
        }
        return response(200, {"value": token, "expires_at": expires, "session": described}, tls=self.tls)

    def http_answer(self, head: Head, path: str, ip: str = "") -> bytes:
        endpoint = HTTP_ENDPOINTS.get(path)
        only = None
        if endpoint is None and path.startswith(("/readyz/", "/ready/")):
            only = path.rsplit("/", 1)[1]
            endpoint = "readyz" if only in KEY_VARS else None
        if head.method == "OPTIONS":
            return self.cors_preflight(head)
        if head.method == "GET" and path == REFUSAL_PATH and self.page:
            return response(200, self.refusals.recent(ip, trio.current_time()), headers=PAGE_HEADERS, tls=self.tls)
        if head.method in ("GET", "HEAD") and path in self.page:
            body, content_type = self.page[path]
            return response(200, body, headers=PAGE_HEADERS, tls=self.tls, content_type=content_type)
        if head.method == "POST" and endpoint == "tokens":
            return self.mint(head)
        if head.method == "POST" and path == CLIENT_SECRETS_PATH:
            return self.client_secret(head)
        if head.method not in ("GET", "HEAD") or endpoint is None:
            if self.router.http_route("POST", path) is not None:
                return response(405, "Method Not Allowed", headers=[("Allow", "POST, OPTIONS")], tls=self.tls)
            if self.router.websocket_route(path, []) is not None and head.method == "GET":
                return response(426, "Upgrade Required", headers=[("Upgrade", "websocket")], tls=self.tls)
            return response(404, "Not Found", tls=self.tls)
        if endpoint == "healthz":
            return response(200, {"status": "ok"}, tls=self.tls)
        if endpoint == "readyz":
            status, body = self.readiness(only)
            return response(status, body, tls=self.tls)
        if endpoint == "metrics":
            return response(
                200, self.metrics.render(self.pools, self.draining), tls=self.tls, content_type=metrics.CONTENT_TYPE
            )
        return response(404, "Not Found", tls=self.tls)

    # -- connections --------------------------------------------------------------------

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
        elif path == SESSIONS_PATH or path.startswith(SESSIONS_PATH + "/"):
            await self._send(stream, await self.sessions_api(head, path, query))
            return None
        elif path == USAGE_PATH or path.startswith(TOKENS_PATH):
            await self._send(stream, await self.admin_api(head, path))
            return None
        else:
            route = self.router.http_route(head.method, path)  # admitted like any session
            if route is None:
                await self._send(stream, self.http_answer(head, path, self.admission.client_ip(head, peer_ip)))
                return None
        if route is None:
            await self._send(stream, response(404, "Not Found", tls=self.tls))
            return None
        pool = self.pools.get(route.provider)
        if pool is None:
            var = KEY_VARS[route.provider]
            body = {"error": "provider_disabled", "message": f"{route.provider} is off: {var} is not set", "missing": var}
            await self._send(stream, response(503, body, tls=self.tls))
            return None
        if self.draining:
            self.metrics.rejections.labels("draining").inc()
            await self._send(stream, response(503, {"error": "draining"}, headers=[("Retry-After", "5")], tls=self.tls))
            return None
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
        if rejection is not None:
            self.metrics.rejections.labels(rejection.reason).inc()
            self.log.info("session rejected", route=route.name, status=rejection.status, reason=rejection.reason,
                          ip=ip, limit=getattr(rejection, "limit", None))
            await self._send(stream, response(rejection.status, rejection.body(), headers=rejection.headers(), tls=self.tls))
            if self.page:
                self.refusals.note(ip, rejection.status, rejection.body(), trio.current_time())
            return None
        try:
            handed = await self._hand_off(stream, head, route, pool, ticket)
        except BaseException:
            self.store.abandoned(ticket)
            raise
        if handed is None:
            self.store.abandoned(ticket)
        return handed

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

    # -- live sessions, budgets, the admin API ----------------------------------------------

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

    async def sessions_api(self, head: Head, path: str, query: list[tuple[str, str]]) -> bytes:
        """GET /v1/sessions, DELETE /v1/sessions/{id}, DELETE /v1/sessions?filter=..."""
        if not self.config.admin_token:
            return response(404, "Not Found", tls=self.tls)
        if not self.admin_ok(head):
            return self._unauthorized()
        filters = parse_filters(query)
        if isinstance(filters, str):
            return self._bad(filters)
        sid = path[len(SESSIONS_PATH) + 1 :] if path != SESSIONS_PATH else None
        if head.method not in ("GET", "DELETE") or (head.method == "GET" and sid is not None):
            return response(405, {"error": "method_not_allowed", "message": "use GET or DELETE"},
                            headers=[("Allow", "GET, DELETE")], tls=self.tls)
        live = await self.store.sessions()
        if head.method == "GET":
            listed = [e for e in live if entry_matches(e, filters)]
            return response(200, {"sessions": listed}, tls=self.tls)
        if sid is not None:
            matched = [e for e in live if e["id"] == sid]
            if not matched:
                return response(404, {"error": "not_found", "message": "no live session with that id"}, tls=self.tls)
        elif not filters:
            return self._bad("name the sessions to end: a session id, or ?client_ip=, ?token_label=, ?provider=")
        else:  # sessions already ending are not counted again
            matched = [e for e in live if entry_matches(e, filters) and e.get("ending") is None]
        await self.store.stop(matched, "terminated")
        return response(200, {"ended": len(matched), "ids": [e["id"] for e in matched]}, tls=self.tls)

    async def admin_api(self, head: Head, path: str) -> bytes:
        """DELETE /v1/tokens/{id} (revocation) and GET /v1/usage (totals, shared with Redis)."""
        if not self.config.admin_token:
            return response(404, "Not Found", tls=self.tls)
        if not self.admin_ok(head):
            return self._unauthorized()
        if path == USAGE_PATH:
            if head.method != "GET":
                return response(405, "Method Not Allowed", headers=[("Allow", "GET")], tls=self.tls)
            return response(200, await self.store.usage(), tls=self.tls)
        if head.method != "DELETE":
            return response(405, "Method Not Allowed", headers=[("Allow", "DELETE")], tls=self.tls)
        ident = path[len(TOKENS_PATH):]
        if not ident or len(ident) > 64 or not ident.replace("-", "").replace("_", "").isalnum():
            return self._bad("name the token by the id POST /v1/tokens returned")
        ended = await self.store.revoke(ident, time.time() + TOKEN_TTL_MAX)
        self.log.info("token revoked", token_id=ident, ended=ended)
        return response(200, {"revoked": ident, "ended": ended}, tls=self.tls)

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
        """SIGTERM/SIGINT drain (a second SIGINT exits at once); SIGHUP rolls the workers."""
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as rolls:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        if not self.rolling:
                            rolls.start_soon(self.roll)
                        continue
                    self.log.info("shutting down", signal=signal.Signals(signum).name, grace=f"{self.config.grace:g}s")
                    rolls.cancel_scope.cancel()
                    break
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain, serve_scope, all_scope)
                async for signum in signals:
                    if signum == signal.SIGINT:
                        self.log.warning("second interrupt, exiting now")
                        for pool in self.pools.values():
                            pool.kill()
                        all_scope.cancel()
                        return

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
