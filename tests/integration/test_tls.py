"""TLS on the gateway's own port (issue 6 §4): the supervisor terminates TLS and gives the
worker one end of a socket pair; clients see wss:// and https:// with the test's own CA."""

from __future__ import annotations

import json
import ssl

import pytest
import trio
import trio_websocket as tws
import trustme

from tests.support.gateway import echo_env, run_cli
from tests.support.rawws import RawClient, frame, upgrade_request

OP_BINARY = 0x2


@pytest.fixture
def certs(tmp_path):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return str(cert_path), str(key_path), client_ctx


async def https_get(port: int, path: str, ctx: ssl.SSLContext) -> bytes:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx, https_compatible=True)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    out = bytearray()
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            out += data
    await trio.aclose_forcefully(stream)
    return bytes(out)


async def test_wss_and_https_on_one_port(gateway_factory, echo, certs):
    cert, key, ctx = certs
    gw = await gateway_factory("--tls-cert", cert, "--tls-key", key, env=echo_env(echo), wait_ready=False)
    assert f"endpoint wss://127.0.0.1:{gw.port}/openai live" in gw.output
    with trio.fail_after(15):
        while True:
            reply = await https_get(gw.port, "/readyz", ctx)
            if reply.startswith(b"HTTP/1.1 200"):
                break
            await trio.sleep(0.1)
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["https"] is True
    assert b"Strict-Transport-Security: max-age=31536000; includeSubDomains" in reply
    for path in ("/deepgram-proxy?model=x", "/openai/v1/realtime"):
        async with tws.open_websocket_url(f"wss://127.0.0.1:{gw.port}{path}", ssl_context=ctx) as ws:
            for payload in ("text one", b"\x00\x01binary", "x" * 70000):
                await ws.send_message(payload)
                with trio.fail_after(5):
                    assert await ws.get_message() == payload
    assert [c.path for c in echo.conns] == ["/v1/agent/converse", "/v1/realtime"]
    # plain TCP on a TLS port gets nothing useful, and the gateway keeps serving
    stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
    await stream.send_all(b"GET /healthz HTTP/1.1\r\n\r\n")
    with trio.fail_after(15):
        assert b"200 OK" not in await stream.receive_some(1024)
    await stream.aclose()
    assert (await https_get(gw.port, "/healthz", ctx)).startswith(b"HTTP/1.1 200")


def test_tls_options_are_validated(tmp_path):
    from tests.support.gateway import base_env

    env = base_env(OPENAI_API_KEY="sk-x")
    result = run_cli("serve", "--tls-cert", str(tmp_path / "missing.pem"), env=env)
    assert result.returncode == 2 and "go together" in result.stderr
    result = run_cli("serve", "--tls-cert", str(tmp_path / "a.pem"), "--tls-key", str(tmp_path / "b.pem"), env=env)
    assert result.returncode == 2 and "cannot load" in result.stderr and len(result.stderr.splitlines()) == 1


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


async def test_a_wss_client_that_never_reads_is_held_back(gateway_factory, echo, certs):
    """The supervisor's TLS pump passes backpressure on: echoes the client never reads fill
    the buffers, then the gateway stops reading the client; its memory stays bounded."""
    cert, key, ctx = certs
    gw = await gateway_factory("--tls-cert", cert, "--tls-key", key, env=echo_env(echo), wait_ready=False)
    with trio.fail_after(15):
        while not (await https_get(gw.port, "/readyz", ctx)).startswith(b"HTTP/1.1 200"):
            await trio.sleep(0.1)
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", gw.port, ssl_context=ctx, https_compatible=True)
    client = RawClient(stream)  # type: ignore[arg-type]
    await stream.send_all(upgrade_request("/deepgram-proxy?model=x"))
    with trio.fail_after(5):
        await client.read_head()
    assert client.status == 101
    before = rss_mb(gw.proc.pid)
    chunk = frame(OP_BINARY, b"\x01" * 65536)
    sent = 0
    with trio.move_on_after(2):
        while sent < 200 << 20:
            await client.send(chunk)
            sent += len(chunk)
    growth = rss_mb(gw.proc.pid) - before
    assert sent < 16 << 20, sent  # kernel buffers and bounded queues only
    assert growth < 32, growth
    await trio.aclose_forcefully(stream)
