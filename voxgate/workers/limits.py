"""The gateway's own session limits: one table for every relay (openai-translator §5.2, D35;
deepgram-passthrough P17). Each limit closes both legs with its codes and one reason, the
limit's own code, so a client sees the same close whichever path it is on."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["GatewayLimit", "LIMITS", "limit_for"]


class GatewayLimit(NamedTuple):
    code: str  # the `Error` code and the close reason on both legs
    client_close: int
    upstream_close: int
    description: str  # the `Error` description, where the protocol has one


LIMITS: dict[str, GatewayLimit] = {
    limit.code: limit
    for limit in (
        GatewayLimit("message_too_large", 1009, 1000, "A client message exceeded the gateway's maximum message size."),
        GatewayLimit("idle_timeout", 1000, 1000, "The gateway ended the session after its idle timeout."),
        GatewayLimit("session_max_duration", 1000, 1000, "The gateway ended the session at its maximum session duration."),
        GatewayLimit("shutting_down", 1001, 1001, "The gateway is shutting down."),
        # operator actions and client budgets (issue 11): a policy violation for the client
        GatewayLimit("terminated", 1008, 1000, "Session ended by the gateway operator."),
        GatewayLimit("budget_exhausted", 1008, 1000, "The client's usage budget is exhausted."),
        GatewayLimit("replaced", 1008, 1000, "Session replaced by a newer session of the same client."),
    )
}
GATEWAY_ERROR = GatewayLimit("gateway_error", 1011, 1000, "The gateway ended the session.")


def limit_for(code: object) -> GatewayLimit:
    """The limit named `code`; anything unknown is a generic gateway error."""
    return LIMITS.get(code, GATEWAY_ERROR) if isinstance(code, str) else GATEWAY_ERROR
