"""The supervisor's own HTTP endpoints: health, readiness, metrics, client tokens, OpenAI-shaped
client secrets, the sessions and usage admin API, CORS preflights and the demo page.

One function per endpoint, each `(supervisor, request) -> response bytes`. `ENDPOINTS` maps
every endpoint name of the route table (routes.SUPERVISOR_PATHS and SUPERVISOR_PREFIXES) to its
handler and methods; `answer` is the whole dispatch. The arbiter (server.py) only calls `answer`
for a request no worker serves.
"""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import trio

from voxgate.config import KEY_VARS, PROVIDERS, valid_label
from voxgate.http_response import response
from voxgate.routes import SUPERVISOR_PATHS
from voxgate.supervisor import metrics
from voxgate.supervisor.admission import TOKEN_TTL_DEFAULT, TOKEN_TTL_MAX, Budget, mint_token
from voxgate.supervisor.http import Head
from voxgate.supervisor.page import PAGE_HEADERS, REFUSAL_PATH
from voxgate.supervisor.routing import supervisor_endpoint
from voxgate.supervisor.sessions import entry_matches, parse_filters
from voxgate.supervisor.store import token_id

if TYPE_CHECKING:
    from voxgate.supervisor.server import Supervisor

CLIENT_SECRET_TTL_DEFAULT = 600  # OpenAI's default for client secrets
READ_METHODS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Request:
    """A plain HTTP request the supervisor answers itself."""

    head: Head
    path: str
    query: list[tuple[str, str]]
    ip: str  # the client's address (X-Forwarded-For's last hop with --trust-proxy-headers)
    rest: str = ""  # the sub-path after an endpoint prefix: /readyz/<provider>, /v1/sessions/<id>, ...


