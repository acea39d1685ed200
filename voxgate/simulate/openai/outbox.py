"""The simulated Realtime session's outgoing queue and its ordering rules.

Order is kept within the session's own events and within a response, but while a response
"thinks" (``reply_delay``) other events (acks, errors) go ahead of it, as on the real
service. Events are serialised when queued, so later changes to live state never leak into
them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from voxgate.simulate.driver import Close, Drop

__all__ = ["Outbox", "Queued"]


@dataclass
class Queued:
    """One outgoing frame; ``on_send`` is called with the time it goes out."""

    payload: str | Close | Drop
    delay: float = 0.0
    response_id: str | None = None
    on_send: Callable[[float], None] | None = None
    due: float | None = None


class Outbox:
    """Frames waiting to go out, in the order the rules above allow."""

    def __init__(self) -> None:
        self._queue: deque[Queued] = deque()

    def push(
        self,
        event: dict[str, Any],
        *,
        delay: float = 0.0,
        response_id: str | None = None,
        on_send: Callable[[float], None] | None = None,
    ) -> None:
        """Queue a server event, ``delay`` seconds after it reaches the head of its line."""
        self._queue.append(Queued(orjson.dumps(event).decode(), delay, response_id, on_send))

    def push_raw(self, payload: str | Close | Drop) -> None:
        """Queue a frame as is (a scripted or garbage frame, a close, a drop)."""
        self._queue.append(Queued(payload))

    def clear(self) -> None:
        self._queue.clear()

    def drop_response(self, response_id: str) -> None:
        """Forget every queued event of a response (it was cancelled)."""
        self._queue = deque(q for q in self._queue if q.response_id != response_id)

    def pop_due(self, now: float) -> Queued | float | None:
        """The next frame to send now, else the time one becomes due, else None."""
        wait: float | None = None
        for index, out in enumerate(self._queue):
            if index == 0 or out.response_id is None:
                if out.delay > 0 and out.due is None:
                    out.due = now + out.delay
                if out.due is None or now >= out.due:
                    del self._queue[index]
                    return out
                wait = out.due if wait is None else min(wait, out.due)
            if out.response_id is None:
                break  # a held session event holds every later one
        return wait
