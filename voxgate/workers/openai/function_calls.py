"""Function-call bookkeeping of the translator (D25): which calls the upstream requested, which
the client answered, and which are still owed an answer before the deferred `response.create`.

Pure state with no actions; `Responses` decides what to send from it.
"""

from __future__ import annotations

from typing import Any

from voxgate.workers.openai.bounded import Bounded

__all__ = ["FunctionCalls"]


class FunctionCalls:
    """Requested calls (id -> name and owning response), answered calls, and those outstanding."""

    def __init__(self) -> None:
        self.outstanding: set[str] = set()
        self._announced = Bounded(512)  # call id -> (name, response id)
        self._answered = Bounded(512)

    def announced(self, call_id: str) -> bool:
        return call_id in self._announced

    def announce(self, call_id: str, name: str | None, owner: Any) -> bool:
        """Record a requested call; True when it now waits for the client's answer."""
        self._announced.set(call_id, (name or "function", owner if isinstance(owner, str) else None))
        if call_id in self._answered:
            return False
        self.outstanding.add(call_id)
        return True

    def answer(self, call_id: Any) -> None:
        """The client sent this call's output (or the call went with its response)."""
        if isinstance(call_id, str) and call_id:
            self.outstanding.discard(call_id)
            self._answered.add(call_id)

    def cancel_with(self, response_id: Any) -> list[dict[str, str]]:
        """The unanswered calls a cancelled response takes with it, now marked answered."""
        gone = []
        for call_id in sorted(self.outstanding):
            name, owner = self._announced.get(call_id, ("function", None))
            if owner is None or not response_id or owner == response_id:
                gone.append({"id": call_id, "name": name})
        for call in gone:
            self.answer(call["id"])
        return gone
