"""No secret leaves the gateway (issue 5 §6, architecture §5): full sessions on every path and
every failure path, with `--log-level debug`, and then not one 6-character piece of a
provider key, a client token, the token secret or the admin token may appear in anything
the gateway printed, any byte it sent a client (frames, close reasons, HTTP error bodies),
any process command line, or (for client credentials) anything it sent upstream.

The secrets are made of characters that never occur together in a log line (each 6-character
window holds a character outside lower-case hex, so no session id, uuid or hex digest can
match one by chance, and none spells a word the gateway prints), which is what makes "no
piece anywhere" a meaningful check.

Two deliberate exceptions, both by design and asserted as such: the 101 echoes a token the
client itself offered as a subprotocol (P6: a browser fails the handshake otherwise), and
POST /v1/tokens answers the minted token to the admin who asked for it.
"""

from __future__ import annotations

import re
from urllib.parse import quote

import orjson
import pytest
import trio

from tests.support.deepgram_helpers import DGClient, json_type, key_leaks
from tests.support.gateway import Gateway, base_env
from tests.support.rawws import OP_BIN, OP_CLOSE, OP_TEXT
from tests.support.settings import BRIEF_SETTINGS, FULL_SETTINGS, session_update
from voxgate.simulate.common import silence_pcm16, tone_pcm16
from voxgate.simulate.deepgram import DeepgramSimulator
from voxgate.simulate.openai import OpenAISimulator

OPENAI_SECRET = "sk-proj-Vq8ZxK2mWp7RtY4nLs9BcH3jDf6GaE1uNoP"
DEEPGRAM_SECRET = "Dg7QwZr4Tx9Kp2Vm8Ly5Hn3Jb6Fc1Xs0WqEuR"
TOKEN_A = "ctA-Mv3Nq8Rz5Wk2Jx7Ty4Hp9"
TOKEN_B = "ctB-Lw6Gs1Qd8Ve3Ko5Zu2Yi7"
TOKEN_SECRET = "hmacK9Pq2Xz7Rw4Tn6Vb3My8Ld5"
ADMIN_TOKEN = "admZ4Kx8Qp2Wv6Rn9Ty3Jm7Hb5"
BAD_TOKEN = "badQ7Zx3Kp9Wm2Rv6Tn4Yb8Lc5"
WRONG_KEY = "wrongUpstreamKeyN8Qx4Zp2Vr6"  # what the second pair of simulators expects
STATIC_SECRETS = [OPENAI_SECRET, DEEPGRAM_SECRET, TOKEN_A, TOKEN_B, TOKEN_SECRET, ADMIN_TOKEN, BAD_TOKEN]
LIMIT = 65536
WAIT = 10.0

AGENT = "/deepgram-proxy/v1/agent/converse"
LISTEN = "/deepgram-proxy/v1/listen"
SPEAK = "/deepgram-proxy/v1/speak"
REALTIME = "/openai/v1/realtime"


def no_window_is_hex(secret: str) -> bool:
    """Every 6-character window holds a character outside lower-case hex (module docstring)."""
    return all(re.search("[^0-9a-f-]", secret[i : i + 6]) for i in range(len(secret) - 5))


