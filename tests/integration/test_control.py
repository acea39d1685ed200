"""Operator control and cost guardrails through the real gateway (issue 11): the live session
registry and its admin API, the kill switch, usage metering, budgets per client token,
OpenAI-style client secrets and the server-owned session policy."""

from __future__ import annotations

import json

import pytest
import trio

from tests.support.admin import ADMIN, admin, wait_sessions
from tests.support.agent_client import Client
from tests.support.gateway import echo_env, gateway_env
from tests.support.rawws import OP_BIN, OP_TEXT, RawClient, read_until_close
from tests.support.settings import agent_settings, session_update

TOKEN = "Hy4Nc8Rb3s-client"


async def test_admin_api_needs_the_admin_token(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN))
    for method, path in (("GET", "/v1/sessions"), ("DELETE", "/v1/sessions/abc"), ("DELETE", "/v1/sessions?client_ip=1")):
        assert (await admin(gw, method, path, token=None))[0] == 401
        assert (await admin(gw, method, path, token="wrong-admin"))[0] == 401
    assert (await admin(gw, "GET", "/v1/sessions?color=red"))[0] == 400
    assert (await admin(gw, "DELETE", "/v1/sessions"))[0] == 400  # no filter: never "everything"
    status, body = await admin(gw, "DELETE", "/v1/sessions/0123456789abcdef")
    assert status == 404 and body["error"] == "not_found"
    assert ADMIN not in gw.output
    off = await gateway_factory(env=echo_env(echo))
    assert (await admin(off, "GET", "/v1/sessions"))[0] == 404  # no --admin-token: the API is off


PATHS = {
    "/deepgram-proxy/v1/agent/converse": ("deepgram", "agent"),
    "/deepgram-proxy/v1/listen?encoding=linear16&sample_rate=16000": ("deepgram", "listen"),
    "/deepgram-proxy/v1/speak": ("deepgram", "speak"),
    "/openai/v1/realtime": ("openai", "realtime"),
    "/openai": ("openai", "translate"),
}  # every route a session can take: (provider, route name in the registry)


async def open_every_path(gw) -> dict[str, RawClient]:
    """One session per route, with the client token, an Origin and a trace id."""
    auth = [("Authorization", f"Bearer {TOKEN}"), ("Origin", "https://app.example")]
    clients = {}
    for path, (_, route) in PATHS.items():
        client = await RawClient.connect(gw.port, path + ("&" if "?" in path else "?") + "traceId=tr-" + route,
                                         headers=auth)
        assert client.status == 101
        clients[path] = client
    return clients


async def check_listing_and_filters(gw) -> dict[str, dict]:
    """GET /v1/sessions names every session fully and filters by each field; returns them by route."""
    sessions = await wait_sessions(gw, lambda s: len(s) == 5)
    by_route = {s["route"]: s for s in sessions}
    for provider, route in PATHS.values():
        entry = by_route[route]
        assert entry["provider"] == provider
        assert entry["client_ip"] == "127.0.0.1" and entry["origin"] == "https://app.example"
        assert entry["token_label"] == "kiosk" and entry["trace"] == f"tr-{route}"
        assert len(entry["id"]) == 16 and entry["duration_s"] >= 0 and entry["started_at"].endswith("Z")
    assert TOKEN not in json.dumps(sessions)
    assert {s["route"] for s in await wait_sessions(gw, bool, "?provider=deepgram")} == {"agent", "listen", "speak"}
    assert [s["route"] for s in await wait_sessions(gw, bool, "?route=realtime")] == ["realtime"]
    assert [s["route"] for s in await wait_sessions(gw, bool, "?route=openai.translate")] == ["translate"]
    assert len(await wait_sessions(gw, bool, "?token_label=kiosk&client_ip=127.0.0.1")) == 5
    assert await wait_sessions(gw, lambda s: True, "?token_label=other") == []
    return by_route


