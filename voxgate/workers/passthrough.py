"""A passthrough session: accept the client, then splice it to one upstream WebSocket.

Shared by the Deepgram routes and the raw OpenAI Realtime relay; the provider packages only
say which URL, which credentials, which subprotocol to echo and what to tell a client when
the upstream fails (an `UpstreamProfile`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from voxgate.workers.errors import UpstreamConnectError
from voxgate.workers.frames import OP_TEXT, MaskKeys, build_frame
from voxgate.workers.handshake import open_upstream
from voxgate.workers.keyscrub import KeyScrubber
from voxgate.workers.runtime import Session
from voxgate.workers.splice import (
    ClientObserver,
    SplicePolicy,
    SpliceStats,
    UpstreamObserver,
    default_upstream_failure,
    run_splice,
)

# Query parameters that belong to voxgate, never to a provider (P5, openai-translator §10).
GATEWAY_PARAMS = frozenset({"token", "traceId", "access_token"})
AUTH_SUBPROTOCOL_PREFIXES = ("access_token.", "bearer.")


@dataclass
class UpstreamProfile:
    """Everything provider-specific about one passthrough route."""

    url: str
    query: list[tuple[str, str]]
    headers: list[tuple[str, str]]
    subprotocol: str | None
    failure_payloads: Callable[[UpstreamConnectError], list[bytes]] = lambda err: []
    limit_payloads: Callable[[str], list[bytes]] = lambda code: []
    observer: UpstreamObserver | None = None
    client_observer: ClientObserver | None = None
    audio_rates: tuple[float | None, float | None] = (None, None)  # declared bytes/s up, down
    first_frames: list[bytes] = field(default_factory=list)  # TEXT sent upstream before the client's
    keepalive: tuple[float, bytes] | None = None
    idle_timeout: float | None = None
    extra: dict = field(default_factory=dict)
    secret: str | None = None  # the provider key sent upstream: masked in what comes back


def strip_params(query: list[tuple[str, str]], drop: frozenset[str] | set[str]) -> list[tuple[str, str]]:
    """Client query minus gateway parameters, order and repeats kept."""
    return [(k, v) for k, v in query if k not in drop]


def auth_subprotocol(offered: list[str]) -> str | None:
    """The voxgate auth subprotocol the client offered (`access_token.<t>`, `bearer.<t>`, or
    the `token`,`<t>` pair), to echo back (P6)."""
    for proto in offered:
        if proto.startswith(AUTH_SUBPROTOCOL_PREFIXES):
            return proto
    if "token" in offered:
        return "token"
    return None


def echo_subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to answer a Voice Agent client with (P6): a voxgate auth subprotocol,
    else the first offered entry. Shared by the Deepgram routes and the translator."""
    return auth_subprotocol(offered) or (offered[0] if offered else None)


class EarlyConnect:
    """The upstream connect, started as soon as the session arrives so that it overlaps the
    client's 101; the splice awaits `result()` as its connect step. Whatever happens, the
    attempt lives in the caller's nursery, so ending the session cancels it (P10) and a
    connection nobody collected is closed."""

    def __init__(self, profile: UpstreamProfile, log) -> None:
        self.profile = profile
        self.log = log
        self.done = trio.Event()
        self.value: tuple[trio.abc.Stream, bytes] | None = None
        self.error: BaseException | None = None
        self.taken = False

    async def run(self) -> None:
        started = trio.current_time()
        try:
            self.value = await open_upstream(self.profile.url, self.profile.query, self.profile.headers)
        except Exception as exc:  # noqa: BLE001 - handed to the splice, which classifies it
            self.error = exc
        else:
            self.log.info("upstream connected", latency_ms=round((trio.current_time() - started) * 1000, 1))
        finally:
            self.done.set()
        if self.value is not None and not self.taken:
            try:
                await trio.sleep_forever()  # until the session collects it or ends
            finally:
                if not self.taken:
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(self.value[0])

    async def result(self) -> tuple[trio.abc.Stream, bytes]:
        await self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.value is not None
        self.taken = True
        return self.value


async def run_passthrough(session: Session, profile: UpstreamProfile) -> None:
    """Accept the client with the chosen subprotocol and relay until either side ends."""
    config = session.config

    def on_failure(err: UpstreamConnectError) -> tuple[list[bytes], int, str]:
        _, code, reason = default_upstream_failure(err)
        session.counters.upstream_failures[err.kind] += 1
        session.log.warning("upstream failed", kind=err.kind, status=err.status, close=code)
        return profile.failure_payloads(err), code, reason

    policy = SplicePolicy(
        connect_timeout=config.connect_timeout,
        max_message_bytes=config.max_message_bytes,
        idle_timeout=profile.idle_timeout,
        max_session_seconds=config.max_session_seconds,
        client_keepalive=profile.keepalive,
        on_upstream_failure=on_failure,
        on_limit=profile.limit_payloads,
        upstream_observer=profile.observer,
        client_observer=profile.client_observer,
        stop_reason=lambda: session.stop_reason,
        scrubber=KeyScrubber.for_secret(profile.secret),
    )
    stats = SpliceStats()
    session.usage.meter(lambda: stats.binary_up, lambda: stats.binary_down, *profile.audio_rates)
    session.traffic = lambda: (stats.frames_up, stats.frames_down, stats.bytes_up, stats.bytes_down)
    session.connect_latency = lambda: stats.upstream_connect_seconds
    early = EarlyConnect(profile, session.log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(early.run)
        try:
            await session.handshake.accept(session.stream, profile.subprotocol)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            session.summary["end"] = "client gone before accept"
            nursery.cancel_scope.cancel()
            return
        session.log.info("session accepted", route=session.route, peer=session.peer)
        try:
            leftover = session.handshake.leftover
            if profile.first_frames:  # as if the client had sent them first (policy pins)
                keys = MaskKeys()
                leftover = b"".join(build_frame(OP_TEXT, p, keys=keys) for p in profile.first_frames) + leftover
            await run_splice(session.stream, leftover, early.result, policy, stats, session.shutdown)
        finally:
            record(session, stats)
            nursery.cancel_scope.cancel()


def record(session: Session, stats: SpliceStats) -> None:
    """Fold one finished relay into the worker counters and the session's close line
    (traffic counts are folded by the runtime through `session.traffic`)."""
    counters = session.counters
    if stats.sent_client_close_code is not None:
        counters.closes[f"client|{stats.sent_client_close_code}"] += 1
    session.summary.update(
        end=stats.end_reason,
        client_code=stats.client_close_code,
        upstream_code=stats.upstream_close_code,
        sent_client_code=stats.sent_client_close_code,
        frames_up=stats.frames_up,
        frames_down=stats.frames_down,
        bytes_up=stats.bytes_up,
        bytes_down=stats.bytes_down,
        connect_ms=None if stats.upstream_connect_seconds is None else round(stats.upstream_connect_seconds * 1000, 1),
    )
