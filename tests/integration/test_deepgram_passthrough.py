"""The Deepgram passthrough through a running gateway (deepgram-passthrough.md §0-§1, §5.6
T2-T11): what the simulated Deepgram (or a frame-exact fake upstream) receives, and what
the client receives, byte for byte where it matters.

Every test runs its own gateway (about half a second to start) with its own key (see
tests/support/deepgram_helpers.py); the `dg` fixture checks at teardown that no 6-character
piece of that key reached the gateway's output or any byte sent to a client.
"""

from __future__ import annotations

import socket
from urllib.parse import quote

import orjson
import pytest
import trio

from tests.support.deepgram_helpers import KEY, DGClient, RawUpstream, json_type, key_leaks
from tests.support.gateway import Gateway, base_env
from tests.support.rawws import OP_BIN, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, close_payload
from tests.support.settings import FULL_SETTINGS
from voxgate.simulate.common import Frame, silence_pcm16, tone_pcm16
from voxgate.simulate.deepgram import (
    NET0001_REASON,
    SPEAK_MS_PER_CHAR,
    DeepgramSimulator,
    SpeakSession,
)

PROXY = "/deepgram-proxy"
AGENT = PROXY + "/v1/agent/converse"
LISTEN = PROXY + "/v1/listen"
SPEAK = PROXY + "/v1/speak"
FLUX = PROXY + "/v2/listen"
SPEAK_V2 = PROXY + "/v2/speak"
CLIENT_TOKEN = "ctokQv8Lw3Rz"
AGENT_AUDIO_DONE = b'{"type":"AgentAudioDone"}'


@pytest.fixture
async def sim(nursery):
    """The simulated Deepgram, with a 1 s listen idle timeout (NET-0001) to keep tests fast."""
    simulator = DeepgramSimulator(api_key=KEY, listen_idle_timeout=1.0)
    simulator.port = await nursery.start(simulator.serve)
    return simulator


@pytest.fixture
async def raw_up(nursery):
    upstream = RawUpstream()
    upstream.port = await nursery.start(upstream.serve)
    return upstream


class Harness:
    """Starts gateways and clients; remembers all of them for the leak check."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.gateways: list[Gateway] = []
        self.clients: list[DGClient] = []

    async def gateway(self, upstream_port: int, *args: str, key: str = KEY, **env: str) -> Gateway:
        url = f"ws://127.0.0.1:{upstream_port}"
        gw = await self.factory(
            *args,
            env=base_env(DEEPGRAM_API_KEY=key, DEEPGRAM_AGENT_URL=url, DEEPGRAM_API_URL=url, **env),
        )
        self.gateways.append(gw)
        return gw

    async def connect(self, gw: Gateway, path: str, **kw) -> DGClient:
        client = await DGClient.open(gw.port, path, **kw)
        self.clients.append(client)
        return client

    def leaks(self) -> set[str]:
        hay = [gw.output for gw in self.gateways] + [bytes(c.wire) for c in self.clients]
        return key_leaks(KEY, *hay) | key_leaks(CLIENT_TOKEN, *hay)


@pytest.fixture
async def dg(gateway_factory):
    harness = Harness(gateway_factory)
    yield harness
    for client in harness.clients:  # so the gateways stop at once, not after a close timeout
        await client.aclose()
    assert not harness.leaks(), "a piece of the key or client token left the gateway"


async def worker_pid(gw: Gateway) -> int:
    workers = await trio.to_thread.run_sync(gw.workers, "deepgram")
    assert len(workers) == 1 and workers[0]["state"] == "ready"
    return workers[0]["pid"]


async def agent_works(dg: Harness, gw: Gateway, path: str = AGENT) -> None:
    """A fresh agent session on the same gateway gets Welcome, then a clean 1000 close."""
    client = await dg.connect(gw, path)
    assert client.status == 101
    op, payload = await client.recv()
    assert op == OP_TEXT and json_type(payload) == "Welcome"
    assert await client.finish(1000) == 1000


def as_frames(messages: list[tuple[int, bytes]]) -> list[Frame]:
    """Client-received messages in the simulator's recording format."""
    out = []
    for op, payload in messages:
        assert op in (OP_TEXT, OP_BIN)
        out.append(Frame("text", payload.decode()) if op == OP_TEXT else Frame("binary", payload))
    return out


# ---------------------------------------------------------------------------------------
# T2: queue order while the upstream is still opening