async def kill_agent_by_id(gw, echo, agent: RawClient, session_id: str) -> None:
    """One by id: the agent path hears Error "terminated", then 1008, within a second."""
    started = trio.current_time()
    status, body = await admin(gw, "DELETE", f"/v1/sessions/{session_id}")
    assert status == 200 and body == {"ended": 1, "ids": [session_id]}
    messages, code = await read_until_close(agent)
    assert trio.current_time() - started < 1.5
    assert code == 1008
    errors = [json.loads(p) for op, p in messages if op == OP_TEXT and b'"Error"' in p]
    assert errors and errors[-1]["code"] == "terminated"
    await echo.wait_for(lambda: all(c.closed.is_set() for c in echo.conns if c.path.endswith("/agent/converse")))


async def kill_openai_sessions(gw, clients: dict[str, RawClient]) -> None:
    """By provider: the raw relay hears an OpenAI error event, the translator an Error; then 1008."""
    status, body = await admin(gw, "DELETE", "/v1/sessions?provider=openai")
    assert status == 200 and body["ended"] == 2
    messages, code = await read_until_close(clients["/openai/v1/realtime"])
    assert code == 1008
    assert any(json.loads(p).get("error", {}).get("code") == "terminated" for op, p in messages if op == OP_TEXT)
    messages, code = await read_until_close(clients["/openai"])
    assert code == 1008
    events = [json.loads(p) for op, p in messages if op == OP_TEXT]
    assert events[0]["type"] == "Welcome" and events[-1] == {**events[-1], "type": "Error", "code": "terminated"}


async def test_list_filter_and_kill_every_path(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_CLIENT_TOKENS=f"kiosk:{TOKEN}"))
    clients = await open_every_path(gw)
    by_route = await check_listing_and_filters(gw)

    # traffic shows while the session runs
    agent = clients["/deepgram-proxy/v1/agent/converse"]
    await agent.send_frame(OP_BIN, b"\x00" * 3200)
    await wait_sessions(gw, lambda s: any(x["route"] == "agent" and x["frames_up"] == 1 and x["bytes_up"] == 3200
                                          for x in s))

    await kill_agent_by_id(gw, echo, agent, by_route["agent"]["id"])
    await kill_openai_sessions(gw, clients)

    # every match by client ip: listen and speak close with 1008
    status, body = await admin(gw, "DELETE", "/v1/sessions?client_ip=127.0.0.1")
    assert status == 200 and body["ended"] == 2
    for path in ("/deepgram-proxy/v1/listen?encoding=linear16&sample_rate=16000", "/deepgram-proxy/v1/speak"):
        _, code = await read_until_close(clients[path])
        assert code == 1008
    await wait_sessions(gw, lambda s: s == [])
    metrics = (await trio.to_thread.run_sync(lambda: gw.http("/metrics")))[2].decode()
    assert 'voxgate_sessions_stopped_total{reason="terminated"} 5.0' in metrics
    for client in clients.values():
        await client.aclose()


# --- budgets per client token ------------------------------------------------------------------


SECRET = "Wd3Kp8Zr5t-secret"


async def mint(gw, **terms) -> str:
    status, body = await admin(gw, "POST", "/v1/tokens", body=json.dumps(terms).encode())
    assert status == 200, body
    return body["token"]


