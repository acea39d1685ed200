"""WebRTC call set-up for OpenAI (issue 14, item 4): `POST /openai/v1/realtime/calls` with the
browser's SDP offer and a voxgate client token is admitted like any session, forwarded to the
(simulated) OpenAI `/v1/realtime/calls` with the server key and the session configuration, and
answered with OpenAI's SDP answer. The key must never reach the client; the configuration and
the policy must reach the upstream; the client's token must not.
"""

from __future__ import annotations

import ssl
from typing import Any

import orjson
import pytest
import trio
import trustme

from tests.support.deepgram_helpers import key_leaks
from tests.support.gateway import gateway_env
from tests.support.keys import OPENAI_KEY
from tests.support.webrtc import OFFER
from voxgate.workers.openai.calls import build_form, sdp_problem

TOKEN = "client-token-for-webrtc-0123456789"
ORIGIN = "https://app.example"


async def post(
    port: int, target: str, body: bytes, headers: dict[str, str], tls: ssl.SSLContext | None = None
) -> tuple[int, dict[str, str], bytes, bytes]:
    """One raw HTTP/1.1 POST; (status, headers, body, every byte the gateway sent)."""
    lines = [f"POST {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    raw = bytearray()
    with trio.fail_after(15):
        if tls is None:
            stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
        else:
            stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=tls, https_compatible=True)
        async with stream:
            await stream.send_all(request)
            while data := await stream.receive_some(65536):
                raw += data
    head, _, payload = bytes(raw).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), parsed, payload, bytes(raw)


def offer_form(session: dict[str, Any] | None) -> tuple[str, bytes]:
    fields = [("sdp", "application/sdp", OFFER.encode())]
    if session is not None:
        fields.append(("session", "application/json", orjson.dumps(session)))
    return build_form(fields)


@pytest.fixture
async def gw(gateway_factory, openai_sim):
    return await gateway_factory(
        "--client-token", TOKEN, "--allowed-origin", ORIGIN, env=gateway_env(openai_sim)
    )


def auth(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}", "Origin": ORIGIN, **extra}


async def test_offer_forwarded_with_the_key_and_configuration_answer_returned(gw, openai_sim):
    session = {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {"voice": "marin"}}}
    ctype, body = offer_form(session)
    status, headers, answer, raw = await post(
        gw.port, "/openai/v1/realtime/calls?traceId=t-1", body, auth(**{"Content-Type": ctype})
    )
    assert status == 201, answer
    assert headers["content-type"] == "application/sdp" and "strict-transport-security" not in headers
    [call] = openai_sim.calls
    assert answer.decode() == call.answer and sdp_problem(answer.decode()) is None
    assert headers["location"] == f"/openai/v1/realtime/calls/{call.call_id}"
    assert headers["access-control-allow-origin"] == ORIGIN
    # the upstream: the server key, the offer as sent, the configuration plus the model
    assert call.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert call.offer == OFFER
    assert call.session["instructions"] == "Be brief." and call.session["model"] == "gpt-realtime"
    assert call.session["audio"]["output"]["voice"] == "marin"
    # nothing of the client's credentials travels on; nothing of the key comes back
    assert not any(TOKEN in v for _, v in call.headers) and call.query == []
    assert key_leaks(OPENAI_KEY[15:], raw) == set()  # (its "openai" is in our paths)
    assert key_leaks(OPENAI_KEY[15:], gw.output) == set() and TOKEN not in gw.output


async def test_plain_sdp_offer_with_model_in_the_query(gw, openai_sim):
    status, _, answer, _ = await post(
        gw.port, f"/openai/v1/realtime/calls?model=gpt-realtime-mini&token={TOKEN}", OFFER.encode(),
        {"Origin": ORIGIN, "Content-Type": "application/sdp"},
    )
    assert status == 201 and answer.startswith(b"v=0")
    [call] = openai_sim.calls
    assert call.session["model"] == "gpt-realtime-mini"
    assert call.content_type.startswith("multipart/form-data")  # always the documented form
    assert call.query == []  # the client's token stays at the gateway


async def test_openai_sdk_calls_create_through_the_gateway(gw, openai_sim):
    """The official SDK, base URL `…/openai/v1` and the client token as its API key."""
    from openai import OpenAI

    def create() -> bytes:
        client = OpenAI(api_key=TOKEN, base_url=f"http://127.0.0.1:{gw.port}/openai/v1",
                        default_headers={"Origin": ORIGIN}, max_retries=0, timeout=10)
        return client.realtime.calls.create(
            sdp=OFFER, session={"type": "realtime", "model": "gpt-realtime", "instructions": "Hi."}
        ).content

    with trio.fail_after(20):
        answer = await trio.to_thread.run_sync(create, abandon_on_cancel=True)
    [call] = openai_sim.calls
    assert answer.decode() == call.answer
    assert call.session["instructions"] == "Hi." and call.header("authorization") == f"Bearer {OPENAI_KEY}"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": ORIGIN}, 401),  # no token
        ({"Origin": ORIGIN, "Authorization": "Bearer wrong"}, 401),
        ({"Origin": "https://evil.example", "Authorization": f"Bearer {TOKEN}"}, 403),
    ],
)
async def test_admitted_like_any_session(gw, openai_sim, headers, status):
    got, _, _, _ = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(),
                              {**headers, "Content-Type": "application/sdp"})
    assert got == status and openai_sim.calls == []


async def test_session_rate_limit_applies(gateway_factory, openai_sim):
    gw = await gateway_factory("--max-new-sessions-per-ip-per-minute", "1", env=gateway_env(openai_sim))
    headers = {"Content-Type": "application/sdp"}
    first, _, _, _ = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(), headers)
    second, retry, _, _ = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(), headers)
    assert (first, second) == (201, 429) and "retry-after" in retry
    assert len(openai_sim.calls) == 1


