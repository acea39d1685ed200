"""Usage metering (issue 11 part 2) through the real gateway and the simulators: audio seconds
from the bytes each way and the declared formats, OpenAI tokens from every `response.done`,
speak characters; the same numbers in GET /v1/sessions, the `session closed` line and
/metrics."""

from __future__ import annotations

import asyncio
import re

import orjson
import pytest
import trio
import trio_websocket as tws

from tests.support.admin import ADMIN, wait_sessions
from tests.support.agent_client import Client
from tests.support.gateway import gateway_env
from tests.support.openai_sdk import sdk_session
from tests.support.settings import agent_settings, linear16_audio
from voxgate.simulate.common import silence_pcm16

FRAME = 3200  # 0.1 s of linear16 at 16 kHz
AGENT_SETTINGS = agent_settings(
    audio=linear16_audio(), think={"provider": {"type": "open_ai", "model": "gpt-realtime"}, "prompt": "Be brief."}
)


@pytest.fixture
async def gw(gateway_factory, openai_sim, deepgram_sim):
    return await gateway_factory(env=gateway_env(openai_sim, deepgram_sim, VOXGATE_ADMIN_TOKEN=ADMIN))


def metric(gw, name: str, **labels: str) -> float:
    text = gw.http("/metrics")[2].decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"{name}{{{wanted}}} not in /metrics")


def reported_tokens(events: list[dict]) -> dict[str, int]:
    """Token totals of every response.done the simulator sent."""
    out = dict.fromkeys(("input", "output", "total", "input_text", "input_audio", "output_text",
                         "output_audio", "cached"), 0)
    for event in events:
        if isinstance(event, dict) and event.get("type") == "response.done":
            usage = event["response"]["usage"]
            out["input"] += usage["input_tokens"]
            out["output"] += usage["output_tokens"]
            out["total"] += usage["total_tokens"]
            for side in ("input", "output"):
                for kind in ("text", "audio"):
                    out[f"{side}_{kind}"] += usage[f"{side}_token_details"][f"{kind}_tokens"]
            out["cached"] += usage["input_token_details"]["cached_tokens"]
    return out


async def agent_turn(url: str, nursery: trio.Nursery, seconds_up: int) -> tuple[Client, int]:
    """Settings, `seconds_up` s of audio, one injected turn; returns the client and the audio
    bytes it received."""
    ws = await tws.connect_websocket_url(nursery, url)
    client = Client(ws)
    nursery.start_soon(client.reader)
    await client.send(AGENT_SETTINGS)
    await client.wait_type("SettingsApplied")
    for _ in range(seconds_up * 10):
        await client.send(silence_pcm16(100, rate=16000))
    await client.send({"type": "InjectUserMessage", "content": "hello meter"})
    await client.wait_type("AgentAudioDone")
    received = sum(len(f) for f in client.frames if isinstance(f, bytes))
    assert received > 0
    return client, received


def close_line(gw, route: str) -> str:
    return next(line for line in gw.output.splitlines() if "session closed" in line and f"route={route}" in line)


async def test_translator_audio_and_tokens(gw, openai_sim, nursery):
    client, down_bytes = await agent_turn(gw.url("/openai"), nursery, 1)
    record = openai_sim.connections[-1]
    with trio.fail_after(5):
        await record.wait_until(lambda r: reported_tokens(r.sent_json())["total"] > 0)
    await client.wait_type("AgentAudioDone")
    tokens = reported_tokens(record.sent_json())
    assert tokens["total"] > 0
    [entry] = await wait_sessions(gw, lambda s: len(s) == 1 and s[0]["usage"]["tokens"]["total"] == tokens["total"])
    usage = entry["usage"]
    assert usage["tokens"] == tokens
    assert usage["audio_seconds"]["up"] == pytest.approx(1.0, abs=0.1)  # within one frame
    assert usage["audio_seconds"]["down"] == pytest.approx(down_bytes / 48000, abs=0.02)
    await client.ws.aclose()
    await wait_sessions(gw, lambda s: s == [])
    line = close_line(gw, "translate")
    assert f"tokens_in={tokens['input']}" in line and f"tokens_out={tokens['output']}" in line
    assert "audio_up_s=1.0" in line
    assert metric(gw, "voxgate_usage_audio_seconds_total", provider="openai", route="translate",
                  direction="up") == pytest.approx(1.0, abs=0.1)
    assert metric(gw, "voxgate_usage_tokens_total", provider="openai", kind="input_text") == tokens["input_text"]
    assert metric(gw, "voxgate_usage_tokens_total", provider="openai", kind="output_audio") == tokens["output_audio"]