async def test_max_sessions_rejects_with_429_before_101(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_TOKEN_SECRET=SECRET))
    assert (await admin(gw, "POST", "/v1/tokens", body=b'{"max_sessions": 0}'))[0] == 400
    assert (await admin(gw, "POST", "/v1/tokens", body=b'{"label": "bad label!"}'))[0] == 400
    token = await mint(gw, label="tab-user", max_sessions=1, ttl=600)
    first = await RawClient.connect(gw.port, f"/deepgram-proxy?token={token}")
    assert first.status == 101
    second = await RawClient.connect(gw.port, f"/deepgram-proxy/v1/listen?token={token}")
    assert second.status == 429
    body = json.loads(await second.body())
    assert body["error"] == "budget_exceeded" and body["limit"] == "max_sessions"
    other = await RawClient.connect(gw.port, f"/deepgram-proxy?token={await mint(gw, max_sessions=1)}")
    assert other.status == 101  # budgets are per token
    [entry] = await wait_sessions(gw, bool, "?token_label=tab-user")
    assert token not in json.dumps(entry) and token[4:20] not in gw.output
    await first.close()
    await wait_sessions(gw, lambda s: len(s) == 1)
    third = await RawClient.connect(gw.port, f"/deepgram-proxy?token={token}")
    assert third.status == 101  # the slot is free again
    for client in (first, second, other, third):
        await client.aclose()


async def test_replace_oldest_session(gateway_factory, echo):
    gw = await gateway_factory("--on-session-limit", "replace-oldest", "--token-max-sessions", "1",
                               env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_CLIENT_TOKENS=f"web:{TOKEN}"))
    old = await RawClient.connect(gw.port, f"/deepgram-proxy?token={TOKEN}")
    assert old.status == 101
    await wait_sessions(gw, lambda s: len(s) == 1)
    new = await RawClient.connect(gw.port, f"/deepgram-proxy?token={TOKEN}")  # the browser refresh
    assert new.status == 101
    messages, code = await read_until_close(old)
    assert code == 1008
    assert [json.loads(p)["code"] for op, p in messages if op == OP_TEXT] == ["replaced"]
    await new.send_frame(OP_TEXT, b'{"type":"KeepAlive"}')
    op, payload = await new.recv_message()
    assert (op, payload) == (OP_TEXT, b'{"type":"KeepAlive"}')  # the new session works
    for client in (old, new):
        await client.aclose()


async def test_max_session_seconds_on_the_translator(gateway_factory, openai_sim):
    gw = await gateway_factory(env=gateway_env(openai_sim, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_TOKEN_SECRET=SECRET))
    token = await mint(gw, max_session_seconds=1)
    client = await RawClient.connect(gw.port, f"/openai?token={token}")
    assert client.status == 101
    started = trio.current_time()
    messages, code = await read_until_close(client, timeout=5)
    assert code == 1008 and 0.9 < trio.current_time() - started < 3
    errors = [json.loads(p) for op, p in messages if op == OP_TEXT and json.loads(p).get("type") == "Error"]
    assert errors[-1]["code"] == "budget_exhausted"
    await client.aclose()


async def test_max_audio_seconds_mid_session_then_429(gateway_factory, deepgram_sim):
    gw = await gateway_factory("--token-max-audio-seconds", "1", env=gateway_env(
        None, deepgram_sim, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_CLIENT_TOKENS=TOKEN))
    path = f"/deepgram-proxy/v1/listen?encoding=linear16&sample_rate=16000&token={TOKEN}"
    client = await RawClient.connect(gw.port, path)
    assert client.status == 101
    for _ in range(15):  # 1.5 s of audio
        await client.send_frame(OP_BIN, bytes(3200))
    _, code = await read_until_close(client, timeout=5)
    assert code == 1008
    await client.aclose()
    again = await RawClient.connect(gw.port, path)
    assert again.status == 429
    assert json.loads(await again.body())["limit"] == "max_audio_seconds"
    await again.aclose()
    assert "budget_exhausted" in gw.output and TOKEN not in gw.output


