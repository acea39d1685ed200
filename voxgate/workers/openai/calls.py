"""WebRTC call set-up for OpenAI Realtime: `POST /openai/v1/realtime/calls` (issue 14).

A browser posts its SDP offer here (with a voxgate client token, admitted by the supervisor
like any session: origin, caps, rate, token). The OpenAI worker, not the supervisor, makes the
upstream request: the supervisor never talks to a provider or uses a provider key, and the call
set-up is a provider session like the WebSocket ones (its latency, failures, counters and
logs live in the provider's worker, and a slow or failing upstream cannot touch the listener).

The worker forwards the offer to OpenAI's `/v1/realtime/calls` as the documented multipart form
(`sdp` + `session`) with the server key and the session configuration (the client's session
fields, `type: realtime`, and the model: the client's `session.model`, else `?model=`, else
OPENAI_REALTIME_URL's or the default), and returns OpenAI's SDP answer. Media then flows
between the browser and OpenAI directly, so per-session idle/duration limits cannot apply
after set-up. The key never reaches the client: OpenAI's answer is relayed as SDP, and an
upstream error body is relayed only after redaction.

Pure helpers (request parsing, multipart, SDP checks) are shared with the OpenAI simulator.
"""

from __future__ import annotations

import email.parser
import email.policy
import secrets
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import h11
import orjson
import trio

from voxgate.http_response import response
from voxgate.policy import apply_policy, rules_for
from voxgate.workers.keyscrub import KeyScrubber
from voxgate.workers.openai import upstream
from voxgate.workers.openai.upstream_map import redact
from voxgate.workers.runtime import Session

__all__ = [
    "CALLS_PATH",
    "CallOffer",
    "OfferError",
    "build_form",
    "calls_url",
    "handle_calls",
    "parse_offer",
    "parse_request",
    "sdp_problem",
]

CALLS_PATH = "/openai/v1/realtime/calls"
MAX_SDP_BYTES = 64 << 10
UPSTREAM_RESPONSE_TIMEOUT = 30.0
MAX_UPSTREAM_RESPONSE = 1 << 20


class OfferError(Exception):
    """The client's request cannot be forwarded; `status` and `code` go back to it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-case
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def query(self) -> list[tuple[str, str]]:
        return parse_qsl(urlsplit(self.target).query, keep_blank_values=True)


@dataclass(frozen=True, slots=True)
class CallOffer:
    sdp: str
    session: dict[str, Any] | None  # the client's `session` form field, if any


def parse_request(data: bytes) -> HttpRequest:
    """One complete HTTP/1.1 request (head and body) as read by the supervisor."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")  # the request is complete; no more bytes will come
    request = None
    body = bytearray()
    for _ in range(10_000):
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise OfferError(400, "bad_request", "Malformed HTTP request.") from exc
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.NEED_DATA:
            break
    if request is None:
        raise OfferError(400, "bad_request", "Malformed HTTP request.")
    return HttpRequest(
        method=request.method.decode("ascii", "replace"),
        target=request.target.decode("latin-1"),
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in request.headers],
        body=bytes(body),
    )


