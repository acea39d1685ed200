"""Pure mappers from OpenAI Realtime GA server events to Deepgram Voice Agent client messages
(openai-translator §3, §3.1, §3.2, §5.1), and the canonical list of GA server event types.

Inputs are parsed upstream JSON of any shape; outputs are plain dicts ready for orjson.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "GA_SERVER_EVENT_TYPES",
    "assistant_text_from_item",
    "assistant_text_from_response",
    "client_error",
    "function_call_request",
    "output_text_from_done",
    "redact",
    "text_delta",
    "transcript_final",
    "transcript_interim",
    "upstream_error",
    "utterance_end",
]

GA_SERVER_EVENT_TYPES: tuple[str, ...] = (
    "conversation.created",
    "conversation.item.added",
    "conversation.item.created",
    "conversation.item.deleted",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.completed",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "conversation.item.retrieved",
    "conversation.item.truncated",
    "error",
    "input_audio_buffer.cleared",
    "input_audio_buffer.committed",
    "input_audio_buffer.dtmf_event_received",
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.timeout_triggered",
    "mcp_list_tools.completed",
    "mcp_list_tools.failed",
    "mcp_list_tools.in_progress",
    "rate_limits.updated",
    "response.content_part.added",
    "response.content_part.done",
    "response.created",
    "response.done",
    "response.function_call_arguments.done",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.delta",
    "response.output_audio_transcript.done",
    "response.output_item.added",
    "response.output_item.done",
    "response.output_text.added",
    "response.output_text.delta",
    "response.output_text.done",
    "session.created",
    "session.updated",
)
"""The 38 OpenAI Realtime GA server event types of the reference's canonical list
(OPENAI-REALTIME-SERVER-EVENT-TYPES.ts); the translator's handler table must name each."""

_KEYLIKE = re.compile(r"\b(sk-|ek_)[A-Za-z0-9_\-]{6,}")


def redact(text: str) -> str:
    """Mask anything shaped like an OpenAI key or client secret before it reaches a client."""
    return _KEYLIKE.sub(lambda m: m.group(1) + "***", text)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def client_error(code: str, description: str) -> dict[str, Any]:
    """A Deepgram `Error` message."""
    return {"type": "Error", "description": description, "code": code}


def upstream_error(event: dict[str, Any]) -> dict[str, Any]:
    """Upstream `error` -> client `Error` (§5.1): structured code or "unknown", never from text."""
    err = event.get("error")
    err = err if isinstance(err, dict) else {}
    code = err.get("code")
    code = code if isinstance(code, str) and code else "unknown"
    message = err.get("message")
    message = redact(message) if isinstance(message, str) and message else "Unknown error"
    return client_error(code, message)


def utterance_end(event: dict[str, Any]) -> dict[str, Any]:
    """`input_audio_buffer.speech_stopped` -> `UtteranceEnd` (channel/last_word_end passthrough)."""
    channel = event.get("channel")
    last = event.get("last_word_end")
    return {
        "type": "UtteranceEnd",
        "channel": channel if isinstance(channel, list) and channel else [0, 1],
        "last_word_end": last if _is_number(last) else 0,
    }


def _channels(event: dict[str, Any]) -> tuple[Any, list[Any]]:
    channel = event.get("channel")
    index = event.get("channel_index")
    if not (isinstance(index, list) and index):
        index = [channel] if _is_number(channel) else [0]
    if not _is_number(channel):
        channel = index[0] if _is_number(index[0]) else 0
    return channel, index


def _transcript(event: dict[str, Any], text: str, *, final: bool, alternatives: list[Any]) -> dict:
    channel, index = _channels(event)
    start = event.get("start")
    duration = event.get("duration")
    return {
        "type": "Transcript",
        "transcript": text,
        "is_final": final,
        "speech_final": final,
        "channel": channel,
        "channel_index": index,
        "start": start if _is_number(start) else 0,
        "duration": duration if _is_number(duration) else 0,
        "alternatives": alternatives,
    }


