"""OpenAI Realtime's turn-detection settings, written once.

The translator fills these in when a Settings leaves turn-taking to the gateway, and the
simulator fills them in where a ``session.update`` leaves a field out, as the service does.
Keeping one copy means the simulated service and the gateway cannot drift apart.
"""

from __future__ import annotations

from typing import Any

SERVER_VAD: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 200,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}


def with_defaults(turn_detection: dict[str, Any]) -> dict[str, Any]:
    """``turn_detection`` with every field it leaves out taken from its type's defaults."""
    base = SERVER_VAD if turn_detection.get("type") == "server_vad" else SEMANTIC_VAD
    return {**base, **turn_detection}