async def test_settings_sent_before_upstream_opens_arrive_first_and_unchanged(dg, sim):
    gw = await dg.gateway(sim.port)
    # Not compact on purpose: the bytes must arrive exactly as sent.
    settings_text = orjson.dumps(FULL_SETTINGS, option=orjson.OPT_INDENT_2).decode()
    audio = tone_pcm16(40, rate=16000)
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{PROXY}?service=agent&sim_fault=delay:500")
        assert client.status == 101
        await client.send_text(settings_text)
        await client.send_binary(audio)
        await client.send_text('{"type": "KeepAlive"}')
        record = await sim.wait_connection()
        # The simulator has not answered yet: the frames wait in the gateway.
        assert record.status is None
        seen = await client.recv_until_type("SettingsApplied")
        assert [json_type(p) for _, p in seen] == ["Welcome", "SettingsApplied"]
        await record.wait_received(3)
        await record.wait_sent(2)
    assert record.received[:3] == [
        Frame("text", settings_text),
        Frame("binary", audio),
        Frame("text", '{"type": "KeepAlive"}'),
    ]
    assert [f.kind for f in record.sent[:2]] == ["text", "text"]


# ---------------------------------------------------------------------------------------
# T3: frame types both ways, and the client sees exactly what Deepgram sent


async def test_frame_types_are_kept_both_ways_including_json_in_binary(dg, sim):
    gw = await dg.gateway(sim.port)
    audio = tone_pcm16(100, rate=16000)
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{AGENT}?sim_json_binary=1")
        await client.send_text(FULL_SETTINGS)
        seen = await client.recv_until_type("SettingsApplied")
        await client.send_binary(audio)
        await client.send_text({"type": "InjectUserMessage", "content": "hello"})
        seen += await client.recv_until_type("AgentAudioDone")
        record = sim.connections[0]
        await record.wait_sent(len(seen))
        await record.wait_received(3)
    assert as_frames(seen) == record.sent  # same messages, same order, same frame types
    conversation = [(op, orjson.loads(p)) for op, p in seen if json_type(p) == "ConversationText"]
    assert [(op, m["role"]) for op, m in conversation] == [(OP_BIN, "user"), (OP_BIN, "assistant")]
    assert any(op == OP_BIN and json_type(p) is None for op, p in seen)  # agent audio
    assert [f.kind for f in record.received] == ["text", "binary", "text"]
    assert record.received[1].data == audio


# ---------------------------------------------------------------------------------------
# T4, T5: routing, query forwarding, upstream credentials


async def test_routing_query_and_upstream_credentials(dg, sim):
    gw = await dg.gateway(sim.port)
    listen_q = "model=nova-3&language=en-US&keyterm=alpha&keyterm=beta%20gamma&smart_format=&sample_rate=16000"
    cases = [
        # (client path, upstream path, upstream query)
        (
            f"{PROXY}?traceId=t-1&{listen_q}&service=transcription&token={CLIENT_TOKEN}&access_token=x",
            "/v1/listen",
            [
                ("model", "nova-3"),
                ("language", "en-US"),
                ("keyterm", "alpha"),
                ("keyterm", "beta gamma"),
                ("smart_format", ""),
                ("sample_rate", "16000"),
            ],
        ),
        (f"{PROXY}?service=transcription&service=agent", "/v1/listen", []),  # first value wins
        (f"{PROXY}?service=agent&service=transcription&x=1", "/v1/agent/converse", [("x", "1")]),
        (f"{PROXY}", "/v1/agent/converse", []),
        # typos -> agent
        (f"{PROXY}?service=transcriptoin&empty=", "/v1/agent/converse", [("empty", "")]),
        (f"{PROXY}?service=speak", "/v1/agent/converse", []),
        (
            f"{AGENT}?service=transcription&traceId=t&a=1&a=2",
            "/v1/agent/converse",
            [("a", "1"), ("a", "2")],
        ),
        (
            f"{LISTEN}?service=agent&model=nova-3&keyterm=k1&keyterm=k2",
            "/v1/listen",
            [("model", "nova-3"), ("keyterm", "k1"), ("keyterm", "k2")],
        ),
        (
            f"{SPEAK}?model=aura-2-thalia-en&service=agent&encoding=linear16",
            "/v1/speak",
            [("model", "aura-2-thalia-en"), ("encoding", "linear16")],
        ),
        (
            f"{FLUX}?model=flux-general-en&token={CLIENT_TOKEN}&eot_threshold=0.8"
            "&eager_eot_threshold=0.5&eot_timeout_ms=3000&keyterm=a&keyterm=b%20c&traceId=t",
            "/v2/listen",
            [
                ("model", "flux-general-en"),
                ("eot_threshold", "0.8"),
                ("eager_eot_threshold", "0.5"),
                ("eot_timeout_ms", "3000"),
                ("keyterm", "a"),
                ("keyterm", "b c"),
            ],
        ),
        (
            f"{SPEAK_V2}?model=flux-alexis-en&access_token=x&sample_rate=16000",
            "/v2/speak",
            [("model", "flux-alexis-en"), ("sample_rate", "16000")],
        ),
    ]
    client_headers = [
        ("Authorization", "Token unused-client-key"),
        ("Cookie", "session=abc"),
        ("Origin", "http://app.example"),
        ("User-Agent", "test-client"),
    ]
    with trio.fail_after(10):
        for index, (path, up_path, up_query) in enumerate(cases):
            client = await dg.connect(gw, path, headers=client_headers, subprotocols=["bearer.x"])
            assert client.status == 101
            record = await sim.wait_connection(index)
            await record.wait_until(lambda r: r.status is not None)
            assert (path, record.status) == (path, 101)
            assert (path, record.path, record.query) == (path, up_path, up_query)
            # the gateway's key, not the client's
            assert record.header("authorization") == f"Token {KEY}"
            assert record.subprotocols == [] and record.header("sec-websocket-protocol") is None
            assert record.header("cookie") is None and record.header("origin") is None
            assert await client.finish(1000) == 1000


