"""An upstream that reflects the gateway's key (issue 16 §1): on every passthrough path the
client must never receive the provider key, nor any 6-character piece of it, in a text frame
or a close reason, however the upstream cuts it up. Binary frames (audio) pass unchanged.
"""

from __future__ import annotations

import orjson
import pytest
import trio

from tests.support.deepgram_helpers import DGClient, RawUpstream, key_leaks
from tests.support.gateway import base_env
from tests.support.rawws import OP_BIN, OP_CLOSE, OP_CONT, OP_TEXT

# Keys no log line or protocol text can contain by chance (see test_secrets.py).
OPENAI_KEY = "sk-proj-Rf4Kw9Zq2Xm7Tn3Vb8Lp5Hy6Jd1Gs0Wc"
DEEPGRAM_KEY = "Kq3Zw8Rt5Vx2Mn7Pb4Ly9Hc6Jf1Gd0Ws"
PATHS = [
    ("/deepgram-proxy/v1/agent/converse", DEEPGRAM_KEY),
    ("/deepgram-proxy/v1/listen?model=nova-3", DEEPGRAM_KEY),
    ("/deepgram-proxy/v1/speak", DEEPGRAM_KEY),
    ("/deepgram-proxy?service=transcription", DEEPGRAM_KEY),
    ("/openai/v1/realtime?model=gpt-realtime", OPENAI_KEY),
]


async def reflect(conn, authorization: str) -> list[tuple[int, bytes]]:
    """Send the key back every way a WebSocket server can; returns the data frames sent, in
    the order the client should receive them."""
    secret = authorization.split(" ", 1)[1]
    whole = orjson.dumps({"type": "Error", "description": f"bad credentials: {authorization}"})
    half = len(secret) // 2
    split_json = b'{"type":"Echo","key":"' + secret.encode() + b'"}'
    cut = split_json.index(secret.encode()) + half
    sent = [(OP_TEXT, whole)]
    await conn.send(OP_TEXT, whole)
    # One frame written in two TCP segments, the cut inside the key.
    head = bytes([0x81, len(split_json)])
    async with conn.lock:
        await conn.stream.send_all(head + split_json[:cut])
        await conn.stream.send_all(split_json[cut:])
    sent.append((OP_TEXT, split_json))
    # A fragmented text message, the key cut across the fragments.
    frag = b"prefix " + secret.encode() + b" suffix"
    at = 7 + half
    await conn.send(OP_TEXT, frag[:at], fin=False)
    await conn.send(OP_CONT, frag[at:])
    sent.append((OP_TEXT, frag))
    # Pieces only, separated by other text.
    pieces = " | ".join(secret[i : i + 7] for i in range(0, len(secret) - 7, 9)).encode()
    await conn.send(OP_TEXT, pieces)
    sent.append((OP_TEXT, pieces))
    # Audio is never touched (nor searched: only text is).
    audio = b"*" * 16 + bytes(range(256))
    await conn.send(OP_BIN, audio)
    sent.append((OP_BIN, audio))
    await conn.send(OP_CLOSE, (4000).to_bytes(2, "big") + f"key {secret}".encode()[:100])
    return sent


@pytest.fixture
async def reflector(nursery):
    up = RawUpstream()
    port = await nursery.start(up.serve)
    return up, port


async def test_reflected_key_never_reaches_the_client(reflector, gateway_factory):
    up, port = reflector
    env = base_env(
        OPENAI_API_KEY=OPENAI_KEY,
        DEEPGRAM_API_KEY=DEEPGRAM_KEY,
        OPENAI_REALTIME_URL=f"ws://127.0.0.1:{port}/v1/realtime",
        DEEPGRAM_AGENT_URL=f"ws://127.0.0.1:{port}",
        DEEPGRAM_API_URL=f"ws://127.0.0.1:{port}",
    )
    gw = await gateway_factory(env=env)
    for index, (path, secret) in enumerate(PATHS):
        with trio.fail_after(10):
            client = await DGClient.open(gw.port, path)
            assert client.status == 101, path
            conn = await up.wait_conn(index)
            authorization = dict(conn.headers)["authorization"]
            assert secret in authorization  # the upstream really got the key to reflect
            sent = await reflect(conn, authorization)
            received = []
            while True:
                op, payload = await client.recv()
                if op == OP_CLOSE:
                    break
                received.append((op, payload))
            code, reason = int.from_bytes(payload[:2], "big"), payload[2:]
            await client.aclose()
        assert not key_leaks(secret, bytes(client.wire)), path
        assert not key_leaks(secret, gw.output), path
        # Same messages, same types, same lengths; text masked, binary untouched.
        assert [(op, len(p)) for op, p in received] == [(op, len(p)) for op, p in sent], path
        assert received[-1] == sent[-1]
        assert b"*" * 6 in received[0][1] and received[0][1].startswith(b'{"type":"Error"')
        assert code == 4000 and secret[:6].encode() not in reason and reason == b"upstream error", path


@pytest.mark.parametrize(
    "upstream_reason,client_reason",
    [(b"NET-0001 no audio received within 10 s", b"NET-0001"), (b"internal: trace xyz", b"upstream error")],
)
async def test_upstream_close_reasons_are_generic(reflector, gateway_factory, upstream_reason, client_reason):
    up, port = reflector
    env = base_env(DEEPGRAM_API_KEY=DEEPGRAM_KEY, DEEPGRAM_API_URL=f"ws://127.0.0.1:{port}")
    gw = await gateway_factory(env=env)
    with trio.fail_after(10):
        client = await DGClient.open(gw.port, "/deepgram-proxy/v1/listen")
        conn = await up.wait_conn(0)
        await conn.send(OP_CLOSE, (1011).to_bytes(2, "big") + upstream_reason)
        code, reason = await client.expect_close()
    assert (code, reason) == (1011, client_reason)
