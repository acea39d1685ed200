"""Deepgram routes: which upstream URL a session goes to and what the client sees on failure.

P3-P5, P8, P9, P17: the key only as `Authorization: Token`, every client query parameter
forwarded except the gateway's own, `Error` JSON before a close on the agent service only.
"""

from __future__ import annotations

import orjson

from voxgate.config import Config
from voxgate.workers.deepgram.audio_done import SyntheticAgentAudioDone
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.limits import limit_for
from voxgate.workers.passthrough import (
    GATEWAY_PARAMS,
    UpstreamProfile,
    auth_subprotocol,
    strip_params,
)
from voxgate.workers.runtime import Session

DROP_PARAMS = GATEWAY_PARAMS | {"service"}
KEEPALIVE = b'{"type":"KeepAlive"}'


# Route kind -> the Deepgram API path it relays to (Flux recognition and turn-based TTS on v2).
API_PATHS = {"listen": "/v1/listen", "speak": "/v1/speak", "listen_v2": "/v2/listen", "speak_v2": "/v2/speak"}
# Streaming recognition: the client may legitimately stay silent (no idle timeout).
LISTEN_KINDS = frozenset({"listen", "listen_v2"})


def upstream_url(config: Config, kind: str) -> str:
    """P3: agent on DEEPGRAM_AGENT_URL, listen and speak (v1 and v2) on DEEPGRAM_API_URL."""
    if kind == "agent":
        return config.deepgram_agent_url.rstrip("/") + "/v1/agent/converse"
    return config.deepgram_api_url.rstrip("/") + API_PATHS[kind]


def error_payload(description: str, code: str) -> bytes:
    return orjson.dumps({"type": "Error", "description": description, "code": code})


def agent_failure(err: UpstreamConnectError) -> list[bytes]:
    """P8/P9: the agent service hears why before the close; descriptions stay generic."""
    if err.auth:
        return [error_payload("The provider rejected the gateway's credentials.", "upstream_auth_failed")]
    detail = f" (HTTP {err.status})" if err.status else ""
    return [error_payload(f"The provider could not be reached{detail}.", "upstream_unavailable")]


def agent_limit(code: str) -> list[bytes]:
    limit = limit_for(code)
    return [error_payload(limit.description, limit.code)]


def choose_subprotocol(offered: list[str]) -> str | None:
    """P6: echo a voxgate auth subprotocol, else the first offered entry."""
    return auth_subprotocol(offered) or (offered[0] if offered else None)


def profile_for(session: Session) -> UpstreamProfile:
    config = session.config
    kind = session.route
    request = session.handshake.request
    is_agent = kind == "agent"
    observer = SyntheticAgentAudioDone() if is_agent and config.deepgram_synthetic_agent_audio_done else None
    # KeepAlive is a v1 (Nova) control message; Flux has none, so none is sent on listen_v2.
    keepalive = (config.deepgram_keepalive, KEEPALIVE) if kind == "listen" and config.deepgram_keepalive else None
    return UpstreamProfile(
        url=upstream_url(config, kind),
        query=strip_params(request.query, DROP_PARAMS),
        headers=[("Authorization", f"Token {config.deepgram_key}"), ("User-Agent", "voxgate")],
        subprotocol=choose_subprotocol(request.subprotocols),
        failure_payloads=agent_failure if is_agent else (lambda err: []),
        limit_payloads=agent_limit if is_agent else (lambda code: []),
        observer=observer,
        keepalive=keepalive,
        idle_timeout=config.idle_timeout if kind not in LISTEN_KINDS else None,
        secret=config.deepgram_key,
    )
