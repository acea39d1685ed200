"""The raw OpenAI Realtime relay at `/openai/v1/realtime` (openai-translator §10, D37).

No translation: frames spliced verbatim. The gateway injects `Authorization: Bearer`, picks
the model from the client's `?model=`, and never forwards browser auth subprotocols
(`openai-insecure-api-key.*`), `openai-beta.*` or voxgate's own tokens.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

import orjson

from voxgate.config import Config
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.passthrough import (
    GATEWAY_PARAMS,
    UpstreamProfile,
    auth_subprotocol,
    strip_params,
)
from voxgate.workers.runtime import Session


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


def limit_payloads(code: str) -> list[bytes]:
    return [openai_error(code, "Session closed by the gateway.")]


def profile_for(session: Session) -> UpstreamProfile:
    config = session.config
    request = session.handshake.request
    base, model = base_and_model(config)
    headers = [("Authorization", f"Bearer {config.openai_key}"), ("User-Agent", "voxgate")]
    beta = request.header("openai-beta")
    if beta:
        headers.append(("OpenAI-Beta", beta))
    return UpstreamProfile(
        url=base,
        query=upstream_query(request.query, model),
        headers=headers,
        subprotocol=choose_subprotocol(request.subprotocols),
        failure_payloads=failure_payloads,
        limit_payloads=limit_payloads,
        idle_timeout=config.idle_timeout,
        secret=config.openai_key,
    )
