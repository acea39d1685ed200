"""The session set-up messages the tests send, built in one place per protocol.

Deepgram Voice Agent `Settings`: the short one the translator tests send (`SETTINGS`, a prompt
and nothing else), the full one a real Deepgram client sends (`FULL_SETTINGS`: formats,
language, listen/think/speak providers), and builders for the variants a test needs, so a test
that checks one field says only that field. OpenAI Realtime: `session_update(...)`.

Builders return fresh copies: a test may change what it got without touching another test.
"""

from __future__ import annotations

import copy
from typing import Any

PROMPT = "Help."

_SHORT_AGENT: dict[str, Any] = {"think": {"prompt": PROMPT}}
_FULL_AGENT: dict[str, Any] = {
    "language": "en",
    "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
    "think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": "Be brief."},
    "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
}


def linear16_audio(input_rate: int = 16000, output_rate: int = 24000) -> dict[str, Any]:
    """`audio` block: raw linear16 both ways (no container on the output)."""
    return {
        "input": {"encoding": "linear16", "sample_rate": input_rate},
        "output": {"encoding": "linear16", "sample_rate": output_rate, "container": "none"},
    }


def settings_message(agent: Any = None, audio: Any = None) -> dict[str, Any]:
    """A Settings message with exactly the parts given (type, audio, agent, in that order)."""
    message: dict[str, Any] = {"type": "Settings"}
    if audio is not None:
        message["audio"] = copy.deepcopy(audio)
    if agent is not None:
        message["agent"] = copy.deepcopy(agent)
    return message


def _with(agent: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`agent` with top-level fields replaced (in place, keeping the order) or added."""
    return {**copy.deepcopy(agent), **copy.deepcopy(overrides)}


def agent_settings(*, audio: Any = None, **agent: Any) -> dict[str, Any]:
    """The short Settings (think.prompt "Help.") with agent fields overridden, e.g.
    `agent_settings(think={"prompt": "Be brief."})` or `agent_settings(greeting="Hi")`."""
    return settings_message(_with(_SHORT_AGENT, agent), audio)


def full_settings(**agent: Any) -> dict[str, Any]:
    """The full Settings a real Deepgram client sends, with agent fields overridden."""
    return settings_message(_with(_FULL_AGENT, agent), linear16_audio())


# A conversation so far, as `agent.context` carries it.
CONTEXT: dict[str, Any] = {
    "messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there!"}]
}

SETTINGS = agent_settings()
MANUAL_SETTINGS = agent_settings(useOpenAIManualAudioCommit=True)
BRIEF_SETTINGS = agent_settings(think={"prompt": "Be brief."})
FULL_SETTINGS = full_settings()
# What the Deepgram docs' minimal example sends: formats and a think provider, no prompt.
MINIMAL_DEEPGRAM_SETTINGS = settings_message(
    {"think": {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}}}, linear16_audio(24000)
)


def session_update(*, event_id: str | None = None, **session: Any) -> dict[str, Any]:
    """An OpenAI Realtime `session.update` of a realtime session with the given fields."""
    message: dict[str, Any] = {"type": "session.update"}
    if event_id is not None:
        message["event_id"] = event_id
    message["session"] = {"type": "realtime", **copy.deepcopy(session)}
    return message


SESSION_UPDATED: dict[str, Any] = {"type": "session.updated", "session": {"type": "realtime"}}
# What OpenAI sends on connect, before any session.update (the translator must not take it as ready).
SESSION_CREATED: dict[str, Any] = {"type": "session.created", "session": {}}
