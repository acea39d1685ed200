"""Conversation items of the simulated Realtime session: client items validated and given the
fields the server reports, and the ordered conversation they live in (``previous_item_id``
placement, lookups that fail the way the real API does).
"""

from __future__ import annotations

from typing import Any

from voxgate.simulate.openai.protocol import Invalid, expect_object, invalid_value, missing, new_id

__all__ = [
    "find_item",
    "insert_item",
    "item_index",
    "normalise_item",
    "truncate_item",
    "user_audio_item",
]

_CONTENT_TYPES = {
    "user": ("input_text", "input_audio", "input_image"),
    "system": ("input_text",),
    "assistant": ("output_text", "output_audio"),
}


def normalise_item(item: Any) -> dict[str, Any]:
    """Validate a client item and give it the fields the server reports."""
    item = expect_object(item, "item")
    kind = item.get("type")
    if kind is None:
        raise missing("item.type")
    base = {"id": item.get("id"), "object": "realtime.item", "type": kind, "status": "completed"}
    if kind == "message":
        return {**base, **_message_fields(item)}
    if kind == "function_call":
        _require_strings(item, ("name", "arguments"))
        return {
            **base,
            "name": item["name"],
            "call_id": item.get("call_id") or new_id("call"),
            "arguments": item["arguments"],
        }
    if kind == "function_call_output":
        _require_strings(item, ("call_id", "output"))
        return {**base, "call_id": item["call_id"], "output": item["output"]}
    raise invalid_value(kind, "item.type", ("message", "function_call", "function_call_output"))


def _message_fields(item: dict[str, Any]) -> dict[str, Any]:
    role = item.get("role")
    if role not in _CONTENT_TYPES:
        if role is None:
            raise missing("item.role")
        raise invalid_value(role, "item.role", ("user", "assistant", "system"))
    content = item.get("content")
    if not isinstance(content, list):
        raise missing("item.content")
    allowed = _CONTENT_TYPES[role]
    parts = []
    for i, part in enumerate(content):
        part = expect_object(part, f"item.content[{i}]")
        if part.get("type") not in allowed:
            raise invalid_value(part.get("type"), f"item.content[{i}].type", allowed)
        part = dict(part)
        if part["type"] == "input_audio":
            part.setdefault("transcript", None)
        parts.append(part)
    return {"role": role, "content": parts}


def _require_strings(item: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        if not isinstance(item.get(key), str):
            raise missing(f"item.{key}")


def find_item(items: list[dict[str, Any]], item_id: Any) -> int | None:
    return next((i for i, it in enumerate(items) if it["id"] == item_id), None)


def item_index(items: list[dict[str, Any]], item_id: Any, param: str) -> int:
    """Index of ``item_id``, or ``item_not_found`` naming ``param``."""
    index = find_item(items, item_id)
    if index is None:
        raise Invalid("item_not_found", f"Item with id '{item_id}' not found.", param)
    return index


def insert_item(items: list[dict[str, Any]], item: dict[str, Any], previous_item_id: Any = None) -> str | None:
    """Place ``item`` after ``previous_item_id`` (None: at the end, "root": first); return the
    id of the item now before it."""
    if previous_item_id is None:
        prev = items[-1]["id"] if items else None
        items.append(item)
        return prev
    if previous_item_id == "root":
        items.insert(0, item)
        return None
    index = find_item(items, previous_item_id)
    if index is None:
        raise Invalid(
            "invalid_value",
            f"Previous item with id '{previous_item_id}' not found.",
            "previous_item_id",
        )
    items.insert(index + 1, item)
    return previous_item_id


def user_audio_item(item_id: str) -> dict[str, Any]:
    """The user item committed input audio becomes (transcript filled in later, if any)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def truncate_item(item: dict[str, Any], audio_end_ms: Any, audio_length_ms: int) -> None:
    """Cut an assistant item's audio at ``audio_end_ms`` (its transcript goes), or refuse as
    the real API does."""
    if item.get("role") != "assistant":
        raise Invalid("invalid_value", "Only assistant messages can be truncated.", "item_id")
    if not isinstance(audio_end_ms, int) or isinstance(audio_end_ms, bool) or audio_end_ms < 0:
        raise Invalid(
            "invalid_type", "Invalid 'audio_end_ms': expected an integer >= 0.", "audio_end_ms"
        )
    if audio_end_ms > audio_length_ms:
        raise Invalid(
            "invalid_value",
            f"Audio content of {audio_length_ms}ms is already shorter than {audio_end_ms}ms",
            "audio_end_ms",
        )
    for part in item.get("content", []):
        if part.get("type") == "output_audio":
            part["transcript"] = ""