async def test_max_tokens_on_the_raw_relay(gateway_factory, openai_sim):
    gw = await gateway_factory(env=gateway_env(openai_sim, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_TOKEN_SECRET=SECRET))
    token = await mint(gw, max_tokens=1)
    client = await RawClient.connect(gw.port, "/openai/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"])
    assert client.status == 101
    item = {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                         "content": [{"type": "input_text", "text": "hi"}]}}
    await client.send_frame(OP_TEXT, json.dumps(item).encode())
    await client.send_frame(OP_TEXT, b'{"type": "response.create"}')
    messages, code = await read_until_close(client, timeout=8)
    assert code == 1008
    events = [json.loads(p) for op, p in messages if op == OP_TEXT]
    types = [e["type"] for e in events]
    assert "response.done" in types
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "budget_exhausted"
    await client.aclose()
    again = await RawClient.connect(gw.port, "/openai/v1/realtime", subprotocols=["realtime", f"openai-insecure-api-key.{token}"])
    assert again.status == 429 and json.loads(await again.body())["limit"] == "max_tokens"
    await again.aclose()


# --- OpenAI-style client secrets ---------------------------------------------------------------


async def test_client_secrets_with_the_openai_sdk(gateway_factory, openai_sim, deepgram_sim):
    import time

    import openai
    import trio_websocket as tws

    gw = await gateway_factory(env=gateway_env(openai_sim, deepgram_sim, VOXGATE_ADMIN_TOKEN=ADMIN,
                                               VOXGATE_TOKEN_SECRET=SECRET))

    def create(api_key: str):
        client = openai.OpenAI(api_key=api_key, base_url=gw.url("/v1", "http"), max_retries=0)
        return client.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 300},
            session={"type": "realtime", "model": "gpt-realtime", "instructions": "Be brief."},
        )

    secret = await trio.to_thread.run_sync(create, ADMIN)
    assert secret.value.startswith("vg1.")
    assert time.time() + 250 < secret.expires_at <= time.time() + 301
    assert secret.session.type == "realtime" and secret.session.instructions == "Be brief."
    with pytest.raises(openai.AuthenticationError):
        await trio.to_thread.run_sync(create, "not-the-admin-token")
    # the browser offers it as its key subprotocol, as it would to OpenAI
    offered = ["realtime", f"openai-insecure-api-key.{secret.value}"]
    async with tws.open_websocket_url(gw.url("/openai/v1/realtime?model=gpt-realtime"), subprotocols=offered) as ws:
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["type"] == "session.created"
        [entry] = await wait_sessions(gw, lambda s: len(s) == 1)
        assert entry["token_label"] == "client_secret"
    record = openai_sim.connections[-1]
    assert not any(secret.value in v for _, v in record.headers) and secret.value not in record.subprotocols
    deepgram = await RawClient.connect(gw.port, f"/deepgram-proxy?token={secret.value}")
    assert deepgram.status == 401  # an OpenAI key opens OpenAI sessions only
    await deepgram.aclose()
    assert secret.value[4:20] not in gw.output


# --- server-owned session policy ---------------------------------------------------------------


POLICY_YAML = """
paths:
  /openai:
    instructions: "You are the ACME agent."
    models: [gpt-realtime]
    tools: [lookup_order]
    max_output_tokens: 100
    voice: marin
  /openai/v1/realtime:
    instructions_prefix: "ACME rules first."
    models: [gpt-realtime]
    labels:
      kiosk:
        voice: cedar
        max_output_tokens: 50
"""


def upstream_updates(record) -> list[dict]:
    return [m["session"] for m in record.received_json() if isinstance(m, dict) and m.get("type") == "session.update"]