Handler = Callable[["Supervisor", Request], Awaitable[bytes]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A handler and the methods it answers."""

    handler: Handler
    # Other methods: OPTIONS is a CORS preflight, anything else is not served (404/405/426).
    methods: tuple[str, ...] = READ_METHODS
    # The admin API answers every method itself (404 without --admin-token, 401, then 405).
    admin: bool = False


def _reply(sup: Supervisor, status: int, body: bytes | str | dict | None = None, **kw: Any) -> bytes:
    return response(status, body, tls=sup.tls, **kw)


def _bad(sup: Supervisor, message: str) -> bytes:
    return _reply(sup, 400, {"error": "bad_request", "message": message})


def json_body(head: Head) -> dict | str:
    """The request's JSON object body ({} when empty), or what is wrong with it."""
    try:
        body = orjson.loads(head.body) if head.body.strip() else {}
    except orjson.JSONDecodeError:
        return "body must be JSON"
    return body if isinstance(body, dict) else "body must be a JSON object"


def _positive(value: Any, integral: bool) -> bool:
    kinds = int if integral else int | float
    return isinstance(value, kinds) and not isinstance(value, bool) and value > 0


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
        if not _positive(value, integral):
            return f"{name} must be a positive {'integer' if integral else 'number'}"
        values[name] = value
    return label, Budget(**values)


def admin_ok(sup: Supervisor, head: Head) -> bool:
    """The request carries the admin token as its bearer (compared in constant time)."""
    admin = sup.config.admin_token
    auth = head.header("authorization") or ""
    given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
    if admin and hmac.compare_digest(given, admin.encode()):
        return True
    sup.metrics.rejections.labels("admin_token").inc()
    return False


def _unauthorized(sup: Supervisor) -> bytes:
    return _reply(sup, 401, {"error": "unauthorized", "message": "admin token required"})


def _admin_refusal(sup: Supervisor, head: Head, allow: str | None = None) -> bytes | None:
    """404 when there is no admin API (no --admin-token), 401 without its bearer, 405 for a
    method other than `allow` (when given), else None."""
    if not sup.config.admin_token:
        return _reply(sup, 404, "Not Found")
    if not admin_ok(sup, head):
        return _unauthorized(sup)
    if allow is not None and head.method != allow:
        return _reply(sup, 405, "Method Not Allowed", headers=[("Allow", allow)])
    return None


# -- health, readiness, metrics ------------------------------------------------------------


def readiness(sup: Supervisor, only: str | None = None) -> tuple[int, dict[str, Any]]:
    """`/readyz`: per provider enabled/ready/workers. 200 while at least one enabled
    provider can serve, so one crash-looping provider does not take the healthy one out
    of a load balancer (issue 16 §2); 503 when none can, or while draining.
    `only` (`/readyz/<provider>`) answers for that provider alone."""
    services: dict[str, Any] = {}
    for provider in sorted(PROVIDERS):  # alphabetical, as /readyz has always listed them
        pool = sup.pools.get(provider)
        if pool is None:
            services[provider] = {
                "enabled": False, "path": None, "ready": False,
                "reason": f"{KEY_VARS[provider]} not set", "workers": [], "sessions": 0,
            }
            continue
        workers = pool.snapshot()
        services[provider] = {
            "enabled": True, "path": sup.router.provider_path(provider), "ready": bool(pool.ready_workers()),
            "workers": workers, "sessions": sum(w["sessions"] for w in workers), "restarts": pool.restarts,
        }
    enabled = [name for name, svc in services.items() if svc["enabled"] and (only is None or name == only)]
    down = [name for name in enabled if not services[name]["ready"]]
    ok = not sup.draining and len(down) < len(enabled)
    if sup.draining:
        status = "draining"
    else:
        status = "ready" if not down else ("degraded" if ok else "not_ready")
    body = {
        "status": status, "ready": ok, "not_ready": down,
        "port": sup.port, "https": sup.tls, "services": services, "store": sup.store.readiness(),
    }
    return (200 if ok else 503), body


async def healthz(sup: Supervisor, req: Request) -> bytes:
    return _reply(sup, 200, {"status": "ok"})


async def readyz(sup: Supervisor, req: Request) -> bytes:
    status, body = readiness(sup)
    return _reply(sup, status, body)


async def readyz_one(sup: Supervisor, req: Request) -> bytes:
    """`/readyz/<provider>`: strict readiness of one provider."""
    only = req.rest.rsplit("/", 1)[-1]
    if only not in KEY_VARS:
        return _reply(sup, 404, "Not Found")
    status, body = readiness(sup, only)
    return _reply(sup, status, body)


async def metrics_text(sup: Supervisor, req: Request) -> bytes:
    text = sup.metrics.render(sup.pools, sup.draining)
    return _reply(sup, 200, text, content_type=metrics.CONTENT_TYPE)


# -- client tokens -----------------------------------------------------------------------


def _mint_terms(body: dict) -> tuple[int, str | None, str | None, str | None, Budget] | str:
    """(ttl, origin, provider, label, budget) of a minting request, or what is wrong with it."""
    ttl, origin, provider = body.get("ttl", TOKEN_TTL_DEFAULT), body.get("origin"), body.get("provider")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= TOKEN_TTL_MAX:
        return f"ttl must be 1..{TOKEN_TTL_MAX} seconds"
    if origin is not None and not isinstance(origin, str):
        return "origin must be a string"
    if provider is not None and provider not in PROVIDERS:
        return "provider must be openai or deepgram"
    terms = token_terms(body)
    if isinstance(terms, str):
        return terms
    return ttl, origin, provider, *terms


async def mint(sup: Supervisor, req: Request) -> bytes:
    """POST /v1/tokens: a signed short-lived client token, for holders of the admin token."""
    cfg = sup.config
    if not cfg.token_secret or not cfg.admin_token:
        return _reply(sup, 404, "Not Found")
    if not admin_ok(sup, req.head):
        return _unauthorized(sup)
    body = json_body(req.head)
    terms = body if isinstance(body, str) else _mint_terms(body)
    if isinstance(terms, str):
        return _bad(sup, terms)
    ttl, origin, provider, label, budget = terms
    token, expires = mint_token(cfg.token_secret, ttl=ttl, origin=origin, provider=provider, label=label, budget=budget)
    ident = token_id(sup.admission.token_info(token, origin, provider))
    return _reply(sup, 200, {"token": token, "id": ident, "expires_at": expires, "ttl": ttl})


def _openai_error(sup: Supervisor, status: int, message: str, kind: str = "invalid_request_error") -> bytes:
    return _reply(sup, status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


def _secret_terms(body: dict) -> tuple[int, dict, str | None, Budget] | str:
    """(ttl, session, label, budget) of a client-secret request, or what is wrong with it."""
    expires_after = body.get("expires_after") or {}
    ttl = expires_after.get("seconds", CLIENT_SECRET_TTL_DEFAULT) if isinstance(expires_after, dict) else None
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 10 <= ttl <= TOKEN_TTL_MAX:
        return f"expires_after.seconds must be 10..{TOKEN_TTL_MAX}"
    session = body.get("session") or {"type": "realtime"}
    if not isinstance(session, dict):
        return "session must be an object"
    terms = token_terms(body)
    if isinstance(terms, str):
        return terms
    return ttl, session, *terms


async def client_secret(sup: Supervisor, req: Request) -> bytes:
    """POST /v1/realtime/client_secrets in OpenAI's request and response shapes, so a backend
    using the official SDK against voxgate's base URL gets a voxgate client token that a
    browser then offers as its `openai-insecure-api-key.` subprotocol."""
    cfg = sup.config
    if not cfg.token_secret or not cfg.admin_token:
        return _openai_error(sup, 404, "client secrets need --token-secret and --admin-token", "not_found")
    if not admin_ok(sup, req.head):
        return _openai_error(sup, 401, "admin token required as the bearer", "invalid_api_key")
    body = json_body(req.head)
    terms = body if isinstance(body, str) else _secret_terms(body)
    if isinstance(terms, str):
        return _openai_error(sup, 400, terms)
    ttl, session, label, budget = terms
    token, expires = mint_token(
        cfg.token_secret, ttl=ttl, provider="openai", label=label or "client_secret", budget=budget
    )
    from voxgate.workers.openai.upstream import base_and_model

    described = {
        "type": "realtime", "model": base_and_model(cfg)[1], **session,
        "object": "realtime.session", "id": f"sess_{uuid.uuid4().hex[:24]}", "expires_at": 0,
    }
    return _reply(sup, 200, {"value": token, "expires_at": expires, "session": described})


# -- the admin API: sessions, revocation, usage --------------------------------------------


async def sessions(sup: Supervisor, req: Request) -> bytes:
    """GET /v1/sessions, DELETE /v1/sessions/{id}, DELETE /v1/sessions?filter=..."""
    refusal = _admin_refusal(sup, req.head)
    if refusal is not None:
        return refusal
    filters = parse_filters(req.query)
    if isinstance(filters, str):
        return _bad(sup, filters)
    sid = None if req.path in SUPERVISOR_PATHS else req.rest  # /v1/sessions/<id>
    method = req.head.method
    if method not in ("GET", "DELETE") or (method == "GET" and sid is not None):
        return _reply(sup, 405, {"error": "method_not_allowed", "message": "use GET or DELETE"},
                      headers=[("Allow", "GET, DELETE")])
    live = await sup.store.sessions()
    if method == "GET":
        return _reply(sup, 200, {"sessions": [e for e in live if entry_matches(e, filters)]})
    return await _end_sessions(sup, live, sid, filters)


async def _end_sessions(sup: Supervisor, live: list[dict], sid: str | None, filters: dict) -> bytes:
    """DELETE: end one session by id, or every session the filters match."""
    if sid is not None:
        matched = [e for e in live if e["id"] == sid]
        if not matched:
            return _reply(sup, 404, {"error": "not_found", "message": "no live session with that id"})
    elif not filters:
        return _bad(sup, "name the sessions to end: a session id, or ?client_ip=, ?token_label=, ?provider=")
    else:  # sessions already ending are not counted again
        matched = [e for e in live if entry_matches(e, filters) and e.get("ending") is None]
    await sup.store.stop(matched, "terminated")
    return _reply(sup, 200, {"ended": len(matched), "ids": [e["id"] for e in matched]})


async def usage(sup: Supervisor, req: Request) -> bytes:
    """GET /v1/usage: totals (shared through Redis with --redis-url)."""
    refusal = _admin_refusal(sup, req.head, allow="GET")
    if refusal is not None:
        return refusal
    return _reply(sup, 200, await sup.store.usage())


async def revoke(sup: Supervisor, req: Request) -> bytes:
    """DELETE /v1/tokens/{id}: revoke a minted token and end its live sessions."""
    refusal = _admin_refusal(sup, req.head, allow="DELETE")
    if refusal is not None:
        return refusal
    ident = req.rest
    if not ident or len(ident) > 64 or not ident.replace("-", "").replace("_", "").isalnum():
        return _bad(sup, "name the token by the id POST /v1/tokens returned")
    ended = await sup.store.revoke(ident, time.time() + TOKEN_TTL_MAX)
    sup.log.info("token revoked", token_id=ident, ended=ended)
    return _reply(sup, 200, {"revoked": ident, "ended": ended})


# -- the demo page, CORS, and paths nobody serves -----------------------------------------


async def page_file(sup: Supervisor, req: Request) -> bytes:
    body, content_type = sup.page[req.path]
    return _reply(sup, 200, body, headers=PAGE_HEADERS, content_type=content_type)


async def refusal(sup: Supervisor, req: Request) -> bytes:
    """GET /demo/refusal: why this client's last upgrade was refused (page.Refusals)."""
    return _reply(sup, 200, sup.refusals.recent(req.ip, trio.current_time()), headers=PAGE_HEADERS)


def cors_preflight(sup: Supervisor, req: Request) -> bytes:
    """P25: 204 with CORS headers for an allowed Origin, else 403."""
    origin = req.head.header("origin")
    if origin is None or not sup.admission.origin_allowed(origin):
        return _reply(sup, 403, "Origin not allowed")
    headers = [
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
        ("Access-Control-Allow-Headers", "Content-Type, Authorization, X-Trace-Id, X-Request-Id"),
        ("Vary", "Origin"),
    ]
    return _reply(sup, 204, headers=headers)


def not_served(sup: Supervisor, method: str, path: str) -> bytes:
    """405 for the call set-up path (POST only), 426 for a plain GET on a WebSocket path, else 404."""
    if sup.router.http_route("POST", path) is not None:
        return _reply(sup, 405, "Method Not Allowed", headers=[("Allow", "POST, OPTIONS")])
    if method == "GET" and sup.router.websocket_route(path, []) is not None:
        return _reply(sup, 426, "Upgrade Required", headers=[("Upgrade", "websocket")])
    return _reply(sup, 404, "Not Found")


ENDPOINTS: dict[str, Endpoint] = {
    "healthz": Endpoint(healthz),
    "readyz": Endpoint(readyz),
    "readyz_one": Endpoint(readyz_one),
    "metrics": Endpoint(metrics_text),
    "mint": Endpoint(mint, ("POST",)),
    "client_secrets": Endpoint(client_secret, ("POST",)),
    "sessions": Endpoint(sessions, admin=True),
    "usage": Endpoint(usage, admin=True),
    "revoke": Endpoint(revoke, admin=True),
}
PAGE_FILE = Endpoint(page_file)
REFUSAL = Endpoint(refusal, ("GET",))


def _endpoint(sup: Supervisor, path: str) -> tuple[Endpoint | None, str]:
    """The endpoint serving `path` (the demo page's only with --demo-page) and its sub-path."""
    found = supervisor_endpoint(path)
    if found is not None:
        return ENDPOINTS[found[0]], found[1]
    if sup.page and path == REFUSAL_PATH:
        return REFUSAL, ""
    if path in sup.page:
        return PAGE_FILE, ""
    return None, ""


async def answer(sup: Supervisor, head: Head, path: str, query: list[tuple[str, str]], ip: str) -> bytes:
    """The response to a plain HTTP request that no worker serves."""
    endpoint, rest = _endpoint(sup, path)
    request = Request(head, path, query, ip, rest)
    if endpoint is not None and endpoint.admin:
        return await endpoint.handler(sup, request)
    if head.method == "OPTIONS":
        return cors_preflight(sup, request)
    if endpoint is not None and head.method in endpoint.methods:
        return await endpoint.handler(sup, request)
    return not_served(sup, head.method, path)
