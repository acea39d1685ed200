"""The official `openai` Python SDK through the raw Realtime relay (`/openai/v1/realtime`,
openai-translator §10, D37) against the simulator, plus the relay's subprotocol rules and
its connect-failure shape.

The SDK is asyncio; it runs in its own event loop in a worker thread while the simulator
runs in the test's trio loop (trio.to_thread, bounded by trio.fail_after).
"""

from __future__ import annotations

import asyncio

import orjson
import pytest
import trio
import trio_websocket as tws
from openai import AsyncOpenAI

from tests.support.gateway import base_env, start_gateway
from tests.support.keys import OPENAI_KEY
from tests.support.openai_sdk import DUMMY, sdk_session


@pytest.fixture(scope="module")
def gw(fwd):
    url = f"ws://127.0.0.1:{fwd.port}/v1/realtime"
    gateway = start_gateway(env=base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=url))
    yield gateway
    gateway.stop()
    assert OPENAI_KEY[3:15] not in gateway.output and DUMMY not in gateway.output


@pytest.fixture
async def sim(openai_sim, fwd):
    fwd.target = openai_sim.port
    return openai_sim


async def test_sdk_session_through_the_raw_relay(gw, sim):
    def run() -> list:
        return asyncio.run(sdk_session(gw.url("/openai/v1"), "gpt-realtime-mini"))

    with trio.fail_after(15):
        events = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    types = [e.type for e in events]
    assert types[0] == "session.created"
    assert "session.updated" in types and "error" not in types
    done = events[-1]
    assert done.type == "response.done" and done.response.status == "completed"
    [item] = done.response.output
    assert item.content[0].text == "You said: hello sdk"
    [record] = sim.connections
    assert record.path == "/v1/realtime"
    assert record.query_value("model") == "gpt-realtime-mini"
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"
    seen = [v for _, v in record.headers] + record.subprotocols + [v for _, v in record.query]
    assert not any(DUMMY in value for value in seen), "the client's own key reached the upstream"
    sent = [orjson.loads(f.data)["type"] for f in record.received]
    assert sent == ["session.update", "conversation.item.create", "response.create"]


async def test_subprotocols_never_forwarded_and_realtime_echoed(gw, sim):
    offered = ["realtime", f"openai-insecure-api-key.{DUMMY}", "openai-beta.realtime-v1"]
    async with tws.open_websocket_url(gw.url("/openai/v1/realtime?model=gpt-realtime"), subprotocols=offered) as ws:
        assert ws.subprotocol == "realtime"
        with trio.fail_after(5):
            created = orjson.loads(await ws.get_message())
        assert created["type"] == "session.created"
    [record] = sim.connections
    assert not any(p.startswith(("openai-insecure-api-key.", "openai-beta.")) for p in record.subprotocols)
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"
    assert not any(DUMMY in v for _, v in record.headers)


@pytest.mark.parametrize(("fault", "code", "close"), [
    ("refuse:503", "upstream_unavailable", 1011),
    ("refuse:401", "upstream_auth_failed", 1008),
])
async def test_connect_failure_shape(gw, sim, fault, code, close):
    async with tws.open_websocket_url(gw.url(f"/openai/v1/realtime?sim_fault={fault}")) as ws:
        with trio.fail_after(5):
            error = orjson.loads(await ws.get_message())
            with pytest.raises(tws.ConnectionClosed) as info:
                await ws.get_message()
    assert error["type"] == "error"
    assert error["error"]["code"] == code and error["error"]["type"] == "server_error"
    assert isinstance(error["error"]["message"], str)
    assert info.value.reason.code == close
    assert OPENAI_KEY[3:15] not in error["error"]["message"]


async def test_sdk_with_a_client_token_passes_an_origin_allow_list(sim, fwd):
    """Server-side SDKs send no Origin: with --allowed-origin set, a valid client token admits
    them (issue 16 §4); without one they are refused as before, and browsers still need an
    allowed Origin."""
    url = f"ws://127.0.0.1:{fwd.port}/v1/realtime"
    env = base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=url, VOXGATE_CLIENT_TOKENS="ct-server-7Qx")
    gateway = await trio.to_thread.run_sync(
        lambda: start_gateway("--allowed-origin", "https://app.example", env=env)
    )
    try:
        def run(key: str) -> list:
            async def session() -> list:
                client = AsyncOpenAI(api_key=key, websocket_base_url=gateway.url("/openai/v1"))
                events = []
                async with client.realtime.connect(model="gpt-realtime-mini") as conn:
                    async for event in conn:
                        events.append(event)
                        break
                return events
            return asyncio.run(session())

        with trio.fail_after(15):
            events = await trio.to_thread.run_sync(run, "ct-server-7Qx", abandon_on_cancel=True)
        assert [e.type for e in events] == ["session.created"]
        status, _, _ = gateway.http("/openai/v1/realtime", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": "Bearer wrong-token"})
        assert status == 403
        status, _, _ = gateway.http("/openai/v1/realtime", headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": "Bearer ct-server-7Qx",
            "Origin": "https://evil.example"})
        assert status == 403
    finally:
        await trio.to_thread.run_sync(gateway.stop)
