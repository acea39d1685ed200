"""What one simulated Realtime response consists of: its options, its output item, the
events that stream it (function-call arguments, text, or audio with its transcript), the
``response`` object and its usage.

The session decides when a response starts, ends or is cancelled; this module only says what
goes out. Events are queued through a ``Tag`` the session hands in, which serialises each
event at once: items change while a response streams, and every event must show the item as
it was when that event was produced.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from voxgate.simulate.audio import encode_pcm16, tone_pcm16
from voxgate.simulate.openai.model import pieces
from voxgate.simulate.openai.protocol import new_id, server_event
from voxgate.simulate.openai.session_config import (
    bytes_per_ms,
    g711_encoding,
    validate_max_tokens,
    validate_modalities,
    validate_tool_choice,
    validate_tools,
)

__all__ = [
    "REPLY_AUDIO_MS",
    "RESPONSE_KEYS",
    "Response",
    "Tag",
    "output_item",
    "queue_audio",
    "queue_call",
    "queue_text",
    "rate_limits_event",
    "reply_audio",
    "response_object",
    "response_options",
    "usage",
]

REPLY_AUDIO_MS = 300
REPLY_CHUNK_MS = 100

RESPONSE_KEYS = frozenset(
    {
        "output_modalities",
        "instructions",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "conversation",
        "metadata",
        "prompt",
        "input",
    }
)


class Tag(Protocol):
    """Queues one event of the response being built (``delay``: seconds after the previous
    one may go; ``on_send``: called with the send time)."""

    def __call__(
        self,
        event: dict[str, Any],
        *,
        delay: float = 0.0,
        on_send: Callable[[float], None] | None = None,
    ) -> None: ...


@dataclass
class Response:
    """One response in flight: what ``response.done`` and a cancellation need to know."""

    id: str
    modalities: list[str]
    out_of_band: bool
    metadata: Any
    max_output_tokens: Any
    item: dict[str, Any]
    item_added_sent: bool = False
    finished: bool = False


def response_options(params: dict[str, Any], session: dict[str, Any]) -> tuple[list[str], Any, Any, Any]:
    """(modalities, tools, tool_choice, max_output_tokens): ``response.create`` overrides,
    validated, else the session's."""
    modalities = (
        validate_modalities(params["output_modalities"], "response.output_modalities")
        if "output_modalities" in params
        else list(session["output_modalities"])
    )
    tools = validate_tools(params["tools"], "response.tools") if "tools" in params else session["tools"]
    tool_choice = (
        validate_tool_choice(params["tool_choice"], "response.tool_choice")
        if "tool_choice" in params
        else session["tool_choice"]
    )
    max_tokens = (
        validate_max_tokens(params["max_output_tokens"], "response.max_output_tokens")
        if "max_output_tokens" in params
        else session["max_output_tokens"]
    )
    return modalities, tools, tool_choice, max_tokens


def output_item(item_id: str, call: tuple[str, str] | None) -> dict[str, Any]:
    """The response's item as first announced: a function call or an assistant message."""
    if call is not None:
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": call[0],
            "call_id": new_id("call"),
            "arguments": "",
        }
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }


def reply_audio(fmt: dict[str, Any], duration_ms: int = REPLY_AUDIO_MS) -> bytes:
    """The assistant's "voice": a short tone in the session's output format."""
    encoding = g711_encoding(fmt)
    if encoding is None:
        return tone_pcm16(duration_ms, rate=24000, freq=440.0, amplitude=0.3)
    return encode_pcm16(tone_pcm16(duration_ms, rate=8000, freq=440.0, amplitude=0.3), encoding)


def queue_call(tag: Tag, ids: dict[str, Any], item: dict[str, Any], call: tuple[str, str]) -> None:
    """Stream a function call's arguments."""
    name, arguments = call
    for piece in pieces(arguments):
        tag(server_event("response.function_call_arguments.delta", **ids, call_id=item["call_id"], delta=piece))
    tag(
        server_event(
            "response.function_call_arguments.done",
            **ids,
            call_id=item["call_id"],
            name=name,
            arguments=arguments,
        )
    )
    item["arguments"] = arguments