class Recorder:
    """Every gateway, every client and every simulator of the test, for the final check."""

    def __init__(self, factory) -> None:
        self.factory = factory
        self.gateways: list[Gateway] = []
        self.clients: list[DGClient] = []
        self.minted: list[str] = []
        self.echoed: dict[int, str] = {}  # id(client) -> the 101 header line that echoes a token

    async def gateway(self, openai_sim: OpenAISimulator, deepgram_sim: DeepgramSimulator, *args: str) -> Gateway:
        dg_url = f"ws://127.0.0.1:{deepgram_sim.port}"
        env = base_env(
            OPENAI_API_KEY=OPENAI_SECRET, DEEPGRAM_API_KEY=DEEPGRAM_SECRET,
            OPENAI_REALTIME_URL=f"ws://127.0.0.1:{openai_sim.port}/v1/realtime",
            DEEPGRAM_AGENT_URL=dg_url, DEEPGRAM_API_URL=dg_url,
            VOXGATE_CLIENT_TOKENS=f"{TOKEN_A},{TOKEN_B}", VOXGATE_TOKEN_SECRET=TOKEN_SECRET,
            VOXGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        )
        gw = await self.factory("--log-level", "debug", "--max-message-bytes", str(LIMIT), *args, env=env)
        self.gateways.append(gw)
        return gw

    async def connect(self, gw: Gateway, path: str, **kw) -> DGClient:
        client = await DGClient.open(gw.port, path, **kw)
        self.clients.append(client)
        for proto in kw.get("subprotocols") or []:
            if proto.startswith("access_token."):
                line = f"Sec-WebSocket-Protocol: {proto}\r\n"
                assert client.status != 101 or line in client.head.decode("latin-1"), client.head
                self.echoed[id(client)] = line
        return client

    async def mint(self, gw: Gateway, admin: str) -> tuple[int, bytes]:
        def post() -> tuple[int, bytes]:
            status, _, body = gw.http("/v1/tokens", method="POST", body=b'{"ttl": 60}',
                                      headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
            return status, body

        status, body = await trio.to_thread.run_sync(post)
        if status == 200:
            self.minted.append(orjson.loads(body)["token"])
        return status, body

    def client_bytes(self) -> list[bytes]:
        out = []
        for client in self.clients:
            wire = bytes(client.wire)
            line = self.echoed.get(id(client))
            if line:
                wire = wire.replace(line.encode(), b"", 1)
            out.append(wire)
        return out

    def command_lines(self) -> list[bytes]:
        out = []
        for gw in self.gateways:
            for pid in {gw.pid, *gw.worker_pids}:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        out.append(fh.read())
                except OSError:
                    pass
        return out

    def leaks(self) -> dict[str, set[str]]:
        hay = [gw.output for gw in self.gateways] + self.client_bytes() + self.command_lines()
        found = {}
        for secret in STATIC_SECRETS + self.minted:
            pieces = key_leaks(secret, *hay)
            if pieces:
                found[secret[:3] + "..."] = pieces
        return found


@pytest.fixture
async def sims(nursery):
    """The simulators, expecting the gateway's keys."""
    openai = OpenAISimulator(api_key=OPENAI_SECRET)
    openai.port = await nursery.start(openai.serve)
    deepgram = DeepgramSimulator(api_key=DEEPGRAM_SECRET, listen_idle_timeout=5.0)
    deepgram.port = await nursery.start(deepgram.serve)
    return openai, deepgram


@pytest.fixture
async def wrong_sims(nursery):
    """Simulators that expect another key: every upstream handshake is refused with 401."""
    openai = OpenAISimulator(api_key=WRONG_KEY)
    openai.port = await nursery.start(openai.serve)
    deepgram = DeepgramSimulator(api_key=WRONG_KEY)
    deepgram.port = await nursery.start(deepgram.serve)
    return openai, deepgram


@pytest.fixture
async def rec(gateway_factory):
    recorder = Recorder(gateway_factory)
    yield recorder
    for client in recorder.clients:
        await client.aclose()


async def messages_until(client: DGClient, done, limit: int = 500) -> list[tuple[int, bytes]]:
    """Messages up to and including the first for which `done(op, payload)` holds."""
    seen = []
    for _ in range(limit):
        op, payload = await client.recv()
        assert op != OP_CLOSE, f"closed early: {payload!r} after {seen[-3:]}"
        seen.append((op, payload))
        if done(op, payload):
            return seen
    raise AssertionError("never done")


async def wait_logged(gw: Gateway, text: str, count: int) -> None:
    """Until the gateway has printed `text` `count` times (its lines arrive asynchronously)."""
    with trio.fail_after(WAIT):
        while gw.output.count(text) < count:
            await trio.sleep(0.02)


def of_type(kind: str):
    return lambda op, payload: op != OP_BIN and json_type(payload) == kind


def upstream_records(*sims) -> list:
    return [record for sim in sims for record in sim.connections]


def assert_no_client_credentials_upstream(records: list) -> None:
    """Client tokens never reach a provider, in any request part."""
    for record in records:
        parts = [record.path, repr(record.query), repr(record.headers), repr(record.subprotocols)]
        for token in (TOKEN_A, TOKEN_B, BAD_TOKEN, TOKEN_SECRET, ADMIN_TOKEN):
            assert not key_leaks(token, *parts), (record.path, token[:3])


async def expect_error_then_close(client: DGClient, code: str, close: int) -> None:
    op, payload = await client.recv()
    assert op == OP_TEXT, payload
    body = orjson.loads(payload)
    assert code in (body.get("code"), (body.get("error") or {}).get("code")), body
    got, _ = await client.expect_close()
    assert got == close


async def translator_turn(rec, gw: Gateway) -> None:
    """/openai translator: a text turn (token in the query)."""
    client = await rec.connect(gw, f"/openai?token={TOKEN_A}")
    assert client.status == 101
    await messages_until(client, of_type("Welcome"))
    await client.send_text(BRIEF_SETTINGS)
    await messages_until(client, of_type("SettingsApplied"))
    await client.send_text({"type": "InjectUserMessage", "content": "hello secrets"})
    texts = []
    await messages_until(client, lambda op, p: of_type("ConversationText")(op, p)
                         and texts.append(orjson.loads(p)) is None and len(texts) == 2)
    assert texts[1]["content"] == "You said: hello secrets"
    assert await client.finish(1000) == 1000


async def relay_turn(rec, gw: Gateway) -> None:
    """/openai/v1/realtime: raw relay (token as Authorization: Bearer)."""
    client = await rec.connect(gw, f"{REALTIME}?model=gpt-realtime",
                               headers=[("Authorization", f"Bearer {TOKEN_B}")])
    assert client.status == 101
    await messages_until(client, of_type("session.created"))
    await client.send_text(session_update(output_modalities=["text"]))
    await messages_until(client, of_type("session.updated"))
    await client.send_text({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi relay"}]}})
    await client.send_text({"type": "response.create"})
    [(_, done)] = (await messages_until(client, of_type("response.done")))[-1:]
    assert orjson.loads(done)["response"]["status"] == "completed"
    assert await client.finish(1000) == 1000


async def agent_turn(rec, gw: Gateway, signed: str) -> None:
    """/deepgram-proxy agent (a minted token as subprotocol access_token.<t>)."""
    client = await rec.connect(gw, "/deepgram-proxy", subprotocols=[f"access_token.{signed}"])
    assert client.status == 101
    await client.send_text(FULL_SETTINGS)
    await client.send_text({"type": "InjectUserMessage", "content": "hello agent"})
    await messages_until(client, of_type("AgentAudioDone"))
    assert await client.finish(1000) == 1000


async def listen_turn(rec, gw: Gateway) -> None:
    """listen (static token in the query)."""
    client = await rec.connect(gw, f"{LISTEN}?token={TOKEN_A}&model=nova-3&encoding=linear16&sample_rate=16000")
    assert client.status == 101
    audio = tone_pcm16(600, rate=16000) + silence_pcm16(200, rate=16000)
    for i in range(0, len(audio), 3200):
        await client.send_binary(audio[i : i + 3200])
    await messages_until(client, of_type("Results"))
    await client.send_text({"type": "CloseStream"})
    await messages_until(client, of_type("Metadata"))
    code, _ = await client.expect_close()
    assert code == 1000


async def speak_turn(rec, gw: Gateway) -> None:
    """speak (Authorization: Bearer)."""
    client = await rec.connect(gw, f"{SPEAK}?model=aura-2-thalia-en&encoding=linear16&sample_rate=24000",
                               headers=[("Authorization", f"Bearer {TOKEN_A}")])
    assert client.status == 101
    await messages_until(client, of_type("Metadata"))
    await client.send_text({"type": "Speak", "text": "Secrets stay home."})
    await client.send_text({"type": "Flush"})
    seen = await messages_until(client, of_type("Flushed"))
    assert any(op == OP_BIN for op, _ in seen)
    await client.send_text({"type": "Close"})
    code, _ = await client.expect_close()
    assert code == 1000


async def test_full_sessions_on_every_path_leak_no_secret(rec, sims):
    assert all(no_window_is_hex(s) for s in STATIC_SECRETS)
    openai_sim, deepgram_sim = sims
    gw = await rec.gateway(openai_sim, deepgram_sim)
    status, _ = await rec.mint(gw, ADMIN_TOKEN)
    assert status == 200
    [signed] = rec.minted
    with trio.fail_after(WAIT):
        await translator_turn(rec, gw)
        await relay_turn(rec, gw)
        await agent_turn(rec, gw, signed)
        await listen_turn(rec, gw)
        await speak_turn(rec, gw)

    records = upstream_records(openai_sim, deepgram_sim)
    assert len(records) == 5
    assert_no_client_credentials_upstream(records)
    for record in records:  # the key travels upstream, and only there
        assert record.header("authorization") in (f"Bearer {OPENAI_SECRET}", f"Token {DEEPGRAM_SECRET}")
    await wait_logged(gw, "session closed", 5)
    assert " debug " in gw.output  # the debug level really was on
    assert not rec.leaks(), rec.leaks()


async def admission_refusals(rec, gw: Gateway) -> None:
    """Admission: a wrong or missing client token, every way it can be offered."""
    for path, kw in (
        (f"/openai?token={BAD_TOKEN}", {}),
        (REALTIME, {"headers": [("Authorization", f"Bearer {BAD_TOKEN}")]}),
        ("/deepgram-proxy", {"subprotocols": [f"access_token.{BAD_TOKEN}"]}),
        (f"{LISTEN}?token={quote(TOKEN_A[:-1])}", {}),
        (SPEAK, {}),
    ):
        client = await rec.connect(gw, path, **kw)
        assert client.status == 401, (path, client.head)
        body = orjson.loads(await client.body())
        assert body["error"] in ("token_invalid", "token_missing")
    status, body = await rec.mint(gw, BAD_TOKEN)
    assert status == 401 and orjson.loads(body)["error"] == "unauthorized"


async def upstream_error_quoting_the_key(rec, gw: Gateway, openai_sim) -> None:
    """An upstream error that quotes the key (OpenAI's invalid_api_key message quotes part
    of it): the translator masks key-shaped text before it reaches the client."""
    client = await rec.connect(gw, f"/openai?token={TOKEN_B}")
    await messages_until(client, of_type("Welcome"))
    await client.send_text(BRIEF_SETTINGS)
    await messages_until(client, of_type("SettingsApplied"))
    openai_sim.push(openai_sim.connections[-1], {"type": "error", "error": {
        "type": "invalid_request_error", "code": "invalid_api_key",
        "message": f"Incorrect API key provided: {OPENAI_SECRET}."}})
    [(_, error)] = (await messages_until(client, of_type("Error")))[-1:]
    assert orjson.loads(error)["code"] == "invalid_api_key"
    assert await client.finish(1000) == 1000


async def provider_refusals(rec, gw: Gateway, refused: Gateway) -> None:
    """The provider refuses (401): the gateway's key never shows, not even in part."""
    for path, expected in ((f"{AGENT}?token={TOKEN_A}&sim_fault=refuse:401", ("upstream_auth_failed", 1008)),
                           (f"{REALTIME}?token={TOKEN_A}&sim_fault=refuse:401", ("upstream_auth_failed", 1008))):
        client = await rec.connect(gw, path)
        assert client.status == 101
        await expect_error_then_close(client, *expected)
    for path in (f"{LISTEN}?token={TOKEN_B}&sim_fault=refuse:401", f"{SPEAK}?token={TOKEN_B}&sim_fault=refuse:401"):
        client = await rec.connect(gw, path)
        assert (await client.expect_close())[0] == 1008
    for path in (f"/openai?token={TOKEN_A}", f"/deepgram-proxy?token={TOKEN_A}", f"{REALTIME}?token={TOKEN_A}"):
        client = await rec.connect(refused, path)  # upstreams that expect another key
        assert client.status == 101
        if path.startswith("/openai?"):
            await messages_until(client, of_type("Welcome"))
        await expect_error_then_close(client, "upstream_auth_failed", 1008)


async def oversized_messages(rec, gw: Gateway) -> None:
    """Oversized messages: an Error (translator, agent, realtime) and 1009."""
    for path, error in ((f"/openai?token={TOKEN_A}", True), (f"/deepgram-proxy?token={TOKEN_B}", True),
                        (f"{REALTIME}?token={TOKEN_A}", True), (f"{LISTEN}?token={TOKEN_B}", False)):
        client = await rec.connect(gw, path)
        assert client.status == 101
        await client.send_binary(b"\x00" * (LIMIT + 1))
        before = []
        while True:
            op, payload = await client.recv()
            if op == OP_CLOSE:
                assert payload[:2] == (1009).to_bytes(2, "big"), (path, payload)
                break
            before.append(payload)
        codes = {(orjson.loads(p).get("code") or orjson.loads(p).get("error", {}).get("code"))
                 for p in before if json_type(p) in ("Error", "error")}
        assert codes == ({"message_too_large"} if error else set()), (path, before)


async def test_failure_paths_leak_no_secret(rec, sims, wrong_sims):
    openai_sim, deepgram_sim = sims
    gw = await rec.gateway(openai_sim, deepgram_sim)
    refused = await rec.gateway(*wrong_sims, "--log-format", "json")
    with trio.fail_after(WAIT):
        await admission_refusals(rec, gw)
        await upstream_error_quoting_the_key(rec, gw, openai_sim)
        await provider_refusals(rec, gw, refused)
        await oversized_messages(rec, gw)

    assert_no_client_credentials_upstream(upstream_records(openai_sim, deepgram_sim, *wrong_sims))
    for record in upstream_records(*wrong_sims):
        assert record.status == 401  # really refused for the key
    await wait_logged(refused, '"event":"session closed"', 3)
    assert '"level":"debug"' in refused.output  # JSON lines, debug level on
    assert not rec.leaks(), rec.leaks()
