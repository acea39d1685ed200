"""WebRTC call set-up on the simulated OpenAI (``POST /v1/realtime/calls``).

An SDP offer (``application/sdp``, or multipart ``sdp`` + ``session``) is answered with 201,
an SDP answer and the call's ``Location``; the session configuration is validated like a
``session.update``. Only the signalling is simulated: no media flows.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.simulate.http import HttpExchange
from voxgate.simulate.openai.protocol import Invalid, new_id
from voxgate.simulate.openai.session_config import (
    DEFAULT_MODEL,
    apply_session_update,
    default_session,
)

__all__ = ["CALLS_PATH", "CallRecord", "answer_call", "sdp_answer"]

CALLS_PATH = "/v1/realtime/calls"

HttpAnswer = tuple[int, list[tuple[str, str]], bytes]


@dataclass
class CallRecord:
    """One WebRTC call set-up (`POST /v1/realtime/calls`) as the simulator saw it."""

    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    content_type: str
    offer: str | None = None
    session: dict[str, Any] | None = None  # the session configuration as applied
    status: int | None = None
    answer: str | None = None
    call_id: str | None = None

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


def sdp_answer(offer: str) -> str:
    """A well-formed SDP answer to `offer`: the same media sections and mids, this side's ICE
    credentials, DTLS fingerprint and role, opus for audio, and a host candidate."""
    lines = [line for line in offer.replace("\r\n", "\n").split("\n") if line]
    sections: list[list[str]] = [[]]
    for line in lines:
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
    fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))
    mids = [next((x[6:] for x in sec if x.startswith("a=mid:")), str(i)) for i, sec in enumerate(sections[1:])]
    out = [
        "v=0",
        f"o=- {secrets.randbelow(1 << 62)} 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(mids),
        "a=msid-semantic:WMS *",
        f"a=fingerprint:sha-256 {fingerprint}",
    ]
    for mid, section in zip(mids, sections[1:], strict=True):
        kind = section[0].split()[0][2:]
        if kind == "audio":
            out += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "c=IN IP4 0.0.0.0", "a=rtcp-mux",
                    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
                    "a=sendrecv"]
        elif kind == "application":
            out += ["m=application 9 UDP/DTLS/SCTP webrtc-datachannel", "c=IN IP4 0.0.0.0",
                    "a=sctp-port:5000"]
        else:
            out += [f"m={kind} 0 UDP/TLS/RTP/SAVPF 0", "c=IN IP4 0.0.0.0", "a=inactive"]
        out += [f"a=mid:{mid}", f"a=ice-ufrag:{ufrag}", f"a=ice-pwd:{pwd}", "a=setup:active",
                "a=candidate:1 1 udp 2130706431 127.0.0.1 3478 typ host"]
    return "\r\n".join(out) + "\r\n"


def _openai_error(status: int, message: str, code: str | None, param: str | None = None,
                  kind: str = "invalid_request_error") -> HttpAnswer:
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return status, [("Content-Type", "application/json")], orjson.dumps(body)



def answer_call(exchange: HttpExchange, *, api_key: str, calls: list[CallRecord]) -> HttpAnswer:
    """Answer a plain HTTP request to the simulator: a call set-up is recorded in ``calls``."""
    from voxgate.workers.openai.calls import OfferError, parse_offer

    if exchange.path != CALLS_PATH:
        return _openai_error(404, "Not found.", "not_found")
    if exchange.method != "POST":
        return _openai_error(405, "Method not allowed.", "method_not_allowed")
    record = CallRecord(
        headers=exchange.headers,
        query=exchange.query,
        content_type=exchange.header("content-type") or "",
    )
    calls.append(record)
    auth = exchange.header("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
        record.status = 401
        return _openai_error(401, "Incorrect API key provided.", "invalid_api_key")
    try:
        offer = parse_offer(record.content_type, exchange.body)
    except OfferError as exc:
        record.status = exc.status
        return _openai_error(exc.status, exc.message, exc.code)
    record.offer = offer.sdp
    model = (offer.session or {}).get("model") or exchange.query_value("model") or DEFAULT_MODEL
    try:
        session = apply_session_update(
            default_session(str(model), expires_at=int(time.time()) + 3600),
            offer.session or {"type": "realtime"},
            has_assistant_audio=False,
        )
    except Invalid as exc:
        record.status = 400
        return _openai_error(400, exc.message, exc.code, exc.param)
    record.session = session
    record.status = 201
    record.answer = sdp_answer(offer.sdp)
    record.call_id = new_id("rtc")
    headers = [("Content-Type", "application/sdp"), ("Location", f"{CALLS_PATH}/{record.call_id}")]
    return 201, headers, record.answer.encode()
