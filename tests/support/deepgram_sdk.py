"""The official deepgram-sdk (v7, sync) pointed at a base URL, and the agent exchange the
tests drive through it; shared by the simulator tests and the gateway client tests."""

from __future__ import annotations

from typing import Any

from tests.support.deepgram_helpers import SETTINGS


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
                agent=SETTINGS["agent"],
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