def _form_fields(content_type: str, body: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise OfferError(400, "invalid_form", "The multipart body could not be parsed.")
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if isinstance(name, str) and name not in fields:
            payload = part.get_payload(decode=True)
            fields[name] = payload if isinstance(payload, bytes) else b""
    return fields


def parse_offer(content_type: str | None, body: bytes) -> CallOffer:
    """The SDP offer and optional session from `application/sdp` or the multipart form."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind == "application/sdp":
        sdp_bytes, session = body, None
    elif kind == "multipart/form-data":
        fields = _form_fields(content_type or "", body)
        if "sdp" not in fields:
            raise OfferError(400, "missing_required_parameter", "Missing required parameter: 'sdp'.")
        sdp_bytes = fields["sdp"]
        session = None
        if "session" in fields:
            try:
                session = orjson.loads(fields["session"])
            except orjson.JSONDecodeError as exc:
                raise OfferError(400, "invalid_json", "The 'session' field is not JSON.") from exc
            if not isinstance(session, dict):
                raise OfferError(400, "invalid_type", "The 'session' field must be a JSON object.")
    else:
        raise OfferError(
            415, "unsupported_media_type",
            "Send the SDP offer as application/sdp or as multipart/form-data with an 'sdp' field.",
        )
    try:
        sdp = sdp_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OfferError(400, "invalid_offer", "The SDP offer is not UTF-8 text.") from exc
    problem = sdp_problem(sdp)
    if problem:
        raise OfferError(400, "invalid_offer", f"Invalid SDP offer: {problem}.")
    return CallOffer(sdp=sdp, session=session)


def sdp_problem(sdp: str) -> str | None:
    """Why `sdp` is not a usable WebRTC offer/answer, or None (RFC 8866 shape, audio media)."""
    if not sdp.strip():
        return "it is empty"
    if len(sdp.encode()) > MAX_SDP_BYTES:
        return "it is too large"
    lines = [line for line in sdp.replace("\r\n", "\n").split("\n") if line]
    if lines[0] != "v=0":
        return "it must start with v=0"
    if any(len(line) < 2 or line[1] != "=" for line in lines):
        return "every line must be <type>=<value>"
    if not any(line.startswith("m=audio ") for line in lines):
        return "it has no audio media section"
    return None


def build_form(fields: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
    """A multipart/form-data body from (name, content type, value); returns (content type, body)."""
    boundary = "voxgate-" + secrets.token_hex(12)
    out = bytearray()
    for name, ctype, value in fields:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"\r\n'.encode()
        out += f"Content-Type: {ctype}\r\n\r\n".encode()
        out += value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", bytes(out)


def calls_url(realtime_url: str) -> tuple[str, str, int, bool, str]:
    """(host, Host header, port, tls, path) of the calls endpoint beside OPENAI_REALTIME_URL."""
    parts = urlsplit(realtime_url)
    tls = parts.scheme in ("wss", "https")
    host = parts.hostname or "api.openai.com"
    port = parts.port or (443 if tls else 80)
    default = (tls and port == 443) or (not tls and port == 80)
    host_header = host if default else f"{host}:{port}"
    path = (parts.path.rstrip("/") or "/v1/realtime") + "/calls"
    return host, host_header, port, tls, path


def session_config(
    client_session: dict[str, Any] | None, query: list[tuple[str, str]], default_model: str
) -> dict[str, Any]:
    """The session sent upstream: the client's fields, `type: realtime`, and a model."""
    session = dict(client_session or {})
    model = session.get("model")
    if not (isinstance(model, str) and model):
        model = next((v for k, v in query if k == "model" and v), default_model)
    session["type"] = "realtime"
    session["model"] = model
    return session


@cache
def _tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


@dataclass(frozen=True, slots=True)
class UpstreamAnswer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


async def post_upstream(
    realtime_url: str, headers: list[tuple[str, str]], body: bytes, *, connect_timeout: float
) -> UpstreamAnswer:
    """POST `body` to the calls endpoint (h11 over trio; TLS for https/wss)."""
    host, host_header, port, tls, path = calls_url(realtime_url)
    with trio.fail_after(connect_timeout):
        stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        if tls:
            stream = trio.SSLStream(stream, _tls_context(), server_hostname=host, https_compatible=True)
            await stream.do_handshake()
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="POST", target=path,
            headers=[("Host", host_header), *headers, ("Content-Length", str(len(body)))],
        )
        with trio.fail_after(UPSTREAM_RESPONSE_TIMEOUT):
            await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            response = None
            data = bytearray()
            for _ in range(100_000):
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await stream.receive_some(65536)
                    conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.Response):
                    response = event
                elif isinstance(event, h11.Data):
                    data += event.data
                    if len(data) > MAX_UPSTREAM_RESPONSE:
                        raise h11.RemoteProtocolError("upstream response too large")
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
    if response is None:
        raise h11.RemoteProtocolError("no response")
    return UpstreamAnswer(
        status=response.status_code,
        headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in response.headers],
        body=bytes(data),
    )