async def test_no_key_piece_in_debug_logs_or_client_bytes(dg, sim):
    gw = await dg.gateway(sim.port, "--log-level", "debug")
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{PROXY}?service=agent&token={CLIENT_TOKEN}")
        await client.send_text(FULL_SETTINGS)
        await client.send_text({"type": "InjectUserMessage", "content": "hello"})
        await client.recv_until_type("AgentAudioDone")
        assert await client.finish(1000) == 1000
        refused = await dg.connect(gw, f"{PROXY}?sim_fault=refuse:401&token={CLIENT_TOKEN}")
        await refused.expect_close()
        record = sim.connections[0]
        await record.closed.wait()
    await trio.to_thread.run_sync(gw.wait_for_output, "(?s)session closed.*session closed")
    assert record.header("authorization") == f"Token {KEY}"
    assert all(CLIENT_TOKEN not in v for _, v in record.query)
    assert not key_leaks(KEY, gw.output, bytes(client.wire), bytes(refused.wire))
    assert not key_leaks(CLIENT_TOKEN, gw.output)


# ---------------------------------------------------------------------------------------
# T6: subprotocols


async def test_subprotocols_are_echoed_per_p6_and_never_forwarded(dg, sim):
    gw = await dg.gateway(sim.port)
    cases = [
        (["access_token.x"], "access_token.x"),
        (["bearer.x"], "bearer.x"),
        (["token", "x"], "token"),
        (["foo"], "foo"),
        (["foo", "bar"], "foo"),
        (["foo", "bearer.y"], "bearer.y"),
        (None, None),
    ]
    with trio.fail_after(10):
        for index, (offered, echoed) in enumerate(cases):
            client = await dg.connect(gw, AGENT, subprotocols=offered)
            assert client.status == 101
            assert (offered, client.header("Sec-WebSocket-Protocol")) == (offered, echoed)
            op, payload = await client.recv()
            assert json_type(payload) == "Welcome"
            record = await sim.wait_connection(index)
            assert record.subprotocols == []
            assert record.header("authorization") == f"Token {KEY}"
            assert await client.finish(1000) == 1000


# ---------------------------------------------------------------------------------------
# T7: close codes and reasons


async def test_upstream_close_codes_and_reasons_reach_the_client(dg, sim):
    gw = await dg.gateway(sim.port)
    pid = await worker_pid(gw)
    cases = [("close:1000", 1000), ("close:4001", 4001), ("close:1011", 1011), ("drop", 1011)]
    for fault, client_code in cases:
        with trio.fail_after(5):
            client = await dg.connect(gw, f"{AGENT}?sim_fault={fault}")
            op, payload = await client.recv()
            assert json_type(payload) == "Welcome"
            code, reason = await client.expect_close()
            assert (fault, code) == (fault, client_code)
            assert len(reason) <= 123
            reason.decode("utf-8")
            await client.wait_eof()
            await agent_works(dg, gw)
    # Deepgram's own reason text never reaches the client (issue 16 §1: it could carry the
    # key); the code does, and a Deepgram error code named in the reason.
    long_reason = quote("é" * 80)
    with trio.fail_after(5):
        client = await dg.connect(
            gw, f"{AGENT}?sim_fault=close_reason:4002&sim_close_reason={long_reason}"
        )
        code, reason = await client.expect_close()
        assert (code, reason) == (4002, b"upstream error")
        # Deepgram's NET-0001 idle close on listen: the code and NET-0001 reach the client.
        silent = await dg.connect(gw, f"{LISTEN}?model=nova-3")
        code, reason = await silent.expect_close()
        assert "net0001" in NET0001_REASON
        assert (code, reason.decode()) == (1011, "NET-0001")
    assert await worker_pid(gw) == pid


