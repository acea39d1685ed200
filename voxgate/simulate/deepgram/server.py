"""The simulated Deepgram's network shell: routes, authentication, ping tap, recording.

Routes: ``/v1/agent/converse`` (``agent``), ``/v1/listen`` (``listen``), ``/v1/speak``
(``speak``), and Flux's ``/v2/listen`` and ``/v2/speak`` (``flux``); anything else -> HTTP
404. Auth: ``Authorization: Token <key>`` or the subprotocol pair ``token``, ``<key>`` (then
``token`` is echoed) -> otherwise HTTP 401, no 101, TCP closed. A query the real API refuses
at the handshake -> HTTP 400.
"""

from __future__ import annotations

import hmac
import uuid
from typing import Any

import trio
import wsproto.events

from voxgate.simulate.deepgram.agent import JSON_BINARY_PARAM, AgentSession
from voxgate.simulate.deepgram.flux import FluxOptions, FluxParamError, FluxSession, SpeakV2Session
from voxgate.simulate.deepgram.listen import ListenOptions, ListenSession
from voxgate.simulate.deepgram.session import BadRequest, DeepgramSession, truthy
from voxgate.simulate.deepgram.speak import SpeakSession
from voxgate.simulate.driver import run_session
from voxgate.simulate.faults import FAULT_KINDS
from voxgate.simulate.record import ConnectionRecord
from voxgate.simulate.websocket import SimConnection, serve_websocket

__all__ = [
    "AGENT_PATH",
    "CLOSE_REASON_PARAM",
    "DEEPGRAM_FAULT_KINDS",
    "LISTEN_PATH",
    "LISTEN_V2_PATH",
    "SPEAK_PATH",
    "SPEAK_V2_PATH",
    "DeepgramSimulator",
    "run",
]

AGENT_PATH = "/v1/agent/converse"
LISTEN_PATH = "/v1/listen"
SPEAK_PATH = "/v1/speak"
LISTEN_V2_PATH = "/v2/listen"
SPEAK_V2_PATH = "/v2/speak"
PATHS = (AGENT_PATH, LISTEN_PATH, SPEAK_PATH, LISTEN_V2_PATH, SPEAK_V2_PATH)

CLOSE_REASON_PARAM = "sim_close_reason"
DEEPGRAM_FAULT_KINDS: dict[str, bool] = {**FAULT_KINDS, "close_reason": True}


class _ConnectionList(list[ConnectionRecord]):
    """The simulator's ``connections``; appending wakes ``wait_connection``."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = trio.Event()

    def append(self, record: ConnectionRecord) -> None:
        super().append(record)
        self.changed.set()
        self.changed = trio.Event()


class _PingTap:
    """Stands in for a connection's wsproto object to see Ping events (trio-websocket
    answers pings internally and offers no hook)."""

    def __init__(self, inner: Any, on_ping: Any) -> None:
        self._inner = inner
        self._on_ping = on_ping

    def events(self) -> Any:
        for event in self._inner.events():
            if isinstance(event, wsproto.events.Ping):
                self._on_ping(bytes(event.payload))
            yield event

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class DeepgramSimulator:
    """Serves the Deepgram WebSocket APIs (agent, listen and speak v1, Flux v2) and records
    every connection."""

    def __init__(self, *, api_key: str, listen_idle_timeout: float = 10.0) -> None:
        self._api_key = api_key
        self._listen_idle_timeout = listen_idle_timeout
        self.connections: list[ConnectionRecord] = _ConnectionList()
        self._pings: dict[int, list[bytes]] = {}

    async def serve(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen until cancelled; ``task_status.started(bound_port)``."""
        await serve_websocket(
            self._handle,
            self.connections,
            host,
            port,
            task_status=task_status,
            fault_kinds=DEEPGRAM_FAULT_KINDS,
        )

    def pings(self, record: ConnectionRecord) -> list[bytes]:
        """Payloads of the pings received on that connection, in order."""
        return self._pings.setdefault(id(record), [])

    async def wait_connection(self, index: int = 0) -> ConnectionRecord:
        """The ``index``-th connection, once it has sent its request head."""
        conns = self.connections
        assert isinstance(conns, _ConnectionList)
        while len(conns) <= index:
            await conns.changed.wait()
        return conns[index]

    # -- per connection
    def _authenticate(self, record: ConnectionRecord) -> str | None | bool:
        """False = refuse; otherwise the subprotocol to echo (None = none)."""
        key = self._api_key.encode()
        header = record.header("authorization") or ""
        scheme, _, credential = header.strip().partition(" ")
        if scheme.lower() == "token" and hmac.compare_digest(credential.strip().encode(), key):
            return None
        offered = record.subprotocols
        for i, proto in enumerate(offered[:-1]):
            if proto.lower() == "token" and hmac.compare_digest(offered[i + 1].encode(), key):
                return proto
        return False

    def _tap_pings(self, conn: SimConnection) -> None:
        ws = getattr(conn.request, "_connection", None)
        inner = getattr(ws, "_wsproto", None)
        if inner is None:
            return
        record = conn.record
        pings = self.pings(record)

        def on_ping(payload: bytes) -> None:
            pings.append(payload)
            record.notify()

        ws._wsproto = _PingTap(inner, on_ping)  # type: ignore[union-attr]

    def _session(self, record: ConnectionRecord, now: float) -> DeepgramSession:
        fault = record.fault
        common: dict[str, Any] = {
            "now": now,
            "fault": fault,
            "close_reason": record.query_value(CLOSE_REASON_PARAM) or "simulated close",
        }
        if record.path == AGENT_PATH:
            return AgentSession(
                json_binary=truthy(record.query_value(JSON_BINARY_PARAM)), **common
            )
        if record.path == LISTEN_PATH:
            return ListenSession(
                options=ListenOptions.from_query(record.query),
                idle_timeout=self._listen_idle_timeout,
                **common,
            )
        if record.path == SPEAK_V2_PATH:
            return SpeakV2Session.from_query(record.query, **common)
        if record.path == LISTEN_V2_PATH:
            try:
                options, problem = FluxOptions.from_query(record.query), None
            except FluxParamError as exc:
                options, problem = None, str(exc)
            return FluxSession(
                options=options,
                param_error=problem,
                idle_timeout=self._listen_idle_timeout,
                **common,
            )
        return SpeakSession.from_query(record.query, **common)

    async def _handle(self, conn: SimConnection) -> None:
        record = conn.record
        request_id = str(uuid.uuid4())
        if record.path not in PATHS:
            await conn.reject(
                404, {"err_code": "NOT_FOUND", "err_msg": "Not Found", "request_id": request_id}
            )
            return
        subprotocol = self._authenticate(record)
        if subprotocol is False:
            await conn.reject(
                401,
                {
                    "err_code": "INVALID_AUTH",
                    "err_msg": "Invalid credentials.",
                    "request_id": request_id,
                },
            )
            return
        try:
            session = self._session(record, trio.current_time())
        except BadRequest as exc:
            await conn.reject(
                400, {"err_code": "Bad Request", "err_msg": str(exc), "request_id": request_id}
            )
            return
        self._tap_pings(conn)
        await conn.accept(subprotocol or None)
        await run_session(conn, session)


async def run(host: str, port: int, api_key: str) -> None:
    """Serve until cancelled (``voxgate simulate deepgram``); prints the URL once bound."""
    simulator = DeepgramSimulator(api_key=api_key)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(simulator.serve, host, port)
        print(f"deepgram simulator listening on ws://{host}:{bound}", flush=True)