def error_body(code: str, message: str, kind: str = "invalid_request_error") -> bytes:
    """OpenAI's error shape, so the SDKs report it as they would OpenAI's own."""
    return orjson.dumps({"error": {"type": kind, "code": code, "message": message, "param": None}})


def _cors(request: HttpRequest) -> list[tuple[str, str]]:
    origin = request.header("origin")
    if not origin:
        return []
    return [("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Credentials", "true"),
            ("Access-Control-Expose-Headers", "Location"), ("Vary", "Origin")]


async def set_up_call(session: Session, request: HttpRequest) -> tuple[int, bytes, str, list[tuple[str, str]]]:
    """(status, body, content type, extra headers) for the client."""
    config = session.config
    offer = parse_offer(request.header("content-type"), request.body)
    base, model = upstream.base_and_model(config)
    upstream_session = session_config(offer.session, request.query, model)
    rules = rules_for(config.session_policy, session.route, session.token_label)
    if rules:
        # The browser cannot be told afterwards (no socket): pinned fields are just applied.
        changed = apply_policy(upstream_session, rules)
        if changed:
            session.log.info("session policy applied", fields=",".join(changed))
    ctype, form = build_form([
        ("sdp", "application/sdp", offer.sdp.encode()),
        ("session", "application/json", orjson.dumps(upstream_session)),
    ])
    headers = [
        ("Authorization", f"Bearer {config.openai_key}"), ("Content-Type", ctype),
        ("Accept", "application/sdp"), ("User-Agent", "voxgate"),
    ]
    started = trio.current_time()
    try:
        answer = await post_upstream(base, headers, form, connect_timeout=config.connect_timeout)
    except trio.TooSlowError:
        session.counters.upstream_failures["timeout"] += 1
        return 504, error_body("upstream_unavailable", "The provider did not answer in time.", "server_error"), "application/json", []
    except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        session.counters.upstream_failures["refused"] += 1
        return 502, error_body("upstream_unavailable", "The provider could not be reached.", "server_error"), "application/json", []
    latency = trio.current_time() - started
    session.connect_latency = lambda: latency
    session.summary.update(upstream_status=answer.status, connect_ms=round(latency * 1000, 1))
    if answer.status in (401, 403):
        session.counters.upstream_failures["rejected"] += 1
        message = "The provider rejected the gateway's credentials."
        return 502, error_body("upstream_auth_failed", message, "server_error"), "application/json", []
    if 200 <= answer.status < 300:
        problem = sdp_problem(answer.body.decode("utf-8", "replace"))
        if problem:
            message = "The provider's SDP answer was not usable."
            return 502, error_body("upstream_invalid_answer", message, "server_error"), "application/json", []
        extra = []
        location = answer.header("location")
        if location:
            call_id = location.rstrip("/").rsplit("/", 1)[-1]
            extra.append(("Location", f"{CALLS_PATH}/{call_id}"))
        return answer.status, answer.body, "application/sdp", extra
    # the provider refused the offer or the session: its reason helps the client; no key in it
    body = redact(answer.body.decode("utf-8", "replace")).encode()
    scrubber = KeyScrubber.for_secret(config.openai_key)
    masked = scrubber.mask(body) if scrubber is not None else None
    body = bytes(masked) if masked is not None else body
    kind = answer.header("content-type") or "application/json"
    return answer.status if 400 <= answer.status < 500 else 502, body, kind, []


async def handle_calls(session: Session) -> None:
    """Route handler: one request, one response, then the connection closes."""
    cors: list[tuple[str, str]] = []
    try:
        request = parse_request(session.preread)
        cors = _cors(request)
        status, body, ctype, extra = await set_up_call(session, request)
    except OfferError as exc:
        status, body, ctype, extra = exc.status, error_body(exc.code, exc.message), "application/json", []
    session.summary["status"] = status
    session.log.info("webrtc call set-up", status=status)
    try:
        extra = [("Cache-Control", "no-store"), *extra, *cors]
        await session.stream.send_all(
            response(status, body, headers=extra, content_type=ctype, tls=session.tls)
        )
        await session.stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        session.log.info("client left before the answer")

