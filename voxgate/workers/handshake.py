"""WebSocket opening handshakes for the splice engine, both legs, with wsproto.

Client leg: the supervisor already read the request head; the worker replays those bytes
into a wsproto server connection and answers 101 itself. Upstream leg: open TCP (or TLS),
send a wsproto client request with the injected credentials, read the response head and
classify failures for the P8/P9/D27 rules. Only the head bytes go through wsproto; whatever
follows a head belongs to the frame layer and is returned untouched.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from voxgate.workers.errors import UpstreamConnectError

MAX_RESPONSE_HEAD = 16 * 1024
_ssl_context: ssl.SSLContext | None = None


@dataclass(slots=True)
class ClientRequest:
    """The client's opening request as the worker needs it."""

    target: str
    path: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]  # names lower-case
    subprotocols: list[str]

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class ClientHandshake:
    """The server side of the client's handshake, fed the supervisor's pre-read bytes."""

    def __init__(self, pre: bytes, head_len: int) -> None:
        self._ws = WSConnection(ConnectionType.SERVER)
        self.leftover = pre[head_len:]
        try:
            self._ws.receive_data(pre[:head_len])
            event = next(iter(self._ws.events()), None)
        except RemoteProtocolError as exc:
            raise ValueError("invalid WebSocket request") from exc
        if not isinstance(event, Request):
            raise ValueError("invalid WebSocket request")
        parts = urlsplit(event.target)
        self.request = ClientRequest(
            target=event.target,
            path=parts.path,
            query=parse_qsl(parts.query, keep_blank_values=True),
            headers=[(bytes(k).decode("latin-1").lower(), bytes(v).decode("latin-1")) for k, v in event.extra_headers],
            subprotocols=list(event.subprotocols),
        )

    def accept_bytes(self, subprotocol: str | None) -> bytes:
        """The 101 response; no extensions (P31: no permessage-deflate)."""
        if subprotocol is not None and subprotocol not in self.request.subprotocols:
            subprotocol = None
        return self._ws.send(AcceptConnection(subprotocol=subprotocol, extensions=[]))

    async def accept(self, stream: trio.abc.Stream, subprotocol: str | None) -> None:
        await stream.send_all(self.accept_bytes(subprotocol))


def _tls_context() -> ssl.SSLContext:
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = ssl.create_default_context()
    return _ssl_context


def upstream_target(base_url: str, query: list[tuple[str, str]]) -> tuple[str, str, int, bool, str]:
    """(host, host header, port, tls, request target) for a ws/wss URL plus extra query."""
    parts = urlsplit(base_url)
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    host_header = host if parts.port is None else f"{host}:{port}"
    pairs = parse_qsl(parts.query, keep_blank_values=True) + list(query)
    path = parts.path or "/"
    target = path + ("?" + urlencode(pairs) if pairs else "")
    return host, host_header, port, tls, target


async def _open_stream(host: str, port: int, tls: bool) -> trio.abc.Stream:
    try:
        if tls:
            stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                host, port, ssl_context=_tls_context(), https_compatible=True
            )
            await stream.do_handshake()  # type: ignore[attr-defined]
            return stream
        return await trio.open_tcp_stream(host, port)
    except socket.gaierror:
        raise UpstreamConnectError("dns") from None
    except ssl.SSLError:
        raise UpstreamConnectError("tls") from None
    except trio.BrokenResourceError as exc:
        kind = "tls" if isinstance(exc.__cause__, ssl.SSLError) else "refused"
        raise UpstreamConnectError(kind) from None
    except OSError:
        raise UpstreamConnectError("refused") from None


async def open_upstream(
    base_url: str,
    query: list[tuple[str, str]],
    headers: list[tuple[str, str]],
    subprotocols: list[str] | None = None,
) -> tuple[trio.abc.Stream, bytes]:
    """Connect and complete the client handshake; returns (stream, bytes after the 101).

    Raises UpstreamConnectError; the caller bounds the time (connect timeout)."""
    host, host_header, port, tls, target = upstream_target(base_url, query)
    stream = await _open_stream(host, port, tls)
    try:
        leftover = await _client_handshake(stream, host_header, target, headers, subprotocols or [])
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)
        raise
    return stream, leftover


async def _client_handshake(
    stream: trio.abc.Stream, host: str, target: str, headers: list[tuple[str, str]], subprotocols: list[str]
) -> bytes:
    ws = WSConnection(ConnectionType.CLIENT)
    try:
        request = ws.send(Request(host=host, target=target, extra_headers=headers, subprotocols=subprotocols))
    except LocalProtocolError:
        raise UpstreamConnectError("protocol") from None
    try:
        await stream.send_all(request)
        buf = bytearray()
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > MAX_RESPONSE_HEAD:
                raise UpstreamConnectError("protocol")
            data = await stream.receive_some(65536)
            if not data:
                raise UpstreamConnectError("refused")
            buf += data
    except (trio.BrokenResourceError, OSError):
        raise UpstreamConnectError("refused") from None
    head, leftover = bytes(buf[: end + 4]), bytes(buf[end + 4 :])
    try:
        ws.receive_data(head)
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return leftover
            if isinstance(event, RejectConnection):
                raise UpstreamConnectError("rejected", event.status_code)
            if isinstance(event, RejectData):
                continue
    except RemoteProtocolError:
        raise UpstreamConnectError("protocol") from None
    raise UpstreamConnectError("protocol")