def transcript_interim(event: dict[str, Any], accumulated: str) -> dict[str, Any]:
    """Interim `Transcript` carrying the text accumulated so far for the item (§3.1)."""
    alternatives = [{"transcript": accumulated, "confidence": 1, "words": []}]
    return _transcript(event, accumulated, final=False, alternatives=alternatives)


def transcript_final(event: dict[str, Any]) -> dict[str, Any]:
    """`...input_audio_transcription.completed` -> final `Transcript` (§3.1)."""
    text = _str(event.get("transcript"))
    alternatives = []
    raw = event.get("alternatives")
    for alt in raw if isinstance(raw, list) else []:
        if not isinstance(alt, dict):
            continue
        confidence = alt.get("confidence")
        words = alt.get("words")
        alternatives.append(
            {
                "transcript": _str(alt.get("transcript"), text),
                "confidence": confidence if _is_number(confidence) else 1,
                "words": words if isinstance(words, list) else [],
            }
        )
    if not alternatives:
        alternatives = [{"transcript": text, "confidence": 1, "words": []}]
    return _transcript(event, text, final=True, alternatives=alternatives)


def function_call_request(event: dict[str, Any]) -> dict[str, Any]:
    """`response.function_call_arguments.done` -> one `FunctionCallRequest` (never batched)."""
    return {
        "type": "FunctionCallRequest",
        "functions": [
            {
                "id": _str(event.get("call_id")),
                "name": _str(event.get("name"), "function") or "function",
                "arguments": _str(event.get("arguments")),
                "client_side": True,
            }
        ],
    }


def _part_text(part: Any) -> str:
    """Text of one content part, first match wins (§3.2); "" when it has none."""
    if isinstance(part, str):
        return part.strip()
    if not isinstance(part, dict):
        return ""
    if part.get("type") == "function_call":
        name = _str(part.get("name"), "function") or "function"
        args = _str(part.get("arguments")).strip()
        return f"Function call: {name}({args})"
    for key in ("text", "transcript"):
        if isinstance(part.get(key), str) and part[key].strip():
            return part[key].strip()
    for key in ("output_text", "input_text"):
        nested = part.get(key)
        if (
            isinstance(nested, dict)
            and isinstance(nested.get("text"), str)
            and nested["text"].strip()
        ):
            return nested["text"].strip()
    if isinstance(part.get("content"), str):
        return part["content"].strip()
    return ""


def assistant_text_from_item(item: Any) -> str | None:
    """Assistant text of a conversation item (§3.2); None for other roles or no text."""
    if not isinstance(item, dict) or item.get("role") != "assistant":
        return None
    content = item.get("content")
    parts = content if isinstance(content, list) else [content]
    texts = [t for t in (_part_text(p) for p in parts) if t]
    return "\n".join(texts) or None


def assistant_text_from_response(response: Any) -> tuple[str | None, list[str]]:
    """Assistant text in `response.done`'s `response.output`, and those items' ids."""
    output = response.get("output") if isinstance(response, dict) else None
    texts: list[str] = []
    ids: list[str] = []
    for item in output if isinstance(output, list) else []:
        text = assistant_text_from_item(item)
        if text:
            texts.append(text)
            if isinstance(item.get("id"), str) and item["id"]:
                ids.append(item["id"])
    return ("\n".join(texts) or None), ids


def text_delta(event: dict[str, Any]) -> str:
    """The text of a `response.output_text.delta` (string, or an object with text/delta)."""
    delta = event.get("delta")
    if isinstance(delta, str):
        return delta
    if isinstance(delta, dict):
        for key in ("text", "delta"):
            if isinstance(delta.get(key), str):
                return delta[key]
    return ""


def output_text_from_done(event: dict[str, Any]) -> str | None:
    """`response.output_text.done` text from `text` or `part.text`; None when blank."""
    text = event.get("text")
    if not (isinstance(text, str) and text.strip()):
        part = event.get("part")
        text = part.get("text") if isinstance(part, dict) else None
    if isinstance(text, str) and text.strip():
        return text
    return None
