"""Errors raised while opening an upstream WebSocket; generic by design (never a URL, header,
key or exception text), so they can be logged and turned into a client close as they are."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

__all__ = ["UpstreamConnectError", "CONNECT_ERROR_KINDS", "connect_within"]

T = TypeVar("T")

CONNECT_ERROR_KINDS = frozenset({"timeout", "refused", "rejected", "protocol", "tls", "dns"})


class UpstreamConnectError(Exception):
    """The upstream could not be opened.

    kind: "timeout" | "refused" | "rejected" | "protocol" | "tls" | "dns";
    status: the HTTP status when the handshake was rejected, else None."""

    def __init__(self, kind: str, status: int | None = None) -> None:
        if kind not in CONNECT_ERROR_KINDS:
            kind = "protocol"
        super().__init__(kind, status)
        self.kind = kind
        self.status = status

    @property
    def auth(self) -> bool:
        """True when the upstream refused our credentials (HTTP 401/403)."""
        return self.status in (401, 403)

    def __str__(self) -> str:
        if self.kind == "rejected" and self.status is not None:
            return f"upstream connect failed: rejected (HTTP {self.status})"
        return f"upstream connect failed: {self.kind}"

    def __repr__(self) -> str:
        return f"UpstreamConnectError(kind={self.kind!r}, status={self.status!r})"


async def connect_within(timeout: float, connect: Callable[[], Awaitable[T]]) -> T | UpstreamConnectError:
    """`connect()` bounded by `timeout`; every way it can fail comes back as one
    `UpstreamConnectError` (both relays report a failed upstream the same way)."""
    try:
        with trio.fail_after(timeout):
            return await connect()
    except trio.TooSlowError:
        return UpstreamConnectError("timeout")
    except UpstreamConnectError as exc:
        return exc
    except OSError:
        return UpstreamConnectError("refused")
    except Exception:  # noqa: BLE001 - anything else is a failed handshake
        return UpstreamConnectError("protocol")
