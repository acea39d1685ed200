"""Admission and per-session limits through the real gateway (issue 5): every rejection
happens before any 101, tokens never reach the upstream, limits close with clear codes."""

from __future__ import annotations

import json

import pytest
import trio
import trio_websocket as tws

from tests.support.gateway import echo_env
from tests.support.rawws import OP_BIN, OP_CLOSE, OP_TEXT, RawClient, close_code

TOKEN = "Zq8xW3vNp1-tok"
ADMIN = "Jk5RmT2yq9-adm"


async def status_of(port: int, path: str, **kw) -> tuple[int, RawClient]:
    client = await RawClient.connect(port, path, **kw)
    return client.status, client


async def test_origin_allow_list(gateway_factory, echo):
    gw = await gateway_factory("--allowed-origin", "https://app.example", env=echo_env(
        echo, VOXGATE_ALLOWED_ORIGINS="https://other.example,https://two.example"))
    # the flag wins over the environment
    for path in ("/deepgram-proxy", "/openai", "/openai/v1/realtime"):
        status, client = await status_of(gw.port, path, headers=[("Origin", "https://evil.example")])
        assert status == 403
        assert b"Origin not allowed" in await client.body()
        await client.aclose()
        status, client = await status_of(gw.port, path)  # no Origin at all
        assert status == 403
        await client.aclose()
        status, client = await status_of(gw.port, path, headers=[("Origin", "https://app.example")])
        assert status == 101
        await client.aclose()
    code, headers, _ = gw.http("/openai", method="OPTIONS", headers={"Origin": "https://app.example"})
    assert code == 204 and headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert gw.http("/openai", method="OPTIONS", headers={"Origin": "https://evil.example"})[0] == 403
    assert "any origin may connect" not in gw.output


async def test_any_origin_is_announced(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo))
    assert "any origin may connect" in gw.output


async def test_static_tokens_every_source_and_never_upstream(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo, VOXGATE_CLIENT_TOKENS=f"other,{TOKEN}"))
    for path in ("/deepgram-proxy", "/openai/v1/realtime"):
        status, client = await status_of(gw.port, path)
        assert status == 401 and b"token" in await client.body()
        await client.aclose()
        status, client = await status_of(gw.port, path + "?token=wrong")
        assert status == 401
        await client.aclose()
    cases = [
        ("/deepgram-proxy?token=" + TOKEN + "&model=nova", {}, None),
        ("/deepgram-proxy", {"headers": [("Authorization", f"Bearer {TOKEN}")]}, None),
        ("/deepgram-proxy", {"subprotocols": [f"access_token.{TOKEN}"]}, f"access_token.{TOKEN}"),
        ("/deepgram-proxy", {"subprotocols": [f"bearer.{TOKEN}"]}, f"bearer.{TOKEN}"),
        ("/deepgram-proxy", {"subprotocols": ["token", TOKEN]}, "token"),
        ("/openai/v1/realtime", {"subprotocols": ["realtime", f"openai-insecure-api-key.{TOKEN}"]}, "realtime"),
    ]
    for path, kw, echoed in cases:
        client = await RawClient.connect(gw.port, path, **kw)
        assert client.status == 101, (path, kw)
        assert client.header("Sec-WebSocket-Protocol") == echoed
        await client.send_frame(OP_TEXT, b"hello")
        with trio.fail_after(5):
            assert await client.recv_message() == (OP_TEXT, b"hello")
        await client.close()
        await client.aclose()
    for conn in echo.conns:
        assert all(k != "token" for k, _ in conn.query)
        assert TOKEN not in json.dumps(conn.headers)
        assert not conn.subprotocols
    assert TOKEN not in gw.output and TOKEN[:6] not in gw.output


async def test_signed_tokens(gateway_factory, echo):
    gw = await gateway_factory("--token-secret", "sig-secret-123456", "--admin-token", ADMIN, env=echo_env(echo))
    assert gw.http("/v1/tokens", method="POST", body=b"{}")[0] == 401
    assert gw.http("/v1/tokens", method="POST", body=b"{}", headers={"Authorization": "Bearer nope"})[0] == 401
    bad = gw.http("/v1/tokens", method="POST", body=b'{"ttl": 999999}', headers={"Authorization": f"Bearer {ADMIN}"})
    assert bad[0] == 400
    code, _, body = gw.http("/v1/tokens", method="POST", headers={"Authorization": f"Bearer {ADMIN}"},
                            body=json.dumps({"ttl": 1, "provider": "deepgram"}).encode())
    assert code == 200
    token = json.loads(body)["token"]
    status, client = await status_of(gw.port, f"/deepgram-proxy?token={token}")
    assert status == 101
    await client.aclose()
    status, client = await status_of(gw.port, f"/openai/v1/realtime?token={token}")  # bound to deepgram
    assert status == 401
    await client.aclose()
    status, client = await status_of(gw.port, f"/deepgram-proxy?token={token[:-3]}abc")  # tampered
    assert status == 401
    await client.aclose()
    await trio.sleep(1.1)  # the token's lifetime itself is what is being tested
    status, client = await status_of(gw.port, f"/deepgram-proxy?token={token}")
    assert status == 401
    await client.aclose()
    assert token not in gw.output and ADMIN not in gw.output