async def test_client_close_codes_reach_the_upstream(dg, sim):
    gw = await dg.gateway(sim.port)
    cases = [("1001", 1001), ("4000", 4000), ("no-status", 1000), ("tcp-drop", 1000)]
    for index, (how, upstream_code) in enumerate(cases):
        with trio.fail_after(5):
            client = await dg.connect(gw, AGENT)
            op, payload = await client.recv()
            assert json_type(payload) == "Welcome"
            record = await sim.wait_connection(index)
            if how == "tcp-drop":
                await client.aclose()
            else:
                code = None if how == "no-status" else int(how)
                reason = b"" if code is None else b"bye now"
                await client.send_frame(OP_CLOSE, close_payload(code, reason))
                got = await client.expect_close(reply=False)
                assert got[0] == code  # the client's own close is echoed
                await client.wait_eof()
            await record.closed.wait()
        assert (how, record.close_code) == (how, upstream_code)
        if how in ("1001", "4000"):
            assert record.close_reason == "bye now"


# ---------------------------------------------------------------------------------------
# T8: upstream failures


async def test_upstream_failures_agent_gets_error_then_close(dg, sim):
    gw = await dg.gateway(sim.port, "--connect-timeout", "0.5")
    pid = await worker_pid(gw)
    cases = [
        ("refuse:401", "upstream_auth_failed", 1008),
        ("refuse:403", "upstream_auth_failed", 1008),
        ("refuse:500", "upstream_unavailable", 1011),
        ("hang", "upstream_unavailable", 1011),
    ]
    for fault, error_code, close in cases:
        with trio.fail_after(5):
            t0 = trio.current_time()
            client = await dg.connect(gw, f"{PROXY}?service=agent&sim_fault={fault}")
            assert client.status == 101
            op, payload = await client.recv()
            assert op == OP_TEXT
            error = orjson.loads(payload)
            assert (fault, error["type"], error["code"]) == (fault, "Error", error_code)
            assert isinstance(error["description"], str) and "127.0.0.1" not in error["description"]
            code, reason = await client.expect_close()
            assert (fault, code) == (fault, close)
            assert len(reason) <= 123
            await client.wait_eof()
            if fault == "hang":
                assert 0.4 <= trio.current_time() - t0 < 3
            await agent_works(dg, gw)
    assert await worker_pid(gw) == pid


async def test_wrong_gateway_key_is_upstream_auth_failed(dg, sim):
    gw = await dg.gateway(sim.port, key="test-" + "w" * 40)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        op, payload = await client.recv()
        assert orjson.loads(payload)["code"] == "upstream_auth_failed"
        assert (await client.expect_close())[0] == 1008
        listen = await dg.connect(gw, LISTEN)
        op, payload = await listen.recv()
        assert (op, payload[:2]) == (OP_CLOSE, close_payload(1008))


async def test_upstream_failures_listen_and_speak_get_a_close_only(dg, sim):
    gw = await dg.gateway(sim.port, "--connect-timeout", "0.5")
    cases = [
        (f"{PROXY}?service=transcription&sim_fault=refuse:401", 1008),
        (f"{LISTEN}?sim_fault=refuse:503", 1011),
        (f"{LISTEN}?sim_fault=hang", 1011),
        (f"{SPEAK}?sim_fault=refuse:403", 1008),
        (f"{SPEAK}?sim_fault=hang", 1011),
        (f"{FLUX}?model=flux-general-en&sim_fault=refuse:401", 1008),
        (f"{FLUX}?model=flux-general-en&sim_fault=hang", 1011),
        (f"{SPEAK_V2}?model=flux-alexis-en&sim_fault=refuse:503", 1011),
    ]
    for path, close in cases:
        with trio.fail_after(5):
            client = await dg.connect(gw, path)
            assert client.status == 101
            op, payload = await client.recv()  # the very first message is the close
            assert (path, op) == (path, OP_CLOSE)
            assert int.from_bytes(payload[:2], "big") == close
            assert len(payload) - 2 <= 123
            await client.send_frame(OP_CLOSE, payload[:2])
            await client.wait_eof()
    with trio.fail_after(5):
        await agent_works(dg, gw)


