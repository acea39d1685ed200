"""Small plain HTTP/1.1 responses, written the same way by the supervisor and the workers.

Every response is `Connection: close` and carries the security headers (deepgram-passthrough
P25), with HSTS when the client came over TLS. Both the supervisor's own endpoints and a
worker's plain HTTP route (the WebRTC call set-up) answer through `response`.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("X-XSS-Protection", "1; mode=block"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000; includeSubDomains")


def response(
    status: int,
    body: bytes | str | dict | None = None,
    *,
    headers: list[tuple[str, str]] | None = None,
    tls: bool = False,
    content_type: str | None = None,
) -> bytes:
    """A complete `Connection: close` HTTP/1.1 response; dict bodies become JSON."""
    default_type = "text/plain; charset=utf-8"
    if isinstance(body, dict):
        body = orjson.dumps(body)
        default_type = "application/json; charset=utf-8"
    elif isinstance(body, str):
        body = body.encode()
    elif body is None:
        body = HTTPStatus(status).phrase.encode() if status >= 400 else b""
    content_type = content_type or default_type
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    all_headers = list(SECURITY_HEADERS) + ([HSTS] if tls else [])
    if status != 204:
        all_headers += [("Content-Type", content_type), ("Content-Length", str(len(body)))]
    all_headers.append(("Connection", "close"))
    all_headers += headers or []
    lines += [f"{k}: {v}" for k, v in all_headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body if status != 204 else b"")