async def test_deepgram_agent_listen_speak(gw, nursery):
    client, down_bytes = await agent_turn(gw.url("/deepgram-proxy/v1/agent/converse"), nursery, 2)
    [entry] = await wait_sessions(gw, lambda s: len(s) == 1 and s[0]["usage"]["audio_bytes"]["down"] == down_bytes)
    assert entry["usage"]["audio_seconds"]["up"] == pytest.approx(2.0, abs=0.1)
    assert entry["usage"]["audio_seconds"]["down"] == pytest.approx(down_bytes / 48000, abs=0.001)
    await client.ws.aclose()

    async with tws.open_websocket_url(gw.url("/deepgram-proxy/v1/listen?encoding=linear16&sample_rate=8000")) as ws:
        for _ in range(5):
            await ws.send_message(silence_pcm16(100, rate=8000))  # 0.5 s at 8 kHz
        await wait_sessions(gw, lambda s: any(x["route"] == "listen" and x["usage"]["audio_bytes"]["up"] == 8000
                                              for x in s))
    async with tws.open_websocket_url(gw.url("/deepgram-proxy/v1/speak?encoding=linear16&sample_rate=16000")) as ws:
        audio = await speak_until_flushed(ws, "Hello there")
        [speak] = await wait_sessions(gw, lambda s: any(x["route"] == "speak" and x["usage"]["audio_bytes"]["down"] == audio
                                                        for x in s))
        assert speak["usage"]["characters"] == len("Hello there")
        assert speak["usage"]["audio_seconds"]["down"] == pytest.approx(audio / 32000, abs=0.001)
    await wait_sessions(gw, lambda s: s == [])
    assert "audio_up_s=0.5" in close_line(gw, "listen")
    assert "characters=11" in close_line(gw, "speak")
    assert metric(gw, "voxgate_usage_audio_seconds_total", provider="deepgram", route="listen", direction="up") == 0.5
    assert metric(gw, "voxgate_usage_audio_seconds_total", provider="deepgram", route="agent",
                  direction="up") == pytest.approx(2.0, abs=0.1)
    assert metric(gw, "voxgate_usage_characters_total", provider="deepgram") == 11


async def speak_until_flushed(ws, text: str) -> int:
    """Speak `text`, Flush, and count the audio bytes that arrive before `Flushed`."""
    await ws.send_message(orjson.dumps({"type": "Speak", "text": text}).decode())
    await ws.send_message('{"type": "Flush"}')
    audio = 0
    with trio.fail_after(5):
        while True:
            msg = await ws.get_message()
            if isinstance(msg, bytes):
                audio += len(msg)
            elif orjson.loads(msg).get("type") == "Flushed":
                return audio


async def test_raw_relay_tokens_with_the_sdk(gw, openai_sim):
    def run() -> list:
        return asyncio.run(sdk_session(gw.url("/openai/v1"), "gpt-realtime"))

    with trio.fail_after(15):
        events = await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    done = [e.model_dump() for e in events if e.type == "response.done"]
    assert done
    tokens = reported_tokens(done)
    assert tokens == reported_tokens(openai_sim.connections[-1].sent_json())
    with trio.fail_after(5):
        while not re.search(r"session closed.* route=realtime", gw.output):
            await trio.sleep(0.05)
    line = close_line(gw, "realtime")
    assert f"tokens_in={tokens['input']}" in line and f"tokens_out={tokens['output']}" in line
    assert metric(gw, "voxgate_usage_tokens_total", provider="openai", kind="output_text") == tokens["output_text"]


async def test_flux_and_speak_v2(gw):
    async with tws.open_websocket_url(gw.url("/deepgram-proxy/v2/listen?model=flux-general-en&encoding=linear16"
                                             "&sample_rate=16000")) as ws:
        for _ in range(7):
            await ws.send_message(silence_pcm16(100, rate=16000))  # 0.7 s
        [flux] = await wait_sessions(gw, lambda s: any(x["usage"]["audio_bytes"]["up"] == 7 * FRAME for x in s))
        assert flux["route"] == "listen_v2" and flux["usage"]["audio_seconds"]["up"] == 0.7
    async with tws.open_websocket_url(gw.url("/deepgram-proxy/v2/speak?model=flux-thalia-en")) as ws:
        audio = await speak_until_flushed(ws, "Flux too")
        [speak] = await wait_sessions(gw, lambda s: any(x["usage"]["audio_bytes"]["down"] == audio for x in s))
        assert speak["usage"]["characters"] == len("Flux too")
        assert speak["usage"]["audio_seconds"]["down"] == pytest.approx(audio / 48000, abs=0.001)  # 24 kHz default
    await wait_sessions(gw, lambda s: s == [])
    assert metric(gw, "voxgate_usage_audio_seconds_total", provider="deepgram", route="listen_v2", direction="up") == 0.7