async def test_session_caps_and_rate(gateway_factory, echo):
    gw = await gateway_factory("--max-sessions", "3", "--max-sessions-per-ip", "2", env=echo_env(echo))
    first, _ = await status_of(gw.port, "/deepgram-proxy")
    a = _
    second, b = await status_of(gw.port, "/deepgram-proxy")
    third, c = await status_of(gw.port, "/deepgram-proxy")
    assert (first, second, third) == (101, 101, 429)
    assert c.header("Retry-After")
    await c.aclose()
    # another "IP" is only possible through trusted proxy headers: not trusted here
    status, d = await status_of(gw.port, "/deepgram-proxy", headers=[("X-Forwarded-For", "10.9.9.9")])
    assert status == 429
    await d.aclose()
    await a.close()
    await a.aclose()
    with trio.fail_after(5):  # the worker reports the end; the slot frees up
        while True:
            status, e = await status_of(gw.port, "/deepgram-proxy")
            if status == 101:
                break
            await e.aclose()
            await trio.sleep(0.05)
    await b.aclose()
    await e.aclose()


async def test_global_cap_and_trusted_proxy_headers(gateway_factory, echo):
    gw = await gateway_factory("--max-sessions", "2", "--max-sessions-per-ip", "1", "--trust-proxy-headers",
                               env=echo_env(echo))
    clients = []
    for ip in ("10.0.0.1", "10.0.0.2"):
        status, client = await status_of(gw.port, "/deepgram-proxy", headers=[("X-Forwarded-For", f"1.2.3.4, {ip}")])
        assert status == 101
        clients.append(client)
    status, client = await status_of(gw.port, "/deepgram-proxy", headers=[("X-Forwarded-For", "10.0.0.3")])
    assert status == 503 and client.header("Retry-After")
    await client.aclose()
    for client in clients:
        await client.aclose()


async def test_new_session_rate_per_ip(gateway_factory, echo):
    gw = await gateway_factory("--max-new-sessions-per-ip-per-minute", "3", env=echo_env(echo))
    statuses = []
    for _ in range(4):
        status, client = await status_of(gw.port, "/openai/v1/realtime")
        statuses.append(status)
        if status == 429:
            assert int(client.header("Retry-After")) >= 1
        await client.aclose()
    assert statuses == [101, 101, 101, 429]


async def test_message_size_limit_closes_1009(gateway_factory, echo):
    gw = await gateway_factory("--max-message-bytes", "4096", env=echo_env(echo))
    client = await RawClient.connect(gw.port, "/deepgram-proxy")
    await client.send_frame(OP_BIN, b"\x00" * 4096)
    with trio.fail_after(5):
        assert await client.recv_message() == (OP_BIN, b"\x00" * 4096)
        await client.send_frame(OP_BIN, b"\x00" * 5000)
        error = await client.recv_message()
        assert error[0] == OP_TEXT and json.loads(error[1])["code"] == "message_too_large"
        op, payload = await client.recv_message()
    assert op == OP_CLOSE and close_code(payload) == 1009
    await client.aclose()
    listen = await RawClient.connect(gw.port, "/deepgram-proxy/v1/listen")
    await listen.send_frame(OP_BIN, b"\x00" * 5000)
    with trio.fail_after(5):
        op, payload = await listen.recv_message()  # listen: close only, no Error
    assert op == OP_CLOSE and close_code(payload) == 1009
    await listen.aclose()


async def test_idle_and_duration_limits(gateway_factory, echo):
    gw = await gateway_factory("--idle-timeout", "0.5", env=echo_env(echo))
    async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws:
        with trio.fail_after(5):
            error = json.loads(await ws.get_message())
            assert error["code"] == "idle_timeout"
            with pytest.raises(tws.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1000
    # listen: silence is normal there, so no idle close
    async with tws.open_websocket_url(gw.url("/deepgram-proxy/v1/listen")) as ws:
        with trio.move_on_after(1.0) as scope:
            await ws.get_message()
        assert scope.cancelled_caught
    gw2 = await gateway_factory("--max-session-seconds", "0.6", env=echo_env(echo))
    async with tws.open_websocket_url(gw2.url("/deepgram-proxy")) as ws:
        received = []
        with trio.fail_after(5):
            try:
                for _ in range(100):  # stay busy: only the duration cap can end it
                    await ws.send_message("keep busy")
                    received.append(await ws.get_message())
                    await trio.sleep(0.02)
            except tws.ConnectionClosed as exc:
                closed = exc.reason
            for _ in range(10):  # messages that arrived before the close are still readable
                try:
                    received.append(await ws.get_message())
                except tws.ConnectionClosed:
                    break
    errors = [json.loads(m) for m in received if m != "keep busy"]
    assert [e["code"] for e in errors] == ["session_max_duration"]
    assert closed.code == 1000
