"""Where a request path goes: a provider worker route, a supervisor HTTP endpoint, or nowhere.

Pure functions over the path and query; the path table is built from the configured
PROXY_PATH (architecture §2, deepgram-passthrough P1/P2).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from voxgate.config import DEEPGRAM, OPENAI


@dataclass(frozen=True, slots=True)
class Route:
    """A WebSocket route served by a worker: provider plus what the worker does with it."""

    provider: str
    # openai: "translate" | "realtime" | "calls"; deepgram: "agent" | "listen" | "speak" | "listen_v2" | "speak_v2"
    kind: str

    @property
    def name(self) -> str:
        return f"{self.provider}.{self.kind}"


HTTP_ENDPOINTS = {
    "/healthz": "healthz",
    "/health": "healthz",
    "/readyz": "readyz",
    "/ready": "readyz",
    "/metrics": "metrics",
    "/v1/tokens": "tokens",
}


def split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    """Path and ordered query pairs (repeats and blank values kept)."""
    parts = urlsplit(target)
    return parts.path or "/", parse_qsl(parts.query, keep_blank_values=True)


def first_value(query: list[tuple[str, str]], name: str) -> str | None:
    for key, value in query:
        if key == name:
            return value
    return None


class Router:
    """Maps paths to routes for one configuration."""

    def __init__(self, proxy_path: str) -> None:
        self.proxy_path = proxy_path
        self._exact: dict[str, Route] = {
            "/openai": Route(OPENAI, "translate"),
            "/openai/v1/agent/converse": Route(OPENAI, "translate"),
            "/openai/v1/realtime": Route(OPENAI, "realtime"),
            f"{proxy_path}/v1/agent/converse": Route(DEEPGRAM, "agent"),
            f"{proxy_path}/v1/listen": Route(DEEPGRAM, "listen"),
            f"{proxy_path}/v1/speak": Route(DEEPGRAM, "speak"),
            f"{proxy_path}/v2/listen": Route(DEEPGRAM, "listen_v2"),
            f"{proxy_path}/v2/speak": Route(DEEPGRAM, "speak_v2"),
        }

    def http_route(self, method: str, path: str) -> Route | None:
        """A plain HTTP request a worker serves: the WebRTC call set-up (a POST)."""
        if path == "/openai/v1/realtime/calls" and method == "POST":
            return Route(OPENAI, "calls")
        return None

    def websocket_route(self, path: str, query: list[tuple[str, str]]) -> Route | None:
        """The worker route for a WebSocket path, or None when no provider serves it."""
        if path == self.proxy_path:
            service = first_value(query, "service")
            return Route(DEEPGRAM, "listen" if service == "transcription" else "agent")
        return self._exact.get(path)

    def endpoints(self) -> list[tuple[str, Route]]:
        """Every WebSocket path with its route, for startup lines and `voxgate check`."""
        rows = [("/openai", Route(OPENAI, "translate")), ("/openai/v1/realtime", Route(OPENAI, "realtime"))]
        rows.append((self.proxy_path, Route(DEEPGRAM, "agent")))
        for path, route in self._exact.items():
            if route.provider == DEEPGRAM:
                rows.append((path, route))
        return rows
