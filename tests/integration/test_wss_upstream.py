"""Upstreams reached over TLS (wss://, as the real providers are): both relays serve such a leg
through the data plane's task-driven conn. A TLS terminator with the test's own CA sits in front
of the OpenAI simulator; the gateway trusts that CA through SSL_CERT_FILE."""

from __future__ import annotations

import json
import ssl

import trio
import trio_websocket as tws
import trustme

from tests.support.gateway import base_env
from tests.support.keys import OPENAI_KEY
from tests.support.settings import BRIEF_SETTINGS, session_update


async def tls_terminator(ca: trustme.CA, target_port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """wss on a free port, plaintext to `target_port`; each byte both ways, until cancelled."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    listeners = await trio.open_ssl_over_tcp_listeners(0, ctx, host="127.0.0.1")
    task_status.started(listeners[0].transport_listener.socket.getsockname()[1])

    async def pump(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        await trio.aclose_forcefully(dst)

    async def handle(tls_stream: trio.SSLStream) -> None:
        plain = await trio.open_tcp_stream("127.0.0.1", target_port)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, tls_stream, plain)
            nursery.start_soon(pump, plain, tls_stream)

    await trio.serve_listeners(handle, listeners)


async def wss_gateway(gateway_factory, nursery, openai_sim, tmp_path):
    ca = trustme.CA()
    port = await nursery.start(tls_terminator, ca, openai_sim.port)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    env = base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=f"wss://127.0.0.1:{port}/v1/realtime",
                   SSL_CERT_FILE=str(bundle))
    return await gateway_factory(env=env)


async def test_translator_over_a_wss_upstream(gateway_factory, nursery, openai_sim, tmp_path):
    gw = await wss_gateway(gateway_factory, nursery, openai_sim, tmp_path)
    with trio.fail_after(15):
        async with tws.open_websocket_url(gw.url("/openai")) as ws:
            assert json.loads(await ws.get_message())["type"] == "Welcome"
            await ws.send_message(json.dumps(BRIEF_SETTINGS))
            got: list = []
            while not any(isinstance(m, dict) and m.get("type") == "SettingsApplied" for m in got):
                message = await ws.get_message()
                got.append(json.loads(message) if isinstance(message, str) else message)
            await ws.send_message(json.dumps({"type": "InjectUserMessage", "content": "over tls"}))

            def texts() -> list[str]:
                return [m["content"] for m in got if isinstance(m, dict) and m.get("type") == "ConversationText"]

            while len(texts()) < 2 or not any(isinstance(m, dict) and m.get("type") == "AgentAudioDone" for m in got):
                message = await ws.get_message()
                got.append(json.loads(message) if isinstance(message, str) else message)
    assert texts() == ["over tls", "You said: over tls"]
    assert sum(len(m) for m in got if isinstance(m, bytes)) == 24000 * 2 * 3 // 10
    [record] = openai_sim.connections
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"


async def test_raw_relay_over_a_wss_upstream(gateway_factory, nursery, openai_sim, tmp_path):
    gw = await wss_gateway(gateway_factory, nursery, openai_sim, tmp_path)
    with trio.fail_after(15):
        async with tws.open_websocket_url(gw.url("/openai/v1/realtime?model=gpt-realtime")) as ws:
            created = json.loads(await ws.get_message())
            assert created["type"] == "session.created"
            await ws.send_message(json.dumps(session_update()))
            assert json.loads(await ws.get_message())["type"] == "session.updated"
    assert len(openai_sim.connections) == 1
