"""The official deepgram-sdk (v7, sync) pointed at a base URL, and the agent exchange the
tests drive through it; shared by the simulator tests and the gateway client tests."""

from __future__ import annotations

from typing import Any

from tests.support.settings import FULL_SETTINGS


def sdk_client(port: int, api_key: str, *, path: str = "") -> Any:
    """A DeepgramClient whose websocket hosts are ws://127.0.0.1:PORT{path}."""
    from deepgram import DeepgramClient
    from deepgram.environment import DeepgramClientEnvironment

    base = f"127.0.0.1:{port}"
    environment = DeepgramClientEnvironment(
        base=f"http://{base}",
        production=f"ws://{base}{path}",
        agent=f"ws://{base}{path}",
        agent_rest=f"http://{base}",
    )
    return DeepgramClient(api_key=api_key, environment=environment)


def agent_exchange(client: Any, content: str) -> list[Any]:
    """Settings -> SettingsApplied -> InjectUserMessage -> assistant ConversationText (bounded)."""
    from deepgram.agent.v1.types import (
        AgentV1InjectUserMessage,
        AgentV1Settings,
        AgentV1SettingsAudio,
        AgentV1SettingsAudioInput,
    )

    seen: list[Any] = []
    with client.agent.v1.connect() as agent:
        agent.send_settings(
            AgentV1Settings(
                audio=AgentV1SettingsAudio(
                    input=AgentV1SettingsAudioInput(encoding="linear16", sample_rate=16000)
                ),
                agent=FULL_SETTINGS["agent"],
            )
        )
        for _ in range(20):
            seen.append(agent.recv())
            if getattr(seen[-1], "type", None) == "SettingsApplied":
                break
        agent.send_inject_user_message(AgentV1InjectUserMessage(content=content))
        for _ in range(50):
            seen.append(agent.recv())
            if getattr(seen[-1], "type", None) == "ConversationText" and seen[-1].role == "assistant":
                break
    return seen


def flux_exchange(client: Any) -> list[Any]:
    """listen.v2 (Flux): 0.7 s of tone and 0.6 s of silence, typed messages up to EndOfTurn,
    then CloseStream (bounded)."""
    from voxgate.simulate.common import silence_pcm16, tone_pcm16

    seen: list[Any] = []
    audio = tone_pcm16(700, rate=16000) + silence_pcm16(600, rate=16000)
    with client.listen.v2.connect(
        model="flux-general-en", encoding="linear16", sample_rate="16000", eager_eot_threshold="0.4"
    ) as flux:
        flux.send_media(audio)
        for _ in range(40):
            seen.append(flux.recv())
            if getattr(seen[-1], "event", None) == "EndOfTurn":
                break
        flux.send_close_stream()
    return seen


def speak_v2_exchange(client: Any, text: str) -> list[Any]:
    """speak.v2: one turn (Speak, Flush) up to Flushed, then Close up to SessionMetadata."""
    from deepgram.speak.v2.types import SpeakV2Speak

    seen: list[Any] = []
    with client.speak.v2.connect(model="flux-alexis-en", encoding="linear16", sample_rate="16000") as speak:
        seen.append(speak.recv())
        speak.send_speak(SpeakV2Speak(text=text))
        speak.send_flush()
        for _ in range(100):
            seen.append(speak.recv())
            if getattr(seen[-1], "type", None) == "Flushed":
                break
        speak.send_close()
        for _ in range(10):
            seen.append(speak.recv())
            if getattr(seen[-1], "type", None) == "SessionMetadata":
                break
    return seen