async def test_upstream_refusing_tcp_is_upstream_unavailable(dg):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gw = await dg.gateway(port)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        op, payload = await client.recv()
        assert (op, orjson.loads(payload)["code"]) == (OP_TEXT, "upstream_unavailable")
        assert (await client.expect_close())[0] == 1011
        listen = await dg.connect(gw, f"{PROXY}?service=transcription")
        op, payload = await listen.recv()
        assert (op, payload[:2]) == (OP_CLOSE, close_payload(1011))


async def test_oversized_client_message_gets_1009_with_error_on_agent_only(dg, sim):
    gw = await dg.gateway(sim.port, "--max-message-bytes", "1024")
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        assert json_type((await client.recv())[1]) == "Welcome"
        await client.send_text("x" * 2000)
        op, payload = await client.recv()
        assert (op, orjson.loads(payload)["code"]) == (OP_TEXT, "message_too_large")
        assert (await client.expect_close())[0] == 1009
        record = sim.connections[0]
        await record.closed.wait()
        assert record.received == [] and record.close_code == 1000
        for path in (LISTEN, f"{FLUX}?model=flux-general-en"):
            listen = await dg.connect(gw, path)
            await listen.send_binary(b"\x00" * 2000)
            got = await listen.recv()
            if got[0] == OP_TEXT:  # Flux says Connected first
                assert json_type(got[1]) == "Connected"
                got = await listen.recv()
            assert (path, got[0], got[1][:2]) == (path, OP_CLOSE, close_payload(1009))
        await agent_works(dg, gw)


# ---------------------------------------------------------------------------------------
# T9: the client leaves while the upstream is still connecting


async def test_client_leaving_during_upstream_connect_closes_the_upstream_at_once(dg, sim):
    gw = await dg.gateway(sim.port)  # connect timeout 10 s: only the client's leaving ends it
    pid = await worker_pid(gw)
    for index, how in enumerate(["tcp-drop", "close-frame"]):
        with trio.fail_after(5):
            client = await dg.connect(gw, f"{AGENT}?sim_fault=hang")
            record = await sim.wait_connection(index)
            await client.send_text(FULL_SETTINGS)
            t0 = trio.current_time()
            if how == "tcp-drop":
                await client.aclose()
            else:
                await client.send_frame(OP_CLOSE, close_payload(1000))
                assert (await client.expect_close(reply=False))[0] == 1000
                await client.wait_eof()
            await record.closed.wait()
            assert trio.current_time() - t0 < 1.0
            assert record.status is None and record.received == []
    with trio.fail_after(5):
        await agent_works(dg, gw)
    assert await worker_pid(gw) == pid


# ---------------------------------------------------------------------------------------
# T10: synthetic AgentAudioDone (a scripted or echo upstream decides what Deepgram "sends")

ASSISTANT_TEXT = b'{"type":"ConversationText","role":"assistant","content":"Hi there."}'
USER_TEXT = b'{"type":"ConversationText","role":"user","content":"Hello."}'


async def test_synthetic_agent_audio_done_after_audio_only_once(dg, raw_up):
    gw = await dg.gateway(raw_up.port)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        up = await raw_up.wait_conn()
        await up.send(OP_TEXT, USER_TEXT)  # a user turn does not count
        assert await client.recv() == (OP_TEXT, USER_TEXT)
        await up.send(OP_BIN, b"\x01\x02" * 480)
        await up.send(OP_TEXT, ASSISTANT_TEXT)
        await up.send(OP_TEXT, b'{"type":"AgentStartedSpeaking"}')
        assert await client.recv() == (OP_BIN, b"\x01\x02" * 480)
        assert await client.recv() == (OP_TEXT, ASSISTANT_TEXT)
        assert await client.recv() == (OP_TEXT, AGENT_AUDIO_DONE)  # right after it, compact
        assert await client.recv() == (OP_TEXT, b'{"type":"AgentStartedSpeaking"}')
        # Once per connection: later assistant turns after audio get nothing extra.
        await up.send(OP_BIN, b"\x03" * 100)
        await up.send(OP_TEXT, ASSISTANT_TEXT)
        await up.send(OP_TEXT, b"marker")
        assert await client.recv() == (OP_BIN, b"\x03" * 100)
        assert await client.recv() == (OP_TEXT, ASSISTANT_TEXT)
        assert await client.recv() == (OP_TEXT, b"marker")