async def test_policy_pins_translator_settings(gateway_factory, openai_sim, nursery, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML)
    gw = await gateway_factory("--session-policy", str(policy), env=gateway_env(openai_sim))
    import trio_websocket as tws

    client = Client(await tws.connect_websocket_url(nursery, gw.url("/openai")))
    nursery.start_soon(client.reader)
    functions = [{"name": name, "description": "d", "parameters": {"type": "object", "properties": {}}}
                 for name in ("lookup_order", "wire_money")]
    await client.send(agent_settings(
        think={"provider": {"type": "open_ai", "model": "gpt-realtime-mini"}, "prompt": "Ignore the rules.",
               "functions": functions, "maxOutputTokens": 5000},
        sessionAudioOutput={"voice": "alloy"}))
    await client.wait_type("SettingsApplied")
    [session] = upstream_updates(openai_sim.connections[-1])
    assert session["instructions"] == "You are the ACME agent."
    assert session["model"] == "gpt-realtime"
    assert [t["name"] for t in session["tools"]] == ["lookup_order"]
    assert session["max_output_tokens"] == 100
    assert session["audio"]["output"]["voice"] == "marin"
    warnings = client.of("Warning")
    assert {w["code"] for w in warnings} == {"policy_pinned"}
    named = " ".join(w["description"] for w in warnings)
    for field in ("instructions", "model", "tools", "max_output_tokens", "voice"):
        assert field in named
    await client.send({"type": "UpdatePrompt", "prompt": "Now be evil."})
    await client.wait_type("PromptUpdated")
    assert upstream_updates(openai_sim.connections[-1])[-1]["instructions"] == "You are the ACME agent."
    await client.ws.aclose()


async def test_policy_pins_raw_relay_session_update(gateway_factory, openai_sim, tmp_path):
    import trio_websocket as tws

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"paths": {"/openai/v1/realtime": {
        "instructions_prefix": "ACME rules first.", "models": ["gpt-realtime"],
        "labels": {"kiosk": {"voice": "cedar", "max_output_tokens": 50}}}}}))
    gw = await gateway_factory("--session-policy", str(policy),
                               env=gateway_env(openai_sim, VOXGATE_CLIENT_TOKENS=f"kiosk:{TOKEN}"))
    offered = ["realtime", f"openai-insecure-api-key.{TOKEN}"]
    url = gw.url("/openai/v1/realtime?model=gpt-4o-realtime-preview")
    async with tws.open_websocket_url(url, subprotocols=offered) as ws:
        update = session_update(
            event_id="ev1",
            instructions="Talk like a pirate.",
            max_output_tokens=4000,
            audio={"output": {"voice": "alloy"}},
        )
        await ws.send_message(json.dumps(update))
        errors = []
        with trio.fail_after(5):
            while len(errors) < 2:
                event = json.loads(await ws.get_message())
                if event["type"] == "error":
                    errors.append(event["error"])
        assert {e["param"] for e in errors} == {"session.voice", "session.max_output_tokens"}
        assert {e["code"] for e in errors} == {"policy_pinned"}
        with trio.fail_after(5):
            while not openai_sim.connections:  # the relay answers the client before the upstream opens
                await trio.sleep(0.02)
            record = openai_sim.connections[-1]
            await record.wait_until(lambda r: len(upstream_updates(r)) >= 2)
    assert record.query_value("model") == "gpt-realtime"
    first, second = upstream_updates(record)[:2]
    assert first["instructions"] == "ACME rules first." and first["audio"]["output"]["voice"] == "cedar"
    assert second["instructions"] == "ACME rules first.\n\nTalk like a pirate."
    assert second["max_output_tokens"] == 50 and second["audio"]["output"]["voice"] == "cedar"


@pytest.mark.parametrize("content, message", [
    ("paths: {/nowhere: {voice: x}}", "unknown path"),
    ("paths: {/openai: {colour: red}}", "unknown field"),
    ("paths: {/openai: {max_output_tokens: -1}}", "positive integer"),
    ("{not json", "invalid JSON"),
    ("paths: [1, 2", "invalid YAML"),
])
def test_bad_policy_file_is_one_line_exit_2(tmp_path, content, message):
    from tests.support.gateway import base_env, run_cli

    policy = tmp_path / "p.yaml"
    policy.write_text(content)
    result = run_cli("check", "--session-policy", str(policy), env=base_env(OPENAI_API_KEY="sk-x" * 5))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


