"""Admission: who may open a session, decided before any 101 (architecture §5, P7).

Pure decisions over a parsed request head plus small in-memory state (sessions per IP, a
token bucket per IP). Order: origin (403), client token (401), caps (429 per IP, 503
global). Every rejection carries a reason label for logs and metrics; tokens are compared
in constant time and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from voxgate.config import split_static_token
from voxgate.supervisor.http import Head

TOKEN_PREFIX = "vg1"
TOKEN_TTL_DEFAULT = 60
TOKEN_TTL_MAX = 3600
MAX_TRACKED_IPS = 100_000
AUTH_SUBPROTOCOLS = ("access_token.", "bearer.", "openai-insecure-api-key.")


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    reason: str  # metric/log label: origin, token_missing, token_invalid, ip_sessions, ip_rate, global_sessions
    message: str
    retry_after: int | None = None

    def body(self) -> dict:
        return {"error": self.reason, "message": self.message}

    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))] if self.retry_after else []


# budget field -> claim name in a signed token
BUDGET_CLAIMS = {
    "max_sessions": "ms", "max_session_seconds": "ss", "max_audio_seconds": "as", "max_tokens": "mt",
}


@dataclass(frozen=True, slots=True)
class Budget:
    """What one client token may spend: concurrent sessions, seconds per session, and audio
    seconds and OpenAI tokens over the token's lifetime. None = unlimited."""

    max_sessions: int | None = None
    max_session_seconds: float | None = None
    max_audio_seconds: float | None = None
    max_tokens: int | None = None

    def claims(self) -> dict[str, float]:
        return {BUDGET_CLAIMS[k]: v for k, v in self.items() if v is not None}

    def items(self) -> list[tuple[str, float | None]]:
        return [(name, getattr(self, name)) for name in BUDGET_CLAIMS]

    @classmethod
    def from_claims(cls, claims: dict) -> Budget:
        values = {}
        for name, claim in BUDGET_CLAIMS.items():
            value = claims.get(claim)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                values[name] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """The client token a session was admitted with: its label (shown) and the identity its
    budget is kept under (never shown: for minted tokens it is part of the token)."""

    label: str
    key: str
    budget: Budget


@dataclass(frozen=True, slots=True)
class BudgetRejection(Rejection):
    """A 429 that names the budget limit the client token reached."""

    limit: str = ""

    def body(self) -> dict:
        return {"error": "budget_exceeded", "limit": self.limit, "message": self.message}


@dataclass(frozen=True)
class AdmissionConfig:
    allowed_origins: tuple[str, ...] = ()
    client_tokens: tuple[str, ...] = ()
    token_secret: str | None = None
    max_sessions: int | None = None
    max_sessions_per_ip: int | None = None
    max_new_sessions_per_ip_per_minute: int | None = None
    trust_proxy_headers: bool = False
    static_budget: Budget = Budget()

    @property
    def auth_required(self) -> bool:
        return bool(self.client_tokens or self.token_secret)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mint_token(secret: str, *, ttl: int, origin: str | None = None, provider: str | None = None,
               now: float | None = None, label: str | None = None,
               budget: Budget | None = None) -> tuple[str, int]:
    """A signed short-lived client token: `vg1.<claims>.<hmac>`; returns (token, expires_at)."""
    expires = int((time.time() if now is None else now) + ttl)
    claims: dict = {"exp": expires, "n": _b64(os.urandom(9))}
    if origin:
        claims["o"] = origin
    if provider:
        claims["p"] = provider
    if label:
        claims["l"] = label
    if budget is not None:
        claims.update(budget.claims())
    body = _b64(orjson.dumps(claims))
    sig = hmac.new(secret.encode(), f"{TOKEN_PREFIX}.{body}".encode(), hashlib.sha256).digest()
    return f"{TOKEN_PREFIX}.{body}.{_b64(sig)}", expires


def verify_signed(secret: str, token: str, *, now: float | None = None) -> dict | None:
    """Claims of a valid, unexpired signed token, else None (tampered, expired, malformed)."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return None
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(expected, _unb64(parts[2])):
            return None
        claims = orjson.loads(_unb64(parts[1]))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int):
        return None
    if claims["exp"] <= (time.time() if now is None else now):
        return None
    return claims


def offered_token(head: Head, query: list[tuple[str, str]]) -> str | None:
    """The client token from `?token=`, `Authorization: Bearer`, or an auth subprotocol."""
    for key, value in query:
        if key == "token" and value:
            return value
    auth = head.header("authorization") or ""
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    offered = head.header_values("sec-websocket-protocol")
    for proto in offered:
        for prefix in AUTH_SUBPROTOCOLS:
            if proto.startswith(prefix) and len(proto) > len(prefix):
                return proto[len(prefix):]
    if "token" in offered:
        index = offered.index("token")
        if index + 1 < len(offered):
            return offered[index + 1]
    return None


class TokenBucket:
    """Per-IP new-session rate: `rate` per minute, burst `rate`."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.refill = per_minute / 60.0
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, ip: str, now: float) -> float:
        """0.0 when allowed (a token is spent), else seconds until the next token."""
        tokens, stamp = self._state.pop(ip, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - stamp) * self.refill)
        if tokens >= 1.0:
            self._state[ip] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._state[ip] = (tokens, now)
            wait = (1.0 - tokens) / self.refill
        while len(self._state) > MAX_TRACKED_IPS:
            self._state.popitem(last=False)
        return wait