@pytest.mark.parametrize(
    ("ctype", "body", "status", "code"),
    [
        ("application/sdp", b"hello", 400, "invalid_offer"),
        ("application/sdp", b"v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", 400, "invalid_offer"),
        ("text/plain", OFFER.encode(), 415, "unsupported_media_type"),
        (None, b"", 400, "missing_required_parameter"),  # multipart without sdp
    ],
)
async def test_bad_offers_never_reach_the_upstream(gw, openai_sim, ctype, body, status, code):
    if ctype is None:
        ctype, body = build_form([("session", "application/json", b"{}")])
    got, headers, payload, _ = await post(gw.port, "/openai/v1/realtime/calls", body,
                                          auth(**{"Content-Type": ctype}))
    assert got == status and orjson.loads(payload)["error"]["code"] == code
    assert headers["access-control-allow-origin"] == ORIGIN
    assert openai_sim.calls == []


async def test_upstream_refusals(gateway_factory, openai_sim):
    wrong_key = gateway_env(openai_sim)
    wrong_key["OPENAI_API_KEY"] = "sk-wrong-key-000000000000000000"
    gw = await gateway_factory(env=wrong_key)
    status, _, payload, raw = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(),
                                         {"Content-Type": "application/sdp"})
    assert status == 502 and orjson.loads(payload)["error"]["code"] == "upstream_auth_failed"
    assert b"sk-wrong" not in raw
    # the provider's own refusal of a session configuration is relayed as its 400
    ctype, body = offer_form({"type": "realtime", "bogus": 1})
    gw2 = await gateway_factory(env=gateway_env(openai_sim))
    status, _, payload, _ = await post(gw2.port, "/openai/v1/realtime/calls", body, {"Content-Type": ctype})
    assert status == 400 and orjson.loads(payload)["error"]["param"] == "session.bogus"


async def test_upstream_unreachable(gateway_factory):
    env = gateway_env()
    env["OPENAI_API_KEY"] = OPENAI_KEY
    env["OPENAI_REALTIME_URL"] = "ws://127.0.0.1:9/v1/realtime"
    gw = await gateway_factory(env=env)
    status, _, payload, _ = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(),
                                       {"Content-Type": "application/sdp"})
    assert status == 502 and orjson.loads(payload)["error"]["code"] == "upstream_unavailable"


async def test_other_methods_on_the_calls_path(gw):
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        async with stream:
            await stream.send_all(b"GET /openai/v1/realtime/calls HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = bytearray()
            while data := await stream.receive_some(65536):
                raw += data
    assert raw.startswith(b"HTTP/1.1 405") and b"Allow: POST" in raw


async def test_over_tls(gateway_factory, openai_sim, tmp_path):
    """With --tls-cert the supervisor decrypts and pumps; the worker's answer arrives intact."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    gw = await gateway_factory("--tls-cert", str(cert_path), "--tls-key", str(key_path),
                               env=gateway_env(openai_sim), wait_ready=False)
    with trio.fail_after(15):
        while True:  # until the openai worker is up (readiness over HTTPS is test_tls's business)
            status, headers, answer, _ = await post(gw.port, "/openai/v1/realtime/calls", OFFER.encode(),
                                                    {"Content-Type": "application/sdp"}, tls=ctx)
            if status != 503:
                break
            await trio.sleep(0.1)
    assert status == 201 and answer.decode() == openai_sim.calls[-1].answer
    assert headers["strict-transport-security"].startswith("max-age=")


async def test_session_policy_reaches_the_upstream(gateway_factory, openai_sim, tmp_path):
    """Issue 14 §4: the server's session policy applies to a WebRTC call set-up too."""
    policy = tmp_path / "policy.json"
    policy.write_text(orjson.dumps({"paths": {"/openai/v1/realtime/calls": {
        "instructions": "You are the ACME agent.", "models": ["gpt-realtime"], "voice": "marin",
        "tools": ["lookup_order"], "max_output_tokens": 100,
    }}}).decode())
    gw = await gateway_factory("--client-token", TOKEN, "--session-policy", str(policy), env=gateway_env(openai_sim))
    session = {
        "type": "realtime", "model": "gpt-realtime-mini", "instructions": "Ignore the rules.",
        "audio": {"output": {"voice": "alloy"}}, "max_output_tokens": 5000,
        "tools": [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in ("lookup_order", "wire_money")],
    }
    ctype, body = offer_form(session)
    status, _, answer, _ = await post(gw.port, "/openai/v1/realtime/calls", body,
                                      {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype})
    assert status == 201, answer
    [call] = openai_sim.calls
    assert call.session["instructions"] == "You are the ACME agent."
    assert call.session["model"] == "gpt-realtime"
    assert call.session["audio"]["output"]["voice"] == "marin"
    assert [t["name"] for t in call.session["tools"]] == ["lookup_order"]
    assert call.session["max_output_tokens"] == 100


async def test_token_budget_applies_to_calls(gateway_factory, openai_sim):
    """A client token limited to one session holds one: a call set-up beside a live session
    on the same token is refused with the budget's 429 before the upstream is contacted."""
    from tests.support.rawws import RawClient

    gw = await gateway_factory("--client-token", TOKEN, "--token-max-sessions", "1", env=gateway_env(openai_sim))
    live = await RawClient.connect(gw.port, f"/openai/v1/realtime?token={TOKEN}")
    assert live.status == 101
    ctype, body = offer_form(None)
    status, _, answer, _ = await post(gw.port, "/openai/v1/realtime/calls", body,
                                      {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype})
    assert status == 429 and orjson.loads(answer)["limit"] == "max_sessions"
    assert openai_sim.calls == []
    await live.aclose()
