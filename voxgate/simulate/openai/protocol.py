"""Vocabulary of the simulated Realtime protocol: ids, server events, and ``Invalid``, the
refusal the real API answers with an ``error`` event, with the field checks that raise it.

Every other module of the OpenAI simulator validates client input through these, so error
codes, messages and ``param`` paths read the same everywhere.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from typing import Any

__all__ = [
    "Invalid",
    "base64_audio",
    "check_keys",
    "expect_object",
    "expect_number",
    "invalid_value",
    "missing",
    "new_id",
    "server_event",
]


class Invalid(Exception):
    """A client event the real API would answer with an ``error`` event."""

    def __init__(self, code: str | None, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def server_event(type_: str, **fields: Any) -> dict[str, Any]:
    """A server event with a fresh ``event_id``."""
    return {"type": type_, "event_id": new_id("event"), **fields}


def missing(path: str) -> Invalid:
    return Invalid("missing_required_parameter", f"Missing required parameter: '{path}'.", path)


def check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise Invalid(
                "unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}"
            )


def expect_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid("invalid_type", f"Invalid type for '{path}': expected an object.", path)
    return value


def expect_number(value: Any, path: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid("invalid_type", f"Invalid type for '{path}': expected a number.", path)
    if value < lo:
        raise Invalid(
            "decimal_below_min_value", f"Invalid '{path}': expected a value >= {lo}.", path
        )
    if value > hi:
        raise Invalid(
            "decimal_above_max_value", f"Invalid '{path}': expected a value <= {hi}.", path
        )


def invalid_value(value: Any, path: str, allowed: tuple[str, ...]) -> Invalid:
    listed = ", ".join(f"'{a}'" for a in allowed[:-1]) + f", and '{allowed[-1]}'"
    if len(allowed) == 2:
        listed = f"'{allowed[0]}' and '{allowed[1]}'"
    return Invalid(
        "invalid_value", f"Invalid value: '{value}'. Supported values are: {listed}.", path
    )


def base64_audio(audio: Any) -> bytes:
    """The bytes of an ``audio`` field (base64), or ``Invalid`` as the real API answers."""
    if audio is None:
        raise missing("audio")
    try:
        data = base64.b64decode(audio, validate=True) if isinstance(audio, str) else None
    except (binascii.Error, ValueError):
        data = None
    if data is None:
        raise Invalid("invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio")
    return data
