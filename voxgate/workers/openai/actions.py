"""What the sans-IO translator asks its I/O wrapper to do, and where those requests collect.

The translator's parts never touch a socket or a clock: they append `Action`s to one shared
`Outbox` (frames for either leg, timers, closes, log lines), and hold client frames that arrive
too early in a `Backlog` (R1, R5, R6, D30). The wrapper performs the actions in list order.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.workers.closecodes import safe_reason
from voxgate.workers.openai.upstream_map import client_error

__all__ = [
    "Action",
    "ArmTimer",
    "Backlog",
    "CancelTimer",
    "CloseClient",
    "CloseUpstream",
    "Log",
    "Outbox",
    "SendClient",
    "SendUpstream",
    "TIMERS",
    "TIMER_COMMIT_COALESCE",
    "TIMER_COMMIT_DEBOUNCE",
    "TIMER_DEFERRED_CREATE",
]


@dataclass(frozen=True, slots=True)
class SendClient:
    """Send to the client: `str` as a WebSocket text frame, `bytes` as a binary frame."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send to the upstream; always one JSON text frame."""

    data: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)arm the named timer; replaces a running timer of the same name."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Cancel the named timer; a timer that is not running is left alone."""

    name: str


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client leg with this code and a short generic reason (<= 123 bytes)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the upstream leg (or abandon its connect) with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the wrapper's logger; never holds keys, payloads only at debug."""

    level: str  # "debug" | "info" | "warning" | "error"
    message: str
    fields: dict


Action = SendClient | SendUpstream | ArmTimer | CancelTimer | CloseClient | CloseUpstream | Log

TIMER_COMMIT_DEBOUNCE = "commit_debounce"
TIMER_COMMIT_COALESCE = "commit_coalesce"
TIMER_DEFERRED_CREATE = "deferred_create"
TIMERS = (TIMER_COMMIT_DEBOUNCE, TIMER_COMMIT_COALESCE, TIMER_DEFERRED_CREATE)

DEEPGRAM_ERROR_CODES = {
    "unparsable_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "invalid_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "unsupported_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "disallowed_client_message_type": "UNPARSABLE_CLIENT_MESSAGE",
    "internal_error": "INTERNAL_SERVER_ERROR",
}


def dumps(obj: Any) -> str:
    """Compact JSON text, as every frame the translator builds is sent."""
    return orjson.dumps(obj).decode()


def simple(kind: str) -> str:
    """A client message that is only its type."""
    return dumps({"type": kind})


def conversation_text(role: str, content: str) -> str:
    """A `ConversationText` client message."""
    return dumps({"type": "ConversationText", "role": role, "content": content})


def utf8_len(text: str) -> int:
    """The size a text frame has on the wire (what D30 counts)."""
    return len(text.encode("utf-8", "replace"))


class Outbox:
    """The actions of one translator call, plus the leg and timer state that decides whether an
    action is still meaningful (nothing is sent to a closed leg; a cancel of an idle timer is
    not emitted)."""

    def __init__(self, *, deepgram: bool) -> None:
        self.deepgram = deepgram  # Deepgram's dialect (upper-case error codes and more)
        self.upstream_open = False
        self.closed = False
        self._out: list[Action] = []
        self._client_leg_closed = False
        self._upstream_leg_closed = False
        self._armed: set[str] = set()
        self._event_seq = 0

    def take(self) -> list[Action]:
        """The actions collected since the last take, in order."""
        out, self._out = self._out, []
        return out

    def log(self, level: str, message: str, **fields: Any) -> None:
        self._out.append(Log(level, message, fields))

    def to_client(self, data: str | bytes) -> None:
        if not self._client_leg_closed:
            self._out.append(SendClient(data))

    def to_upstream(self, data: str) -> None:
        if self.upstream_open and not self._upstream_leg_closed:
            self._out.append(SendUpstream(data))

    def error(self, code: str, description: str) -> None:
        self.to_client(self.error_frame(code, description))

    def error_frame(self, code: str, description: str) -> str:
        """An `Error`; the Deepgram dialect uses Deepgram's upper-case code style."""
        if self.deepgram:
            code = DEEPGRAM_ERROR_CODES.get(code) or code.upper()
        return dumps(client_error(code, description))

    def arm(self, name: str, seconds: float) -> None:
        self._armed.add(name)
        self._out.append(ArmTimer(name, seconds))

    def cancel(self, name: str) -> None:
        if name in self._armed:
            self._armed.discard(name)
            self._out.append(CancelTimer(name))

    def armed(self, name: str) -> bool:
        return name in self._armed

    def expire(self, name: str) -> bool:
        """A timer fired: True when it was armed (else the expiry is stale and ignored)."""
        if name not in self._armed:
            return False
        self._armed.discard(name)
        return True

    def next_event_id(self, prefix: str) -> str:
        self._event_seq += 1
        return f"vg_{prefix}_{self._event_seq}"

    def finish(self, client: tuple[int, str] | None, upstream: tuple[int, str] | None) -> None:
        """Every close path: cancel every timer, close what is still open, then go quiet."""
        for name in TIMERS:
            self._out.append(CancelTimer(name))
        self._armed.clear()
        if client is not None and not self._client_leg_closed:
            self._out.append(CloseClient(client[0], safe_reason(client[1])))
        if upstream is not None and not self._upstream_leg_closed:
            self._out.append(CloseUpstream(upstream[0], safe_reason(upstream[1])))
        self._client_leg_closed = self._upstream_leg_closed = True
        self.closed = True


class Backlog:
    """Client frames held back: before the upstream opens (R1), and injects, session changes
    and audio before the session is ready (R6, R5). `pending_bytes` is what D30 limits."""

    def __init__(self) -> None:
        self._open: deque[str | bytes] = deque()
        self._open_bytes = 0
        self._ready: deque[tuple[str, Any, int]] = deque()  # (kind, payload, size)
        self._ready_bytes = 0
        self._audio: deque[bytes] = deque()
        self._audio_bytes = 0

    @property
    def pending_bytes(self) -> int:
        return self._open_bytes + self._ready_bytes + self._audio_bytes

    @property
    def frames_before_open(self) -> int:
        return len(self._open)

    def hold_frame(self, data: str | bytes) -> None:
        self._open.append(data)
        self._open_bytes += len(data) if isinstance(data, bytes) else utf8_len(data)

    def next_frame(self) -> str | bytes | None:
        if not self._open:
            return None
        frame = self._open.popleft()
        self._open_bytes -= len(frame) if isinstance(frame, bytes) else utf8_len(frame)
        return frame

    def hold_until_ready(self, kind: str, payload: Any, raw: str) -> None:
        size = utf8_len(raw)
        self._ready.append((kind, payload, size))
        self._ready_bytes += size

    def next_until_ready(self) -> tuple[str, Any] | None:
        if not self._ready:
            return None
        kind, payload, size = self._ready.popleft()
        self._ready_bytes -= size
        return kind, payload

    def hold_audio(self, data: bytes) -> None:
        self._audio.append(data)
        self._audio_bytes += len(data)

    def next_audio(self) -> bytes | None:
        if not self._audio:
            return None
        data = self._audio.popleft()
        self._audio_bytes -= len(data)
        return data

    def clear(self) -> None:
        self._open.clear()
        self._ready.clear()
        self._audio.clear()
        self._open_bytes = self._ready_bytes = self._audio_bytes = 0
