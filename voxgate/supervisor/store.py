"""Where admission counts, the session registry, token spending and revocations live (issue 12).

One interface, two homes: `LocalStore` keeps everything in this process (the default, exactly
the single-instance behaviour), `RedisStore` (voxgate.supervisor.redis_store) shares it between
every instance using one Redis. The server asks the store once per new session (`admit`), tells
it when a session ends (`ended`, never waits), feeds it usage (`add_usage`, in memory) and asks
it for the admin API's listing, kills and revocations.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxgate.supervisor.admission import BudgetRejection, Rejection, TokenInfo
from voxgate.supervisor.sessions import Ledger, SessionRef, Spent, exhausted

if TYPE_CHECKING:
    from voxgate.supervisor.server import Supervisor

MAX_REVOKED = 100_000
REVOKED = Rejection(401, "token_invalid", "Invalid or expired client token")


def token_id(token: TokenInfo) -> str | None:
    """The revocable id of a minted token (its nonce), None for static tokens."""
    kind, _, ident = token.key.partition(":")
    return ident if kind == "minted" else None


def budget_rejection(limit: str) -> BudgetRejection:
    return BudgetRejection(429, "budget", f"The client token's {limit} budget is used up", limit=limit)


@dataclass(slots=True)
class Ticket:
    """One upgrade asking to become a session (already past origin and token checks)."""

    sid: str
    ip: str
    provider: str
    route: str
    token: TokenInfo | None
    origin: str | None = None
    trace: str = ""
    started_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class Totals:
    """Usage summed over sessions (GET /v1/usage)."""

    audio_up: float = 0.0
    audio_down: float = 0.0
    tokens: int = 0
    characters: int = 0

    def add(self, old: dict[str, Any], new: dict[str, Any]) -> dict[str, float]:
        delta = {
            "audio_up": max(0.0, (new["audio_seconds"]["up"] or 0.0) - (old["audio_seconds"]["up"] or 0.0)),
            "audio_down": max(0.0, (new["audio_seconds"]["down"] or 0.0) - (old["audio_seconds"]["down"] or 0.0)),
            "tokens": max(0, new["tokens"]["total"] - old["tokens"]["total"]),
            "characters": max(0, new["characters"] - old["characters"]),
        }
        for name, value in delta.items():
            setattr(self, name, getattr(self, name) + value)
        return delta

    def describe(self, scope: str) -> dict[str, Any]:
        return {
            "scope": scope,
            "audio_seconds": {"up": round(self.audio_up, 6), "down": round(self.audio_down, 6)},
            "tokens": int(self.tokens), "characters": int(self.characters),
        }


class LocalStore:
    """Everything in this process: counts from the live workers, a per-token Ledger."""

    shared = False

    def __init__(self, server: Supervisor) -> None:
        self.server = server
        self.ledger = Ledger()
        self.totals = Totals()
        self._revoked: OrderedDict[str, float] = OrderedDict()

    # -- admission ---------------------------------------------------------------------

    async def admit(self, ticket: Ticket, now: float) -> Rejection | None:
        """Caps, rate, revocation and budgets for one new session; None = admitted."""
        return self.admit_locally(ticket, now)

    def admit_locally(self, ticket: Ticket, now: float) -> Rejection | None:
        server = self.server
        if ticket.token is not None and self.is_revoked(ticket.token):
            return REVOKED
        rejection = server.admission.check_caps(
            ticket.ip, total_sessions=server.total_sessions(), ip_sessions=server.ip_sessions(ticket.ip), now=now,
        )
        if rejection is None and ticket.token is not None:
            rejection = self.budget(ticket.token)
        return rejection

    def budget(self, token: TokenInfo) -> Rejection | None:
        """429 naming the limit when the token may not open another session; with
        `--on-session-limit replace-oldest` its oldest sessions make room instead."""
        server = self.server
        budget = token.budget
        limit = exhausted(budget, self.spent(token.key))
        if limit is None and budget.max_sessions is not None:
            live = sorted(
                (r for r in server.live_sessions() if r.token and r.token.key == token.key and not r.stopping),
                key=lambda r: r.started,
            )
            excess = len(live) - budget.max_sessions + 1
            if excess > 0:
                if server.config.on_session_limit != "replace-oldest":
                    limit = "max_sessions"
                else:
                    server.stop_sessions(live[:excess], "replaced")
        return None if limit is None else budget_rejection(limit)

    def started(self, ticket: Ticket, ref: SessionRef) -> None:
        """The session was handed to a worker."""

    def ended(self, ref: SessionRef) -> None:
        """The session is over (its slot is free)."""

    def abandoned(self, ticket: Ticket) -> None:
        """An admitted session never reached a worker."""

    # -- usage -------------------------------------------------------------------------

    def add_usage(self, ref: SessionRef, old: dict[str, Any], new: dict[str, Any]) -> Spent | None:
        """Meter the difference of two reports; the token's spending after it (None: no token)."""
        delta = self.totals.add(old, new)
        self.record(ref, delta)
        if ref.token is None:
            return None
        return self.combined(ref.token.key, self.ledger.add(ref.token.key, old, new))

    def record(self, ref: SessionRef, delta: dict[str, float]) -> None:
        """Hook for a shared store to batch the delta."""

    def combined(self, key: str, local: Spent) -> Spent:
        return local

    def spent(self, key: str) -> Spent:
        return self.combined(key, self.ledger.spent(key))

    async def usage(self) -> dict[str, Any]:
        return self.totals.describe("instance")

    # -- registry, kills, revocation -----------------------------------------------------

    async def sessions(self) -> list[dict[str, Any]]:
        """Every live session this store knows, as GET /v1/sessions entries."""
        instance = self.server.config.instance_id
        live = sorted(self.server.live_sessions(), key=lambda r: r.started)
        return [{**ref.describe(), "instance": instance} for ref in live]

    async def stop(self, entries: list[dict[str, Any]], reason: str) -> None:
        """End these sessions (from `sessions()`), wherever they live."""
        wanted = {e["id"] for e in entries}
        self.server.stop_sessions([r for r in self.server.live_sessions() if r.sid in wanted], reason)

    def is_revoked(self, token: TokenInfo) -> bool:
        ident = token_id(token)
        return ident is not None and ident in self._revoked

    async def revoke(self, ident: str, until: float) -> int:
        """Refuse the minted token `ident` from now on and end its live sessions; how many."""
        self._revoked[ident] = until
        while len(self._revoked) > MAX_REVOKED:
            self._revoked.popitem(last=False)
        victims = [r for r in self.server.live_sessions() if r.token and token_id(r.token) == ident]
        return self.server.stop_sessions(victims, "terminated")

    # -- lifecycle ---------------------------------------------------------------------

    def readiness(self) -> dict[str, Any]:
        return {"backend": "local"}

    async def run(self) -> None:
        """Background work (none in-process)."""