def queue_text(tag: Tag, ids: dict[str, Any], item: dict[str, Any], text: str) -> None:
    """Stream a text content part (``ids`` includes ``content_index``)."""
    tag(server_event("response.content_part.added", **ids, part={"type": "text", "text": ""}))
    for piece in pieces(text):
        tag(server_event("response.output_text.delta", **ids, delta=piece))
    tag(server_event("response.output_text.done", **ids, text=text))
    item["content"] = [{"type": "output_text", "text": text}]
    tag(server_event("response.content_part.done", **ids, part={"type": "text", "text": text}))


def queue_audio(
    tag: Tag,
    ids: dict[str, Any],
    item: dict[str, Any],
    text: str,
    fmt: dict[str, Any],
    *,
    pace: float,
    on_audio: Callable[[float], None],
) -> int:
    """Stream an audio content part, transcript deltas interleaved with audio chunks
    ``pace`` seconds apart; return the audio's length in ms."""
    tag(server_event("response.content_part.added", **ids, part={"type": "audio", "transcript": ""}))
    audio = reply_audio(fmt)
    chunk = REPLY_CHUNK_MS * bytes_per_ms(fmt)
    chunks = [audio[i : i + chunk] for i in range(0, len(audio), chunk)]
    words = pieces(text)
    for i in range(max(len(chunks), len(words))):
        if i < len(words):
            tag(server_event("response.output_audio_transcript.delta", **ids, delta=words[i]))
        if i < len(chunks):
            delta = base64.b64encode(chunks[i]).decode()
            tag(
                server_event("response.output_audio.delta", **ids, delta=delta),
                delay=pace if i else 0.0,
                on_send=on_audio,
            )
    tag(server_event("response.output_audio.done", **ids))
    tag(server_event("response.output_audio_transcript.done", **ids, transcript=text))
    item["content"] = [{"type": "output_audio", "transcript": text}]
    tag(server_event("response.content_part.done", **ids, part={"type": "audio", "transcript": text}))
    return len(audio) // bytes_per_ms(fmt)


def response_object(
    resp: Response,
    session: dict[str, Any],
    conversation_id: str,
    status: str,
    details: dict[str, Any] | None = None,
    output: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``response`` of ``response.created`` / ``response.done``."""
    out = session["audio"]["output"]
    return {
        "object": "realtime.response",
        "id": resp.id,
        "status": status,
        "status_details": details,
        "output": output or [],
        "conversation_id": None if resp.out_of_band else conversation_id,
        "output_modalities": resp.modalities,
        "max_output_tokens": resp.max_output_tokens,
        "audio": {"output": {"format": out["format"], "voice": out["voice"]}},
        "usage": usage,
        "metadata": resp.metadata,
    }


def usage(items: list[dict[str, Any]], output: list[dict[str, Any]]) -> dict[str, Any]:
    """Token counts derived from sizes (deterministic, roughly the real proportions)."""
    text_in = sum(len(orjson.dumps(i)) for i in items) // 16 + 20
    out_text = 0
    out_audio = 0
    for item in output:
        for part in item.get("content", []):
            words = len(str(part.get("text") or part.get("transcript") or "").split())
            out_text += words
            if part.get("type") == "output_audio":
                out_audio += REPLY_AUDIO_MS // 20
        if item.get("type") == "function_call":
            out_text += 5
    return {
        "total_tokens": text_in + out_text + out_audio,
        "input_tokens": text_in,
        "output_tokens": out_text + out_audio,
        "input_token_details": {
            "text_tokens": text_in,
            "audio_tokens": 0,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
    }


def rate_limits_event(tokens_remaining: int) -> dict[str, Any]:
    """``rate_limits.updated`` after a response (a 40k token budget per session)."""
    return server_event(
        "rate_limits.updated",
        rate_limits=[
            {
                "name": "tokens",
                "limit": 40_000,
                "remaining": max(tokens_remaining, 0),
                "reset_seconds": 0.5,
            }
        ],
    )
