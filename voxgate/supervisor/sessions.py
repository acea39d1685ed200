"""The supervisor's view of live sessions and what client tokens spent (issue 11).

Workers report each session's traffic and cumulative usage on the control channel (with
the heartbeat, only sessions that changed, and once more when a session ends). This module
keeps those reports on the sessions' `SessionRef`s, turns their differences into the usage
counters and the per-token totals that budgets are checked against, and answers the admin
API's listing and filters. Pure bookkeeping: sending stop commands is the server's job.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from voxgate.supervisor.admission import Budget, TokenInfo
from voxgate.workers.usage import TOKEN_KINDS

MAX_TRACKED_TOKENS = 100_000
FILTERS = ("provider", "route", "client_ip", "token_label")


def empty_usage() -> dict[str, Any]:
    return {
        "audio_seconds": {"up": None, "down": None},
        "audio_bytes": {"up": 0, "down": 0},
        "tokens": dict.fromkeys(("input", "output", "total", *TOKEN_KINDS), 0),
        "characters": 0,
    }


@dataclass(slots=True)
class SessionRef:
    """What the supervisor remembers of a handed-off session."""

    ip: str
    route: str
    provider: str = ""
    sid: str = ""
    origin: str | None = None
    token: TokenInfo | None = None
    trace: str = ""
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    worker: str = ""
    traffic: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    usage: dict[str, Any] = field(default_factory=empty_usage)
    stopping: str | None = None  # the stop reason already sent

    @property
    def label(self) -> str | None:
        return self.token.label if self.token else None

    def describe(self) -> dict[str, Any]:
        """One entry of `GET /v1/sessions` (never a token, only its label)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_at))
        frames_up, frames_down, bytes_up, bytes_down = self.traffic
        return {
            "id": self.sid, "provider": self.provider, "route": self.route, "client_ip": self.ip,
            "origin": self.origin, "token_label": self.label, "trace": self.trace,
            "started_at": f"{stamp}.{int(self.started_at * 1000) % 1000:03d}Z",
            "duration_s": round(time.monotonic() - self.started, 3), "worker": self.worker,
            "frames_up": frames_up, "frames_down": frames_down, "bytes_up": bytes_up, "bytes_down": bytes_down,
            "usage": self.usage, "ending": self.stopping,
        }


def entry_matches(entry: dict[str, Any], filters: dict[str, str]) -> bool:
    """A `GET /v1/sessions` entry (from any instance) passes the admin API's filters."""
    for name, wanted in filters.items():
        if name == "route":
            if wanted not in (entry.get("route"), f"{entry.get('provider')}.{entry.get('route')}"):
                return False
        elif entry.get(name) != wanted:
            return False
    return True


def audio_seconds(usage: dict[str, Any]) -> float:
    return sum(v or 0.0 for v in usage["audio_seconds"].values())


@dataclass(slots=True)
class Spent:
    """What one client token spent over its lifetime (ended and live sessions)."""

    audio_seconds: float = 0.0
    tokens: int = 0


class Ledger:
    """Per-token spending, fed with the difference between consecutive session reports."""

    def __init__(self) -> None:
        self._spent: OrderedDict[str, Spent] = OrderedDict()

    def spent(self, key: str) -> Spent:
        spent = self._spent.get(key)
        if spent is None:
            spent = self._spent[key] = Spent()
            while len(self._spent) > MAX_TRACKED_TOKENS:
                self._spent.popitem(last=False)
        else:
            self._spent.move_to_end(key)
        return spent

    def add(self, key: str, old: dict[str, Any], new: dict[str, Any]) -> Spent:
        spent = self.spent(key)
        spent.audio_seconds += max(0.0, audio_seconds(new) - audio_seconds(old))
        spent.tokens += max(0, new["tokens"]["total"] - old["tokens"]["total"])
        return spent


def exhausted(budget: Budget, spent: Spent) -> str | None:
    """The lifetime limit a token has used up, or None."""
    if budget.max_audio_seconds is not None and spent.audio_seconds >= budget.max_audio_seconds:
        return "max_audio_seconds"
    if budget.max_tokens is not None and spent.tokens >= budget.max_tokens:
        return "max_tokens"
    return None


def parse_filters(query: list[tuple[str, str]]) -> dict[str, str] | str:
    """Admin API filters from a query string, or an error message."""
    filters: dict[str, str] = {}
    for key, value in query:
        if key not in FILTERS:
            return f"unknown filter {key[:32]!r}; use {', '.join(FILTERS)}"
        filters[key] = value
    return filters
