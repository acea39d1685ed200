"""The OpenAI upstream: Realtime URL and model (read by the translator and the call set-up too),
and the profile of the raw relay at `/openai/v1/realtime` (openai-translator §10, D37); its
twin is deepgram/upstream.py.

No translation: frames spliced verbatim. The gateway injects `Authorization: Bearer`, picks
the model from the client's `?model=`, and never forwards browser auth subprotocols
(`openai-insecure-api-key.*`), `openai-beta.*` or voxgate's own tokens.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson

from voxgate.config import Config
from voxgate.policy import apply_policy, pinned_message, rules_for
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.limits import limit_for
from voxgate.workers.message_filter import MessageFilter
from voxgate.workers.passthrough import (
    GATEWAY_PARAMS,
    UpstreamProfile,
    auth_subprotocol,
    strip_params,
)
from voxgate.workers.runtime import Session
from voxgate.workers.usage import ResponseDoneObserver


def base_and_model(config: Config) -> tuple[str, str]:
    """OPENAI_REALTIME_URL without its query, and the model it names (else the default)."""
    parts = urlsplit(config.openai_realtime_url)
    model = dict(parse_qsl(parts.query)).get("model") or config.openai_default_model
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), model


def upstream_query(client_query: list[tuple[str, str]], default_model: str) -> list[tuple[str, str]]:
    """`model` first (the client's or the default), then the client's other parameters."""
    rest = strip_params(client_query, GATEWAY_PARAMS | {"model"})
    model = next((v for k, v in client_query if k == "model" and v), default_model)
    return [("model", model), *rest]


def choose_subprotocol(offered: list[str]) -> str | None:
    if "realtime" in offered:
        return "realtime"
    return auth_subprotocol(offered)


def openai_error(code: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": "server_error", "code": code, "message": message}})


def failure_payloads(err: UpstreamConnectError) -> list[bytes]:
    if err.auth:
        return [openai_error("upstream_auth_failed", "The provider rejected the gateway's credentials.")]
    detail = f" (HTTP {err.status})" if err.status else ""
    return [openai_error("upstream_unavailable", f"The provider could not be reached{detail}.")]


SESSION_UPDATE = MessageFilter("session.update")
OPERATOR_LIMITS = frozenset({"terminated", "budget_exhausted", "replaced"})  # say why (issue 11)


def limit_payloads(code: str) -> list[bytes]:
    limit = limit_for(code)
    message = limit.description if limit.code in OPERATOR_LIMITS else "Session closed by the gateway."
    return [openai_error(code, message)]


class SessionUpdatePolicy:
    """Client observer of the raw relay when a session policy applies: pins its fields in every
    `session.update` (the only client messages it decodes) and answers each field the client
    tried to change with an `error` event."""

    rewrites = True

    def __init__(self, rules: dict) -> None:
        self.rules = rules

    def observe_client_text(self, payload: bytes) -> tuple[bytes | None, list[bytes]]:
        msg = SESSION_UPDATE(payload)
        if msg is None:
            return None, []
        session = msg.get("session")
        if not isinstance(session, dict):
            session = msg["session"] = {}
        changed = apply_policy(session, self.rules)
        answers = [
            orjson.dumps({"type": "error", "error": {
                "type": "invalid_request_error", "code": "policy_pinned",
                "message": pinned_message(field), "param": f"session.{field}",
                "event_id": msg.get("event_id"),
            }})
            for field in changed
        ]
        return orjson.dumps(msg), answers

    def first_update(self) -> bytes | None:
        """The session.update that pins the policy before anything the client sends."""
        session: dict = {"type": "realtime"}
        if "instructions_prefix" in self.rules:
            session["instructions"] = ""
        apply_policy(session, self.rules)
        if len(session) == 1:
            return None
        return orjson.dumps({"type": "session.update", "session": session})


def profile_for(session: Session) -> UpstreamProfile:
    config = session.config
    request = session.handshake.request
    base, model = base_and_model(config)
    rules = rules_for(config.session_policy, session.route, session.token_label)
    policy = SessionUpdatePolicy(rules) if rules else None
    query = upstream_query(request.query, model)
    if rules and rules.get("models") and query[0][1] not in rules["models"]:
        session.log.info("model replaced by the session policy", model=rules["models"][0])
        query[0] = ("model", rules["models"][0])
    first = policy.first_update() if policy else None
    headers = [("Authorization", f"Bearer {config.openai_key}"), ("User-Agent", "voxgate")]
    beta = request.header("openai-beta")
    if beta:
        headers.append(("OpenAI-Beta", beta))
    return UpstreamProfile(
        url=base,
        query=query,
        headers=headers,
        subprotocol=choose_subprotocol(request.subprotocols),
        failure_payloads=failure_payloads,
        limit_payloads=limit_payloads,
        observer=ResponseDoneObserver(session.usage),
        client_observer=policy,
        first_frames=[first] if first else [],
        idle_timeout=config.idle_timeout,
        secret=config.openai_key,
    )