async def test_fragmented_session_update_is_still_pinned(gateway_factory, echo, tmp_path):
    from tests.support.rawws import OP_CONT

    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"paths": {"/openai/v1/realtime": {"voice": "cedar"}}}))
    gw = await gateway_factory("--session-policy", str(policy), env=echo_env(echo))
    client = await RawClient.connect(gw.port, "/openai/v1/realtime")
    assert client.status == 101
    update = json.dumps({"type": "session.update", "session": {"voice": "alloy", "instructions": "x" * 300}}).encode()
    await client.send_frame(OP_TEXT, update[:100], fin=False)
    await client.send_frame(OP_CONT, update[100:200], fin=False)
    await client.send_frame(OP_CONT, update[200:])
    await client.send_frame(OP_BIN, b"\x01\x02")  # binary is never inspected
    await echo.wait_for(lambda: echo.conns and len(echo.conns[-1].received) >= 3)
    first, pinned, binary = echo.conns[-1].received[:3]
    assert json.loads(first)["session"]["audio"]["output"]["voice"] == "cedar"  # the gateway's own pin
    assert json.loads(pinned)["session"] == {"voice": "cedar", "instructions": "x" * 300}
    assert binary == b"\x01\x02"
    await client.aclose()


# --- voxgate sessions CLI ----------------------------------------------------------------------


async def test_sessions_cli_list_and_kill(gateway_factory, echo):
    from tests.support.gateway import base_env, run_cli

    gw = await gateway_factory(env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_CLIENT_TOKENS=f"kiosk:{TOKEN}"))
    env = base_env(VOXGATE_URL=gw.url("", "http"), VOXGATE_ADMIN_TOKEN=ADMIN)

    async def cli(*args: str, environ: dict = env):
        return await trio.to_thread.run_sync(lambda: run_cli("sessions", *args, env=environ))

    clients = [await RawClient.connect(gw.port, f"/deepgram-proxy?token={TOKEN}") for _ in range(2)]
    sessions = await wait_sessions(gw, lambda s: len(s) == 2)
    listed = await cli("list")
    assert listed.returncode == 0, listed.stderr
    header, *rows, total = listed.stdout.strip().splitlines()
    assert header.split()[:3] == ["ID", "PROVIDER", "ROUTE"] and total == "2 live session(s)"
    assert {row.split()[0] for row in rows} == {s["id"] for s in sessions}
    assert all("kiosk" in row and "deepgram" in row for row in rows)
    as_json = await cli("list", "--json", "--route", "agent")
    assert len(json.loads(as_json.stdout)["sessions"]) == 2
    killed = await cli("kill", sessions[0]["id"])
    assert killed.returncode == 0 and killed.stdout.strip() == f"ended 1 session(s): {sessions[0]['id']}"
    _, code = await read_until_close(clients[0])
    assert code == 1008
    killed = await cli("kill", "--client-ip", "127.0.0.1")
    assert killed.returncode == 0 and killed.stdout.startswith("ended 1 session(s)")
    _, code = await read_until_close(clients[1])
    assert code == 1008
    # errors: one line, exit 2 for usage, 1 when the gateway says no or is unreachable
    for args, environ, rc, text in (
        (("list",), base_env(VOXGATE_URL=gw.url("", "http")), 2, "--admin-token"),
        (("kill",), env, 2, "give a session ID"),
        (("kill", "zz-not-hex"), env, 2, "not a session id"),
        (("kill", "0123456789abcdef"), env, 1, "404"),
        (("list",), base_env(VOXGATE_URL=gw.url("", "http"), VOXGATE_ADMIN_TOKEN="wrong"), 1, "401"),
        (("list",), base_env(VOXGATE_URL="http://127.0.0.1:9", VOXGATE_ADMIN_TOKEN=ADMIN), 1, "cannot reach"),
    ):
        result = await cli(*args, environ=environ)
        assert result.returncode == rc, (args, result.stdout, result.stderr)
        assert text in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr and ADMIN not in result.stderr
    for client in clients:
        await client.aclose()
