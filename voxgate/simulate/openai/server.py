"""The simulated OpenAI's network shell: path and key checks, recording, and the hooks tests
use to reach into a live connection.

A missing or wrong API key is refused with HTTP 401 before the upgrade (a deliberate
difference: the real service answers 101, then an ``error`` and close 3000). Plain HTTP on
the same port is WebRTC call set-up (``calls``). ``?sim_fault=`` picks a misbehaviour per
connection: the shared faults (``voxgate.simulate.faults``) plus ``close_after_update:<code>``
and ``drop_after_update``, which act right after ``session.updated`` is sent.
"""

from __future__ import annotations

import hmac
from functools import partial
from typing import Any

import trio

from voxgate.simulate.driver import Close, run_session
from voxgate.simulate.faults import FAULT_KINDS
from voxgate.simulate.http import HttpExchange
from voxgate.simulate.openai.calls import CallRecord, HttpAnswer, answer_call
from voxgate.simulate.openai.session import RealtimeSession
from voxgate.simulate.openai.session_config import DEFAULT_MODEL
from voxgate.simulate.record import ConnectionRecord
from voxgate.simulate.websocket import SimConnection, serve_websocket

__all__ = ["OPENAI_FAULT_KINDS", "OpenAISimulator", "run"]

OPENAI_FAULT_KINDS: dict[str, bool] = {
    **FAULT_KINDS,
    "close_after_update": True,
    "drop_after_update": False,
}


def _bearer(record: ConnectionRecord) -> str | None:
    auth = record.header("authorization")
    if auth is not None:
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    for proto in record.subprotocols:
        if proto.startswith("openai-insecure-api-key."):
            return proto.removeprefix("openai-insecure-api-key.")
    return None


class OpenAISimulator:
    """A simulated OpenAI Realtime endpoint; ``connections`` records every connection."""

    def __init__(self, *, api_key: str, reply_delay: float = 0.0, audio_pace: float = 0.0) -> None:
        self._api_key = api_key
        self.reply_delay = reply_delay
        self.audio_pace = audio_pace
        self.connections: list[ConnectionRecord] = []
        self.calls: list[CallRecord] = []  # WebRTC call set-ups, in arrival order
        self.sessions: dict[ConnectionRecord, RealtimeSession] = {}
        self.port: int | None = None

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; ``task_status.started`` gets the bound port."""
        serve = partial(
            serve_websocket,
            self._handle,
            self.connections,
            host,
            port,
            fault_kinds=OPENAI_FAULT_KINDS,
            http_handler=self._http,
        )
        async with trio.open_nursery() as nursery:
            self.port = await nursery.start(serve)
            task_status.started(self.port)

    def push(self, record: ConnectionRecord, event: dict[str, Any] | str) -> None:
        """Send an extra server frame on a live connection (scripted upstream behaviour)."""
        self.sessions[record].push(event)

    async def _http(self, exchange: HttpExchange) -> HttpAnswer:
        return answer_call(exchange, api_key=self._api_key, calls=self.calls)

    async def _handle(self, conn: SimConnection) -> None:
        record = conn.record
        if not record.path.endswith("/realtime"):
            await conn.reject(
                404,
                {
                    "error": {
                        "message": "Not found.",
                        "type": "invalid_request_error",
                        "code": "not_found",
                        "param": None,
                    }
                },
            )
            return
        token = _bearer(record)
        if token is None or not hmac.compare_digest(token.encode(), self._api_key.encode()):
            message = (
                "Missing bearer or basic authentication in header"
                if token is None
                else "Incorrect API key provided."
            )
            body = {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None if token is None else "invalid_api_key",
                }
            }
            await conn.reject(401, body)
            return
        await conn.accept("realtime" if "realtime" in record.subprotocols else None)
        session = RealtimeSession(
            model=record.query_value("model") or DEFAULT_MODEL,
            fault=record.fault,
            reply_delay=self.reply_delay,
            audio_pace=self.audio_pace,
        )
        if (record.header("openai-beta") or "").startswith("realtime="):
            # The GA endpoint refuses the beta protocol shape right after the upgrade.
            session.refuse(
                "beta_api_shape_disabled",
                "The beta Realtime API shape is disabled for this model; remove the "
                "'OpenAI-Beta: realtime=v1' header.",
                Close(4000, "invalid_request_error.beta_api_shape_disabled"),
            )
        self.sessions[record] = session
        try:
            await run_session(conn, session)
        finally:
            self.sessions.pop(record, None)


async def run(host: str, port: int, api_key: str) -> None:
    """Serve until cancelled (``voxgate simulate openai``)."""
    sim = OpenAISimulator(api_key=api_key)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(sim.serve, host, port)
        print(f"openai simulator listening on ws://{host}:{bound}/v1/realtime", flush=True)