async def test_no_synthetic_agent_audio_done_without_audio_first(dg, raw_up):
    gw = await dg.gateway(raw_up.port)
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{PROXY}?service=agent")
        up = await raw_up.wait_conn()
        await up.send(OP_TEXT, ASSISTANT_TEXT)  # text-only greeting: none, and the rule is spent
        await up.send(OP_BIN, b"\x00" * 64)
        await up.send(OP_TEXT, ASSISTANT_TEXT)
        await up.send(OP_TEXT, b"marker")
        for expected in [
            (OP_TEXT, ASSISTANT_TEXT),
            (OP_BIN, b"\x00" * 64),
            (OP_TEXT, ASSISTANT_TEXT),
            (OP_TEXT, b"marker"),
        ]:
            assert await client.recv() == expected
        # JSON in a binary frame is not inspected, and listen never gets one.
        binary_json = await dg.connect(gw, AGENT)
        up2 = await raw_up.wait_conn(1)
        await up2.send(OP_BIN, b"\x00" * 64)
        await up2.send(OP_BIN, ASSISTANT_TEXT)
        await up2.send(OP_TEXT, b"marker")
        for expected in [(OP_BIN, b"\x00" * 64), (OP_BIN, ASSISTANT_TEXT), (OP_TEXT, b"marker")]:
            assert await binary_json.recv() == expected
        listen = await dg.connect(gw, LISTEN)
        up3 = await raw_up.wait_conn(2)
        await up3.send(OP_BIN, b"\x00" * 64)
        await up3.send(OP_TEXT, ASSISTANT_TEXT)
        await up3.send(OP_TEXT, b"marker")
        for expected in [(OP_BIN, b"\x00" * 64), (OP_TEXT, ASSISTANT_TEXT), (OP_TEXT, b"marker")]:
            assert await listen.recv() == expected


async def test_synthetic_agent_audio_done_can_be_turned_off(dg, echo):
    gw = await dg.gateway(echo.port, "--no-deepgram-synthetic-agent-audio-done")
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        # The echo upstream sends back what the client sent, frame types kept.
        for op, payload in [
            (OP_BIN, b"\x01" * 32),
            (OP_TEXT, ASSISTANT_TEXT),
            (OP_TEXT, b"marker"),
        ]:
            await client.send_frame(op, payload)
            assert await client.recv() == (op, payload)
        await echo.wait_for(lambda: len(echo.conns[0].received) == 3)
        assert echo.conns[0].path == "/v1/agent/converse"
        assert echo.conns[0].received == [b"\x01" * 32, ASSISTANT_TEXT.decode(), "marker"]


async def test_text_only_first_turn_from_the_simulator_gets_nothing_extra(dg, sim):
    gw = await dg.gateway(sim.port)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        await client.send_text(FULL_SETTINGS)
        await client.send_text({"type": "InjectUserMessage", "content": "hi"})
        seen = await client.recv_until_type("AgentAudioDone")
        record = sim.connections[0]
        await record.wait_sent(len(seen))
    # The assistant text came before any audio: no synthetic frame, only the native one.
    assert as_frames(seen) == record.sent
    assert sum(p == AGENT_AUDIO_DONE for _, p in seen) == 1


# ---------------------------------------------------------------------------------------
# T11: pings


async def test_client_ping_is_answered_and_copied_upstream(dg, sim):
    gw = await dg.gateway(sim.port)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        assert json_type((await client.recv())[1]) == "Welcome"
        await client.send_frame(OP_PING, b"are-you-there")
        assert await client.recv_frame() == (OP_PONG, True, b"are-you-there")
        record = sim.connections[0]
        await record.wait_until(lambda r: sim.pings(r) == [b"are-you-there"])
        await client.send_text(FULL_SETTINGS)
        # the simulator's pong to the copied ping is not relayed: the next frame is data
        assert (await client.recv_frame())[::2] == (OP_TEXT, b'{"type":"SettingsApplied"}')


async def test_pongs_are_not_relayed_and_upstream_pings_stay_upstream(dg, raw_up):
    gw = await dg.gateway(raw_up.port)
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        up = await raw_up.wait_conn()
        await client.send_frame(OP_PING, b"c1")
        assert await client.recv_frame() == (OP_PONG, True, b"c1")
        await client.send_frame(OP_PONG, b"unsolicited")
        await client.send_text("after-pong")
        await up.wait_until(lambda u: (OP_TEXT, b"after-pong") in u.frames)
        # upstream saw the copied ping and the text, never the client's pong
        assert up.frames == [(OP_PING, b"c1"), (OP_TEXT, b"after-pong")]
        await up.send(OP_PING, b"u1")
        await up.send(OP_PONG, b"stray")
        await up.send(OP_TEXT, b"after-ping")
        await up.wait_until(lambda u: (OP_PONG, b"u1") in u.frames)
        # the client gets neither the upstream's ping nor its pongs
        assert await client.recv_frame() == (OP_TEXT, True, b"after-ping")


