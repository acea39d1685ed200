"""The route table: which path goes to which provider and relay, and which paths the
supervisor answers itself.

`ROUTE_TABLE` is the one answer: the supervisor's router, the startup lines and `voxgate
check`, `/readyz`, the PROXY_PATH check, the session policy's paths, and the Deepgram worker's
handlers and upstream paths all read it. It sits at the top of the package, beside `config`,
because both the supervisor and the workers read it. Deepgram paths hang under the configured
PROXY_PATH (architecture §2, deepgram-passthrough P1/P2) and are the same paths on Deepgram's
API (P3).
"""

from __future__ import annotations

from dataclasses import dataclass

from voxgate.config import DEEPGRAM, OPENAI, ConfigError


@dataclass(frozen=True, slots=True)
class Route:
    """A route served by a worker: provider plus what the worker does with it."""

    provider: str
    # openai: "translate" | "realtime" | "calls"; deepgram: "agent" | "listen" | "speak" | "listen_v2" | "speak_v2"
    kind: str

    @property
    def name(self) -> str:
        return f"{self.provider}.{self.kind}"


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One row of the route table."""

    path: str  # absolute for OpenAI; for Deepgram relative to PROXY_PATH ("" is PROXY_PATH itself)
    route: Route
    description: str  # for the startup lines and `voxgate check`
    websocket: bool = True  # False: a plain HTTP POST the worker serves (admitted like a session)
    listed: bool = True  # named in the startup lines and `voxgate check`

    def full_path(self, proxy_path: str) -> str:
        return proxy_path + self.path if self.route.provider == DEEPGRAM else self.path


ROUTE_TABLE: tuple[RouteEntry, ...] = (
    RouteEntry("/openai", Route(OPENAI, "translate"), "Deepgram Voice Agent protocol -> OpenAI Realtime"),
    # the same translator in Deepgram's own dialect (the startup lines name /openai for both)
    RouteEntry("/openai/v1/agent/converse", Route(OPENAI, "translate"),
               "Deepgram Voice Agent protocol (Deepgram's dialect) -> OpenAI Realtime", listed=False),
    RouteEntry("/openai/v1/realtime", Route(OPENAI, "realtime"), "raw OpenAI Realtime relay"),
    RouteEntry("/openai/v1/realtime/calls", Route(OPENAI, "calls"), "WebRTC call set-up", websocket=False),
    # the bare PROXY_PATH: agent, or listen when the first `service` is `transcription`
    RouteEntry("", Route(DEEPGRAM, "agent"),
               "Deepgram Voice Agent passthrough (?service=transcription: live transcription)"),
    RouteEntry("/v1/agent/converse", Route(DEEPGRAM, "agent"), "Deepgram Voice Agent passthrough"),
    RouteEntry("/v1/listen", Route(DEEPGRAM, "listen"), "Deepgram live transcription passthrough"),
    RouteEntry("/v1/speak", Route(DEEPGRAM, "speak"), "Deepgram streaming TTS passthrough"),
    RouteEntry("/v2/listen", Route(DEEPGRAM, "listen_v2"), "Deepgram Flux turn-based transcription passthrough"),
    RouteEntry("/v2/speak", Route(DEEPGRAM, "speak_v2"), "Deepgram Flux turn-based TTS passthrough"),
)

# The paths the supervisor answers itself, by endpoint name (supervisor/endpoints.py holds one
# handler per name). The demo page's files (page.py) are served only with --demo-page.
SUPERVISOR_PATHS: dict[str, str] = {
    "/healthz": "healthz",
    "/health": "healthz",
    "/readyz": "readyz",
    "/ready": "readyz",
    "/metrics": "metrics",
    "/v1/tokens": "mint",
    "/v1/sessions": "sessions",
    "/v1/usage": "usage",
    "/v1/realtime/client_secrets": "client_secrets",
}
# Sub-paths answered by an endpoint: `/readyz/<provider>`, `/v1/sessions/<id>`, `/v1/tokens/<id>`.
SUPERVISOR_PREFIXES: dict[str, str] = {
    "/readyz/": "readyz_one",
    "/ready/": "readyz_one",
    "/v1/sessions/": "sessions",
    "/v1/tokens/": "revoke",
}

# What PROXY_PATH may neither equal, nor sit under, nor contain (P27).
RESERVED_PATHS: tuple[str, ...] = (
    *(e.path for e in ROUTE_TABLE if e.route.provider == OPENAI), *SUPERVISOR_PATHS,
)


def kinds(provider: str) -> list[str]:
    """The route kinds one provider's worker serves, in table order."""
    return list(dict.fromkeys(e.route.kind for e in ROUTE_TABLE if e.route.provider == provider))


def provider_paths(provider: str) -> dict[str, str]:
    """Path (relative to PROXY_PATH for Deepgram) -> route kind, for one provider."""
    return {e.path: e.route.kind for e in ROUTE_TABLE if e.route.provider == provider}


def check_proxy_path(path: str) -> str:
    """P27: PROXY_PATH starts with '/', and never shadows /openai or a supervisor route."""
    if not path.startswith("/") or len(path) < 2:
        raise ConfigError(f"PROXY_PATH must start with '/' and name a path, got {path!r}")
    if any(c in path for c in "?# \t") or path.endswith("/"):
        raise ConfigError(f"PROXY_PATH must be a plain path without query or trailing '/', got {path!r}")
    for reserved in RESERVED_PATHS:
        if path == reserved or path.startswith(reserved + "/") or reserved.startswith(path + "/"):
            raise ConfigError(f"PROXY_PATH {path!r} would shadow the gateway route {reserved!r}")
    return path
