"""The Deepgram simulator's Flux APIs (/v2/listen, /v2/speak) and its service-like leniency on
v1 (Speak without Flush, silence answered on listen), over real WebSockets and through the
official deepgram-sdk's `listen.v2` and `speak.v2` clients."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from trio_websocket import ConnectionRejected

from tests.support import deepgram_sdk
from tests.support.deepgram_sim_client import (
    KEY,
    Sim,
    closed_with,
    connect,
    recv,
    send_audio,
    send_json,
    typed,
    types,
    until,
)
from voxgate.simulate.common import silence_pcm16, tone_pcm16
from voxgate.simulate.deepgram import SPEAK_MS_PER_CHAR, DeepgramSimulator

FLUX_Q = "model=flux-general-en&encoding=linear16&sample_rate=16000"


@pytest.fixture
async def sim(nursery: trio.Nursery) -> Sim:
    simulator = DeepgramSimulator(api_key=KEY, listen_idle_timeout=2.0)
    port = await nursery.start(simulator.serve)
    return Sim(simulator, port)


def events(messages: list[Any]) -> list[str]:
    return [m["event"] for m in messages if isinstance(m, dict) and m.get("type") == "TurnInfo"]


# ---------------------------------------------------------------------------------------
# Flux /v2/listen


async def test_flux_turn_lifecycle_fields_and_close_stream(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", FLUX_Q) as ws:
            connected = await recv(ws)
            await send_audio(ws, silence_pcm16(300, rate=16000) + tone_pcm16(800, rate=16000))
            await send_audio(ws, silence_pcm16(600, rate=16000))
            turn = await until(ws, lambda m: m.get("event") == "EndOfTurn")
            await send_json(ws, {"type": "CloseStream"})
            rest, code, _ = await closed_with(ws)
    assert connected["type"] == "Connected" and connected["sequence_id"] == 0
    assert [m["sequence_id"] for m in turn] == list(range(1, len(turn) + 1))
    seen = events(turn)
    assert seen[0] == "Update" and "StartOfTurn" in seen and seen[-1] == "EndOfTurn"
    assert "EagerEndOfTurn" not in seen  # only with eager_eot_threshold
    start = next(m for m in turn if m["event"] == "StartOfTurn")
    assert start["transcript"] and start["turn_index"] == 0
    end = turn[-1]
    assert end["transcript"] == "tone 0.8 seconds" and end["trigger"] == "model"
    assert [w["word"] for w in end["words"]] == ["tone", "0.8", "seconds"]
    assert end["words"][0]["start"] == 0.3 and end["end_of_turn_confidence"] == 1.0
    assert end["audio_window_start"] == 0.0 and end["audio_window_end"] > 1.1
    assert end["request_id"] == connected["request_id"]
    assert rest == [] and code == 1000


async def test_flux_eager_end_of_turn_and_turn_resumed(sim: Sim) -> None:
    query = FLUX_Q + "&eager_eot_threshold=0.3&eot_threshold=0.9"
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", query) as ws:
            await recv(ws)
            await send_audio(ws, tone_pcm16(400, rate=16000) + silence_pcm16(200, rate=16000))
            await send_audio(ws, tone_pcm16(400, rate=16000) + silence_pcm16(600, rate=16000))
            turn = await until(ws, lambda m: m.get("event") == "EndOfTurn")
            await send_audio(ws, tone_pcm16(300, rate=16000))
            await send_json(ws, {"type": "ForceEndTurn"})
            forced = await until(ws, lambda m: m.get("event") == "EndOfTurn")
    seen = [e for e in events(turn) if e != "Update"]
    assert seen == ["StartOfTurn", "EagerEndOfTurn", "TurnResumed", "EagerEndOfTurn", "EndOfTurn"]
    eager = [m for m in turn if m.get("event") == "EagerEndOfTurn"]
    assert all(m["transcript"] and m["end_of_turn_confidence"] >= 0.3 for m in eager)
    assert turn[-1]["transcript"] == eager[-1]["transcript"]
    assert [e for e in events(forced) if e != "Update"] == ["StartOfTurn", "EndOfTurn"]
    assert forced[-1]["turn_index"] == 1 and forced[-1]["trigger"] == "manual"


async def test_flux_eot_timeout_ends_the_turn(sim: Sim) -> None:
    query = FLUX_Q + "&eot_threshold=1.0&eot_timeout_ms=500"
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", query) as ws:
            await recv(ws)
            await send_audio(ws, tone_pcm16(300, rate=16000) + silence_pcm16(600, rate=16000))
            turn = await until(ws, lambda m: m.get("event") == "EndOfTurn")
    assert turn[-1]["trigger"] == "timeout"


async def test_flux_configure_success_and_failure(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", FLUX_Q + "&keyterm=voxgate") as ws:
            await recv(ws)
            await send_json(ws, {"type": "Configure", "thresholds": {"eot_threshold": 0.8}})
            ok = await recv(ws)
            await send_json(ws, {"type": "Configure", "thresholds": {"eot_threshold": 2}})
            bad = await recv(ws)
            await send_json(ws, {"type": "Nonsense"})
            warning = await recv(ws)
    assert ok["type"] == "ConfigureSuccess" and ok["thresholds"]["eot_threshold"] == 0.8
    assert ok["thresholds"]["eot_timeout_ms"] == 5000 and ok["keyterms"] == ["voxgate"]
    assert bad["type"] == "ConfigureFailure" and "eot_threshold" in bad["description"]
    assert warning["type"] == "Warning" and warning["code"]


async def test_flux_bad_parameters(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", FLUX_Q + "&eot_threshold=3") as ws:
            messages, code, _ = await closed_with(ws)
    assert types(messages) == ["Connected", "Error"]
    assert "eot_threshold" in messages[1]["description"] and messages[1]["code"]
    assert code == 1008
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v2/listen", "model=nova-3"):
            pass
    assert info.value.status_code == 400


async def test_flux_idle_timeout(sim: Sim) -> None:
    sim.sim._listen_idle_timeout = 0.3
    with trio.fail_after(3):
        async with connect(sim, "/v2/listen", FLUX_Q) as ws:
            messages, code, _ = await closed_with(ws)
    assert types(messages) == ["Connected", "Error"] and code == 1011


# ---------------------------------------------------------------------------------------
# Flux TTS /v2/speak

SPEAK_V2_Q = "model=flux-alexis-en&encoding=linear16&sample_rate=16000"


async def test_speak_v2_turns_configure_and_close(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v2/speak", SPEAK_V2_Q) as ws:
            connected = await recv(ws)
            await send_json(ws, {"type": "Speak", "text": "Hello"})
            await send_json(ws, {"type": "Speak", "text": " there"})
            await send_json(ws, {"type": "Flush"})
            turn = await until(ws, typed("Flushed"))
            await send_json(ws, {"type": "Configure", "speed": 9})
            refused = await recv(ws)
            await send_json(ws, {"type": "Configure", "speed": 1.25})
            applied = await recv(ws)
            await send_json(ws, {"type": "Close"})
            rest, code, _ = await closed_with(ws)
    assert connected["type"] == "Connected" and connected["model_name"] == "flux-alexis-en"
    assert len(connected["model_uuids"]) == 1
    assert types(turn)[0] == "SpeechStarted" and types(turn)[-2:] == ["SpeechMetadata", "Flushed"]
    speech_id = turn[0]["speech_id"]
    assert speech_id.startswith("dg_sp_") and len(speech_id) == 18
    assert turn[-2]["speech_id"] == turn[-1]["speech_id"] == speech_id
    audio = b"".join(m for m in turn if isinstance(m, bytes))
    assert len(audio) == 16000 * len("Hello there") * SPEAK_MS_PER_CHAR // 1000 * 2
    assert turn[-2]["audio_duration_ms"] == len("Hello there") * SPEAK_MS_PER_CHAR
    assert turn[-2]["input_character_count"] == 11
    assert refused["type"] == "ConfigureFailure" and refused["code"] == "SPEED_OUT_OF_RANGE"
    assert applied == {"type": "ConfigureSuccess", "applied": {"speed": 1.25}}
    assert types(rest) == ["SessionMetadata"] and code == 1000
    assert rest[0]["total_input_character_count"] == 11


async def test_speak_v2_refuses_aura_models(sim: Sim) -> None:
    with trio.fail_after(3), pytest.raises(ConnectionRejected) as info:
        async with connect(sim, "/v2/speak", "model=aura-2-thalia-en"):
            pass
    assert info.value.status_code == 400


# ---------------------------------------------------------------------------------------
# v1 leniency (issue 14 item 7)


async def test_speak_without_flush_is_spoken_after_a_pause(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/speak", "encoding=linear16&sample_rate=16000") as ws:
            await recv(ws)
            await send_json(ws, {"type": "Speak", "text": "no flush"})
            started = trio.current_time()
            first = await recv(ws)
            waited = trio.current_time() - started
            audio = first
            while len(audio) < 16000 * 8 * SPEAK_MS_PER_CHAR // 1000 * 2:
                audio += await recv(ws)
            await send_json(ws, {"type": "Close"})
            rest, code, _ = await closed_with(ws)
    assert isinstance(first, bytes) and waited >= 0.4
    assert len(audio) == 16000 * 8 * SPEAK_MS_PER_CHAR // 1000 * 2
    assert rest == [] and code == 1000  # no Flushed: nobody flushed


async def test_listen_answers_a_short_silence_with_an_empty_result(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", "encoding=linear16&sample_rate=16000") as ws:
            await send_audio(ws, silence_pcm16(500, rate=16000))
            result = await recv(ws)
    assert result["type"] == "Results" and result["is_final"] is True
    assert result["channel"]["alternatives"][0]["transcript"] == ""
    assert result["start"] == 0.0 and result["duration"] == 0.5


async def test_listen_answers_a_long_silence_while_it_streams(sim: Sim) -> None:
    with trio.fail_after(3):
        async with connect(sim, "/v1/listen", "encoding=linear16&sample_rate=16000") as ws:
            await send_audio(ws, silence_pcm16(2500, rate=16000))
            result = await recv(ws)
    assert result["channel"]["alternatives"][0]["transcript"] == ""
    assert result["duration"] == 2.0


# ---------------------------------------------------------------------------------------
# The official SDK's v2 clients


async def test_official_sdk_listen_v2(sim: Sim) -> None:
    from deepgram.listen.v2.types import ListenV2Connected, ListenV2TurnInfo

    with trio.fail_after(10):
        seen = await trio.to_thread.run_sync(
            deepgram_sdk.flux_exchange, deepgram_sdk.sdk_client(sim.port, KEY), abandon_on_cancel=True
        )
    assert isinstance(seen[0], ListenV2Connected)
    turns = [m for m in seen[1:] if isinstance(m, ListenV2TurnInfo)]
    assert len(turns) == len(seen) - 1, seen
    assert [t.event for t in turns if t.event != "Update"] == ["StartOfTurn", "EagerEndOfTurn", "EndOfTurn"]
    assert turns[-1].transcript == "tone 0.7 seconds" and turns[-1].words[0].word == "tone"
    record = sim.sim.connections[0]
    assert record.path == "/v2/listen" and ("eager_eot_threshold", "0.4") in record.query
    assert record.received_json()[-1] == {"type": "CloseStream"}