# ---------------------------------------------------------------------------------------
# Keepalive on listen (--deepgram-keepalive)


async def test_listen_keepalive_keeps_a_silent_client_connected(dg, sim):
    gw = await dg.gateway(sim.port, "--deepgram-keepalive", "0.3")
    keepalive = Frame("text", '{"type":"KeepAlive"}')
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{LISTEN}?model=nova-3")
        record = await sim.wait_connection()
        t0 = trio.current_time()
        # 1.0 s is the simulator's idle close (NET-0001): stay silent well past it
        await record.wait_until(lambda r: len(r.received) >= 5)
        assert trio.current_time() - t0 >= 1.2
        assert record.received[:5] == [keepalive] * 5
        assert not record.closed.is_set()
        await client.send_text({"type": "CloseStream"})
        seen = await client.recv_until_type("Metadata")
        assert [json_type(p) for _, p in seen] == ["Metadata"]
        assert (await client.expect_close())[0] == 1000
    assert keepalive in record.received


# ---------------------------------------------------------------------------------------
# Full exchanges


async def test_full_listen_exchange(dg, sim):
    gw = await dg.gateway(sim.port)
    audio = tone_pcm16(600, rate=16000) + silence_pcm16(200, rate=16000)
    chunk = 16000 * 2 // 10  # 100 ms
    with trio.fail_after(5):
        client = await dg.connect(
            gw,
            f"{PROXY}?service=transcription&model=nova-3&encoding=linear16&sample_rate=16000&vad_events=true",
        )
        for i in range(0, len(audio), chunk):
            await client.send_binary(audio[i : i + chunk])
        seen = await client.recv_until_type("Results")
        result = orjson.loads(seen[-1][1])
        await client.send_text({"type": "CloseStream"})
        seen += await client.recv_until_type("Metadata")
        code, _ = await client.expect_close()
        record = sim.connections[0]
        await record.closed.wait()
    assert (
        result["is_final"]
        and result["channel"]["alternatives"][0]["transcript"] == "tone 0.6 seconds"
    )
    assert json_type(seen[0][1]) == "SpeechStarted"
    assert code == 1000 and record.close_code == 1000
    assert as_frames(seen) == record.sent
    assert b"".join(f.data for f in record.received if f.kind == "binary") == audio
    assert record.path == "/v1/listen" and ("sample_rate", "16000") in record.query


async def test_full_speak_exchange(dg, sim):
    gw = await dg.gateway(sim.port)
    text = "Hello from voxgate."
    with trio.fail_after(5):
        client = await dg.connect(
            gw, f"{SPEAK}?model=aura-2-thalia-en&encoding=linear16&sample_rate=24000"
        )
        op, payload = await client.recv()
        assert op == OP_TEXT and json_type(payload) == "Metadata"
        await client.send_text({"type": "Speak", "text": text})
        await client.send_text({"type": "Flush"})
        seen = await client.recv_until_type("Flushed")
        await client.send_text({"type": "Close"})
        code, _ = await client.expect_close()
    audio = b"".join(p for op, p in seen if op == OP_BIN)
    assert all(op == OP_BIN for op, _ in seen[:-1]) and seen[-1][0] == OP_TEXT
    assert len(audio) == SpeakSession(now=0.0).audio_bytes_for(text)
    assert code == 1000
    record = sim.connections[0]
    assert record.path == "/v1/speak" and record.received_json()[0] == {
        "type": "Speak",
        "text": text,
    }


