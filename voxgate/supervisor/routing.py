"""Where a request path goes: a provider worker route, a supervisor HTTP endpoint, or nowhere.

The table itself is `voxgate.routes`; this module applies it to one configuration (PROXY_PATH
filled in) and to a request's path and query. Pure functions over the path and query.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from voxgate.config import DEEPGRAM
from voxgate.routes import ROUTE_TABLE, SUPERVISOR_PATHS, SUPERVISOR_PREFIXES, Route


def split_target(target: str) -> tuple[str, list[tuple[str, str]]]:
    """Path and ordered query pairs (repeats and blank values kept)."""
    parts = urlsplit(target)
    return parts.path or "/", parse_qsl(parts.query, keep_blank_values=True)


def first_value(query: list[tuple[str, str]], name: str) -> str | None:
    for key, value in query:
        if key == name:
            return value
    return None


def supervisor_endpoint(path: str) -> tuple[str, str] | None:
    """(endpoint name, the sub-path after its prefix) of a path the supervisor answers itself."""
    name = SUPERVISOR_PATHS.get(path)
    if name is not None:
        return name, ""
    for prefix, name in SUPERVISOR_PREFIXES.items():
        if path.startswith(prefix):
            return name, path[len(prefix):]
    return None


class Router:
    """Maps paths to routes for one configuration (the table with PROXY_PATH filled in)."""

    def __init__(self, proxy_path: str) -> None:
        self.proxy_path = proxy_path
        self._websocket: dict[str, Route] = {}
        self._http: dict[str, Route] = {}
        for entry in ROUTE_TABLE:
            table = self._websocket if entry.websocket else self._http
            table.setdefault(entry.full_path(proxy_path), entry.route)

    def http_route(self, method: str, path: str) -> Route | None:
        """A plain HTTP request a worker serves: the WebRTC call set-up (a POST)."""
        return self._http.get(path) if method == "POST" else None

    def websocket_route(self, path: str, query: list[tuple[str, str]]) -> Route | None:
        """The worker route for a WebSocket path, or None when no provider serves it."""
        if path == self.proxy_path:
            service = first_value(query, "service")
            return Route(DEEPGRAM, "listen" if service == "transcription" else "agent")
        return self._websocket.get(path)

    def provider_path(self, provider: str) -> str:
        """A provider's first path (its main entry point, shown by `/readyz`)."""
        return next(e.full_path(self.proxy_path) for e in ROUTE_TABLE if e.route.provider == provider)

    def endpoints(self) -> list[tuple[str, Route, str]]:
        """Every listed WebSocket path with its route and description, for startup lines and
        `voxgate check`."""
        return [
            (e.full_path(self.proxy_path), e.route, e.description)
            for e in ROUTE_TABLE if e.websocket and e.listed
        ]
