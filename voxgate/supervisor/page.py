"""The browser page (`--demo-page`, always on in `voxgate demo`): a handful of static files
shipped inside the package, read once at startup and answered by the supervisor.

Only the files listed here are reachable; each answer carries a strict Content-Security-Policy
(same-origin scripts, styles and WebSocket connections, nothing else) on top of the security
headers every supervisor answer has.
"""

from __future__ import annotations

from collections import OrderedDict
from importlib.resources import files
from typing import Any

PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/demo/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/demo/protocol.js": ("protocol.js", "text/javascript; charset=utf-8"),
    "/demo/pcm-worklet.js": ("pcm-worklet.js", "text/javascript; charset=utf-8"),
    "/demo/style.css": ("style.css", "text/css; charset=utf-8"),
}

PAGE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "microphone=(self), camera=(), geolocation=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cache-Control", "no-store"),
]


# A browser cannot read the HTTP answer to a refused WebSocket upgrade (it reports close 1006
# and nothing else), so the page asks here why its own last attempt was refused.
REFUSAL_PATH = "/demo/refusal"
REFUSAL_TTL = 30.0
REFUSAL_KEEP = 1024


class Refusals:
    """The last upgrade refusal per client IP (status + the JSON body already sent), for the
    page's `GET /demo/refusal`; bounded in entries and age. Bodies name the rule, never a
    token."""

    def __init__(self) -> None:
        self._last: OrderedDict[str, tuple[float, int, dict[str, Any]]] = OrderedDict()

    def note(self, ip: str, status: int, body: dict[str, Any], now: float) -> None:
        self._last.pop(ip, None)
        self._last[ip] = (now, status, body)
        while len(self._last) > REFUSAL_KEEP:
            self._last.popitem(last=False)

    def recent(self, ip: str, now: float) -> dict[str, Any]:
        """`{"status", "error", "message"}` of a refusal in the last REFUSAL_TTL s, else `{}`."""
        entry = self._last.get(ip)
        if entry is None or now - entry[0] > REFUSAL_TTL:
            return {}
        return {"status": entry[1], **entry[2]}


def load_page() -> dict[str, tuple[bytes, str]]:
    """path -> (body, content type) for every page file, read from the installed package."""
    web = files("voxgate").joinpath("web")
    return {path: (web.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in PAGE_FILES.items()}