class Admission:
    """Decides each upgrade; the supervisor asks `check` before handing off."""

    def __init__(self, config: AdmissionConfig) -> None:
        self.config = config
        pairs = [split_static_token(t, i) for i, t in enumerate(config.client_tokens)]
        self._tokens = tuple(token.encode() for _, token in pairs)
        self._labels = tuple(label for label, _ in pairs)
        self.bucket = (
            TokenBucket(config.max_new_sessions_per_ip_per_minute)
            if config.max_new_sessions_per_ip_per_minute else None
        )

    def client_ip(self, head: Head, peer_ip: str) -> str:
        """The peer address, or the last X-Forwarded-For hop when proxies are trusted."""
        if self.config.trust_proxy_headers:
            hops = head.header_values("x-forwarded-for")
            if hops:
                return hops[-1]
        return peer_ip

    def origin_allowed(self, origin: str | None) -> bool:
        allowed = self.config.allowed_origins
        if not allowed:
            return True
        return origin is not None and origin in allowed

    def _token_ok(self, token: str, origin: str | None, provider: str) -> bool:
        return self.token_info(token, origin, provider) is not None

    def token_info(self, token: str, origin: str | None, provider: str) -> TokenInfo | None:
        """Who a valid token belongs to, or None for an invalid one."""
        raw = token.encode()
        found = -1
        for index, candidate in enumerate(self._tokens):  # no early exit: constant work per candidate
            if hmac.compare_digest(candidate, raw):
                found = index
        if found >= 0:
            label = self._labels[found]
            return TokenInfo(label, f"static:{label}", self.config.static_budget)
        if self.config.token_secret and token.startswith(TOKEN_PREFIX + "."):
            claims = verify_signed(self.config.token_secret, token)
            if claims is None:
                return None
            if claims.get("o") and claims["o"] != origin:
                return None
            if claims.get("p") and claims["p"] != provider:
                return None
            label = claims.get("l") if isinstance(claims.get("l"), str) else "minted"
            return TokenInfo(label, f"minted:{claims.get('n')}", Budget.from_claims(claims))
        return None

    def identify(self, head: Head, query: list[tuple[str, str]], provider: str) -> TokenInfo | None:
        """The token of an admitted upgrade (None when client auth is off)."""
        if not self.config.auth_required:
            return None
        token = offered_token(head, query)
        return None if token is None else self.token_info(token, head.header("origin"), provider)

    def check(
        self, head: Head, query: list[tuple[str, str]], provider: str, ip: str, *,
        total_sessions: int, ip_sessions: int, now: float, caps: bool = True,
    ) -> Rejection | None:
        origin = head.header("origin")
        token = offered_token(head, query)
        if not self.origin_allowed(origin):
            # Browsers always send Origin: a request without one is a server-side client,
            # and a valid client token admits it (the allow-list guards browsers).
            if not (origin is None and token is not None and self._token_ok(token, None, provider)):
                return Rejection(403, "origin", "Origin not allowed")
        if self.config.auth_required:
            if token is None:
                return Rejection(401, "token_missing", "A client token is required")
            if not self._token_ok(token, origin, provider):
                return Rejection(401, "token_invalid", "Invalid or expired client token")
        if not caps:
            return None
        return self.check_caps(ip, total_sessions=total_sessions, ip_sessions=ip_sessions, now=now)

    def check_identity(self, head: Head, query: list[tuple[str, str]], provider: str) -> Rejection | None:
        """Origin and client token only (403/401); the caps are the store's."""
        return self.check(head, query, provider, "", total_sessions=0, ip_sessions=0, now=0.0, caps=False)

    def check_caps(self, ip: str, *, total_sessions: int, ip_sessions: int, now: float) -> Rejection | None:
        """This process's global and per-IP caps and per-IP rate."""
        cfg = self.config
        if cfg.max_sessions is not None and total_sessions >= cfg.max_sessions:
            return Rejection(503, "global_sessions", "The gateway is at its session limit", retry_after=5)
        if cfg.max_sessions_per_ip is not None and ip_sessions >= cfg.max_sessions_per_ip:
            return Rejection(429, "ip_sessions", "Too many sessions from this address", retry_after=5)
        if self.bucket is not None:
            wait = self.bucket.take(ip, now)
            if wait > 0:
                return Rejection(429, "ip_rate", "Too many new sessions from this address", retry_after=max(1, int(wait + 0.999)))
        return None
