"""The Deepgram upstream: which URL a session goes to, with what credentials, and what the client
sees on failure (the passthrough relay's profile; its twin is openai/upstream.py).

P3-P5, P8, P9, P17: the key only as `Authorization: Token`, every client query parameter
forwarded except the gateway's own, `Error` JSON before a close on the agent service only.
"""

from __future__ import annotations

import orjson

from voxgate.config import DEEPGRAM, Config
from voxgate.routes import provider_paths
from voxgate.workers.deepgram.audio_done import SyntheticAgentAudioDone
from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.limits import limit_for
from voxgate.workers.message_filter import MessageFilter
from voxgate.workers.passthrough import (
    GATEWAY_PARAMS,
    UpstreamProfile,
    echo_subprotocol,
    strip_params,
)
from voxgate.workers.runtime import Session
from voxgate.workers.usage import Usage, bytes_per_second

DROP_PARAMS = GATEWAY_PARAMS | {"service"}
KEEPALIVE = b'{"type":"KeepAlive"}'
# Deepgram's documented defaults where a format may be left out
SPEAK_DEFAULT_RATES = {"linear16": 24000, "mulaw": 8000, "alaw": 8000}
AGENT_DEFAULT_OUTPUT = ("linear16", 24000)


# Route kind -> the Deepgram API path it relays to: the client's path under PROXY_PATH (P3).
API_PATHS = {kind: path for path, kind in provider_paths(DEEPGRAM).items() if path}
# Streaming recognition: the client may legitimately stay silent (no idle timeout).
LISTEN_KINDS = frozenset({"listen", "listen_v2"})
SPEAK_KINDS = frozenset({"speak", "speak_v2"})


def upstream_url(config: Config, kind: str) -> str:
    """P3: agent on DEEPGRAM_AGENT_URL, listen and speak (v1 and v2) on DEEPGRAM_API_URL."""
    base = config.deepgram_agent_url if kind == "agent" else config.deepgram_api_url
    return base.rstrip("/") + API_PATHS[kind]


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


def _query_rate(query: list[tuple[str, str]], default_encoding: str | None = None) -> float | None:
    """Bytes per second a listen/speak query declares (None: containerized or unknown)."""
    params = dict(query)
    encoding = params.get("encoding", default_encoding)
    rate = params.get("sample_rate")
    if rate is None and default_encoding is not None:
        rate = SPEAK_DEFAULT_RATES.get(str(encoding))
    return bytes_per_second(encoding, rate, params.get("channels", 1))


class ClientMeter:
    """Client TEXT messages that carry usage facts: the agent's `Settings` (audio formats) and
    speak's `Speak` (characters). A substring test skips every other message undecoded."""

    rewrites = False

    def __init__(self, usage: Usage, kind: str) -> None:
        self.usage = usage
        self.metered = MessageFilter("Settings" if kind == "agent" else "Speak")

    def observe_client_text(self, payload: bytes) -> tuple[bytes | None, list[bytes]]:
        msg = self.metered(payload)
        if msg is None:
            return None, []
        if msg.get("type") == "Speak" and isinstance(msg.get("text"), str):
            self.usage.characters += len(msg["text"])
        elif msg.get("type") == "Settings":
            audio = msg.get("audio") if isinstance(msg.get("audio"), dict) else {}
            for leg, meter, default in (("input", self.usage.audio_up, None), ("output", self.usage.audio_down, AGENT_DEFAULT_OUTPUT)):
                spec = audio.get(leg) if isinstance(audio.get(leg), dict) else {}
                encoding = spec.get("encoding", default[0] if default else None)
                rate = spec.get("sample_rate", default[1] if default else None)
                if meter is not None:
                    meter.set_rate(bytes_per_second(encoding, rate))
        return None, []


def profile_for(session: Session) -> UpstreamProfile:
    config = session.config
    kind = session.route
    request = session.handshake.request
    is_agent = kind == "agent"
    observer = SyntheticAgentAudioDone() if is_agent and config.deepgram_synthetic_agent_audio_done else None
    # KeepAlive is a v1 (Nova) control message; Flux has none, so none is sent on listen_v2.
    keepalive = (config.deepgram_keepalive, KEEPALIVE) if kind == "listen" and config.deepgram_keepalive else None
    rates: tuple[float | None, float | None] = (None, None)
    if kind in LISTEN_KINDS:  # v1 listen and Flux: the query declares raw audio
        rates = (_query_rate(request.query), None)
    elif kind in SPEAK_KINDS:
        rates = (None, _query_rate(request.query, default_encoding="linear16"))
    return UpstreamProfile(
        url=upstream_url(config, kind),
        query=strip_params(request.query, DROP_PARAMS),
        headers=[("Authorization", f"Token {config.deepgram_key}"), ("User-Agent", "voxgate")],
        subprotocol=echo_subprotocol(request.subprotocols),
        failure_payloads=agent_failure if is_agent else (lambda err: []),
        limit_payloads=agent_limit if is_agent else (lambda code: []),
        observer=observer,
        client_observer=ClientMeter(session.usage, kind) if kind == "agent" or kind in SPEAK_KINDS else None,
        audio_rates=rates,
        keepalive=keepalive,
        idle_timeout=config.idle_timeout if kind not in LISTEN_KINDS else None,
        secret=config.deepgram_key,
    )
