"""The browser page (`--demo-page`, always on in `voxgate demo`): a handful of static files
shipped inside the package, read once at startup and answered by the supervisor.

Only the files listed here are reachable; each answer carries a strict Content-Security-Policy
(same-origin scripts, styles and WebSocket connections, nothing else) on top of the security
headers every supervisor answer has.
"""

from __future__ import annotations

from importlib.resources import files

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


def load_page() -> dict[str, tuple[bytes, str]]:
    """path -> (body, content type) for every page file, read from the installed package."""
    web = files("voxgate").joinpath("web")
    return {path: (web.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in PAGE_FILES.items()}