async def test_large_and_fragmented_messages_pass_intact(dg, raw_up):
    gw = await dg.gateway(raw_up.port)
    big_up = bytes(range(256)) * 1200  # 300 KiB from the client
    big_down = bytes(reversed(range(256))) * 2800  # 700 KiB from Deepgram
    with trio.fail_after(5):
        client = await dg.connect(gw, AGENT)
        up = await raw_up.wait_conn()
        await client.send_binary(big_up)
        await up.wait_until(lambda u: len(u.frames) == 1)
        assert up.frames == [(OP_BIN, big_up)]
        async with trio.open_nursery() as nursery:  # backpressure: read while it is sent
            nursery.start_soon(up.send, OP_BIN, big_down)
            assert await client.recv() == (OP_BIN, big_down)
        # An assistant text split in fragments with a ping between them: the synthetic
        # AgentAudioDone follows the last fragment, the ping is answered upstream only.
        half = len(ASSISTANT_TEXT) // 2
        await up.send(OP_TEXT, ASSISTANT_TEXT[:half], fin=False)
        await up.send(OP_PING, b"mid")
        await up.send(0x0, ASSISTANT_TEXT[half:])
        await up.send(OP_TEXT, b"marker")
        assert await client.recv_frame() == (OP_TEXT, False, ASSISTANT_TEXT[:half])
        assert await client.recv_frame() == (0x0, True, ASSISTANT_TEXT[half:])
        assert await client.recv_frame() == (OP_TEXT, True, AGENT_AUDIO_DONE)
        assert await client.recv_frame() == (OP_TEXT, True, b"marker")
        await up.wait_until(lambda u: (OP_PONG, b"mid") in u.frames)
        # Client fragments stay fragments upstream.
        await client.send_frame(OP_TEXT, b'{"type":', fin=False)
        await client.send_frame(0x0, b'"KeepAlive"}')
        await up.wait_until(lambda u: len(u.frames) >= 4)
        assert up.frames[-2:] == [(OP_TEXT, b'{"type":'), (0x0, b'"KeepAlive"}')]


# ---------------------------------------------------------------------------------------
# Flux: /v2/listen and /v2/speak (issue 14 item 1)


async def test_full_flux_exchange(dg, sim):
    """Turn events, the fatal Error for a bad parameter and Deepgram's close codes reach the
    client unchanged; a silent Flux client gets neither KeepAlive nor the idle timeout."""
    gw = await dg.gateway(sim.port, "--idle-timeout", "0.3", "--deepgram-keepalive", "0.2")
    audio = tone_pcm16(600, rate=16000) + silence_pcm16(600, rate=16000)
    with trio.fail_after(8):
        client = await dg.connect(gw, f"{FLUX}?model=flux-general-en&sample_rate=16000&token={CLIENT_TOKEN}")
        op, payload = await client.recv()
        assert op == OP_TEXT and json_type(payload) == "Connected"
        record = sim.connections[0]
        await trio.sleep(0.6)  # silent for twice --idle-timeout: still open, nothing sent up
        assert not record.closed.is_set() and record.received == []
        await client.send_binary(audio)
        seen = [(op, payload)]
        for _ in range(60):
            seen.append(await client.recv())
            if orjson.loads(seen[-1][1]).get("event") == "EndOfTurn":
                break
        end = orjson.loads(seen[-1][1])
        await client.send_text({"type": "CloseStream"})
        code, _ = await client.expect_close()
        await record.closed.wait()
        bad = await dg.connect(gw, f"{FLUX}?model=flux-general-en&eager_eot_threshold=0.95")
        bad_seen = await bad.recv_until_type("Error")
        bad_code, _ = await bad.expect_close()
    assert end["event"] == "EndOfTurn" and end["transcript"] == "tone 0.6 seconds"
    assert as_frames(seen) == record.sent[: len(seen)]
    assert code == 1000 and record.close_code == 1000
    assert record.received_json() == [{"type": "CloseStream"}]
    assert [json_type(p) for _, p in bad_seen] == ["Connected", "Error"] and bad_code == 1008
    metrics = gw.http("/metrics")[2].decode()
    assert 'route="listen_v2"' in metrics


async def test_full_speak_v2_exchange(dg, sim):
    gw = await dg.gateway(sim.port)
    text = "Turn-based hello."
    with trio.fail_after(5):
        client = await dg.connect(gw, f"{SPEAK_V2}?model=flux-alexis-en&sample_rate=24000")
        op, payload = await client.recv()
        assert op == OP_TEXT and json_type(payload) == "Connected"
        await client.send_text({"type": "Speak", "text": text})
        await client.send_text({"type": "Flush"})
        seen = await client.recv_until_type("Flushed")
        await client.send_text({"type": "Close"})
        tail = await client.recv_until_type("SessionMetadata")
        code, _ = await client.expect_close()
    kinds = [json_type(p) if op == OP_TEXT else "audio" for op, p in seen]
    assert kinds[0] == "SpeechStarted" and kinds[-2:] == ["SpeechMetadata", "Flushed"]
    assert set(kinds[1:-2]) == {"audio"}
    audio = b"".join(p for op, p in seen if op == OP_BIN)
    assert len(audio) == 24000 * 2 * len(text) * SPEAK_MS_PER_CHAR // 1000
    assert orjson.loads(tail[-1][1])["total_input_character_count"] == len(text)
    assert code == 1000
    record = sim.connections[0]
    assert record.path == "/v2/speak" and record.header("authorization") == f"Token {KEY}"
