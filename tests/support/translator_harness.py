"""A small driver for the sans-IO translator core: feed events, read what each leg received.

Every call returns an `Out` (the actions of that one call) and records into the harness, so a
test can assert either "what did this event produce" or "what has the upstream seen so far".
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from tests.support.settings import SESSION_UPDATED, SETTINGS
from voxgate.workers.openai.actions import (
    ArmTimer,
    CancelTimer,
    CloseClient,
    CloseUpstream,
    Log,
    SendClient,
    SendUpstream,
)
from voxgate.workers.openai.translator import Translator


def user_item(item_id: str, text: str = "q", event: str = "conversation.item.added") -> dict:
    return {
        "type": event,
        "item": {
            "id": item_id,
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        },
    }


def assistant_item(item_id: str, text: str, event: str = "conversation.item.done") -> dict:
    return {
        "type": event,
        "item": {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        },
    }


def fco_done(item_id: str = "o1", call_id: str = "c1") -> dict:
    return {
        "type": "conversation.item.done",
        "item": {"id": item_id, "type": "function_call_output", "call_id": call_id, "output": "x"},
    }


def audio_delta(pcm: bytes, **ids: Any) -> dict:
    return {"type": "response.output_audio.delta", "delta": base64.b64encode(pcm).decode(), **ids}


class Out(list):
    """The actions of one call, with views per leg."""

    @property
    def client(self) -> list[Any]:
        """Client frames: parsed JSON for text frames, raw bytes for binary frames."""
        return [
            orjson.loads(a.data) if isinstance(a.data, str) else a.data
            for a in self
            if isinstance(a, SendClient)
        ]

    @property
    def client_types(self) -> list[str]:
        return [m["type"] if isinstance(m, dict) else "<binary>" for m in self.client]

    @property
    def binary(self) -> list[bytes]:
        return [a.data for a in self if isinstance(a, SendClient) and isinstance(a.data, bytes)]

    @property
    def up(self) -> list[dict[str, Any]]:
        return [orjson.loads(a.data) for a in self if isinstance(a, SendUpstream)]

    @property
    def up_types(self) -> list[str]:
        return [e["type"] for e in self.up]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [m for m in self.client if isinstance(m, dict) and m["type"] == "Error"]

    @property
    def error_codes(self) -> list[str]:
        return [m["code"] for m in self.errors]

    def of(self, kind: type) -> list[Any]:
        return [a for a in self if isinstance(a, kind)]

    @property
    def logs(self) -> list[Log]:
        return self.of(Log)


class Harness:
    """Drives one Translator; remembers everything and which timers are armed."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("request_id", "req-1")
        self.t = Translator(**options)
        self.all = Out()
        self.armed: dict[str, float] = {}

    def _record(self, actions: list[Any]) -> Out:
        for action in actions:
            assert isinstance(
                action,
                SendClient
                | SendUpstream
                | ArmTimer
                | CancelTimer
                | CloseClient
                | CloseUpstream
                | Log,
            ), action
            if isinstance(action, ArmTimer):
                self.armed[action.name] = action.seconds
            elif isinstance(action, CancelTimer):
                self.armed.pop(action.name, None)
        assert self.t.internal_errors == 0, "translator hit an internal error"
        out = Out(actions)
        self.all.extend(out)
        return out

    # --- inputs ---

    def start(self) -> Out:
        return self._record(self.t.start())

    def upstream_open(self) -> Out:
        return self._record(self.t.upstream_open())

    def open(self) -> Out:
        """Client accepted and upstream open."""
        return Out(self.start() + self.upstream_open())

    def client(self, msg: dict | str | bytes) -> Out:
        data = orjson.dumps(msg).decode() if isinstance(msg, dict | list) else msg
        return self._record(self.t.client_message(data))

    def up(self, event: dict | str | bytes) -> Out:
        data = orjson.dumps(event).decode() if isinstance(event, dict | list) else event
        return self._record(self.t.upstream_message(data))

    def fire(self, name: str) -> Out:
        assert name in self.armed, f"timer {name} is not armed (armed: {sorted(self.armed)})"
        del self.armed[name]
        return self._record(self.t.timer_expired(name))

    def client_closed(self, code: int | None = 1000, reason: str = "") -> Out:
        return self._record(self.t.client_closed(code, reason))

    def upstream_closed(self, code: int | None = 1000, reason: str = "") -> Out:
        return self._record(self.t.upstream_closed(code, reason))

    def upstream_failed(self, *, auth: bool) -> Out:
        return self._record(self.t.upstream_failed(auth=auth))

    def gateway_limit(self, code: str) -> Out:
        return self._record(self.t.gateway_limit(code))

    # --- common openings ---

    def ready(self, settings: dict | None = None) -> Out:
        """Open, send Settings, answer session.updated; returns everything so far."""
        self.open()
        self.client(settings if settings is not None else SETTINGS)
        self.up(SESSION_UPDATED)
        return self.all

    def session(self) -> dict[str, Any]:
        """The `session` of the first session.update the upstream received."""
        return next(e for e in self.all.up if e["type"] == "session.update")["session"]

    def inject(self, text: str, item_id: str) -> Out:
        """InjectUserMessage answered by the upstream's item.added (the create goes out per R7)."""
        out = self.client({"type": "InjectUserMessage", "content": text})
        return Out(out + self.up(user_item(item_id, text)))
