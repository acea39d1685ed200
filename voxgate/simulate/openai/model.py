"""The simulator's deterministic "model": what a response says and whether it calls a tool.

Replies say ``You said: <last user text>``; after a ``function_call_output`` they say
``The function returned: <output>``. A user text that names a configured tool (``get_time``
matches "get time" or "GET_TIME") yields a call instead (arguments ``{}``, or every required
string parameter set to the user text). Audio the user sent counts as the text
``audio of <seconds> seconds`` (``transcripts`` holds what the VAD heard per item).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

import orjson

from voxgate.simulate.openai.protocol import server_event

__all__ = ["choose_tool", "pieces", "reply_text", "transcription_events", "user_text"]

Items = list[dict[str, Any]]


def pieces(text: str) -> list[str]:
    """Split text the way streaming deltas usually arrive: one word with its leading space."""
    return re.findall(r"\s*\S+", text) or [text]


def user_text(item: dict[str, Any], transcripts: Mapping[str, str]) -> str | None:
    """What a user message said (None: not a user message)."""
    if item.get("type") != "message" or item.get("role") != "user":
        return None
    texts = []
    for part in item.get("content", []):
        if part.get("type") == "input_text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "input_audio":
            texts.append(part.get("transcript") or _audio_transcript(item["id"], part, transcripts))
    return " ".join(t for t in texts if t)


def _audio_transcript(item_id: str, part: dict[str, Any], transcripts: Mapping[str, str]) -> str:
    if item_id in transcripts:
        return transcripts[item_id]
    try:
        size = len(base64.b64decode(part.get("audio") or ""))
    except (binascii.Error, ValueError):
        size = 0
    return f"audio of {size / 48000:.1f} seconds" if size else ""


def _last_user_text(items: Items, transcripts: Mapping[str, str]) -> str | None:
    for item in reversed(items):
        text = user_text(item, transcripts)
        if text is not None:
            return text
    return None


def choose_tool(
    items: Items, tools: list[dict[str, Any]], tool_choice: Any, transcripts: Mapping[str, str]
) -> tuple[str, str] | None:
    """(name, arguments) of the call this turn makes, or None for a message."""
    if not tools or tool_choice == "none" or not items:
        return None
    text = user_text(items[-1], transcripts)
    if text is None:  # only a fresh user turn may start a call
        return None
    chosen = None
    if isinstance(tool_choice, dict):
        chosen = next((t for t in tools if t["name"] == tool_choice["name"]), None)
    else:
        chosen = _named_tool(tools, text)
        if chosen is None and tool_choice == "required":
            chosen = tools[0]
    if chosen is None:
        return None
    return chosen["name"], _arguments_for(chosen, text)


def _named_tool(tools: list[dict[str, Any]], text: str) -> dict[str, Any] | None:
    low = text.lower()
    for tool in tools:
        name = tool["name"].lower()
        if name in low or name.replace("_", " ") in low:
            return tool
    return None


def _arguments_for(tool: dict[str, Any], text: str) -> str:
    params = tool.get("parameters") or {}
    props = params.get("properties") if isinstance(params, dict) else None
    required = params.get("required") if isinstance(params, dict) else None
    args = {}
    if isinstance(props, dict) and isinstance(required, list):
        for name in required:
            if isinstance(props.get(name), dict) and props[name].get("type") == "string":
                args[name] = text
    return orjson.dumps(args).decode()


def reply_text(items: Items, transcripts: Mapping[str, str]) -> str:
    if items and items[-1].get("type") == "function_call_output":
        return f"The function returned: {items[-1].get('output', '')}"
    text = _last_user_text(items, transcripts)
    if text is None:
        return "Hello from the voxgate simulator."
    if text == "":
        return "Are you still there?"
    return f"You said: {text}"


def transcription_events(item_id: str, transcript: str) -> list[dict[str, Any]]:
    """What input audio transcription reports for a committed user item."""
    events = [
        server_event(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=0,
            delta=piece,
        )
        for piece in pieces(transcript)
    ]
    words = len(transcript.split())
    events.append(
        server_event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item_id,
            content_index=0,
            transcript=transcript,
            usage={
                "type": "tokens",
                "total_tokens": 10 + words,
                "input_tokens": 10,
                "input_token_details": {"text_tokens": 0, "audio_tokens": 10},
                "output_tokens": words,
            },
        )
    )
    return events
