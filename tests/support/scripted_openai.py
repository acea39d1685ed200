"""A scriptable, recording fake OpenAI Realtime upstream for the translator's acceptance tests
(openai-translator §7 "Fake upstream", §7.5).

Unlike the simulator (`voxgate.simulate.openai`), this fake has no model and no validation:
it answers exactly what the test's `Script` says, like the reference project's mock, and
records every event it received with the loop's monotonic time, so a test can assert order
and spacing on the upstream leg. A test can also act on a live connection directly
(`send`, `close`, `drop`).

Usage::

    fake = ScriptedOpenAI(Script(item_added_delay=0.1))
    fake.port = await nursery.start(fake.serve)
    ...  # point a gateway at ws://127.0.0.1:<port>/v1/realtime, connect a client
    conn = await fake.next_conn()
    await conn.wait_for(lambda c: c.count("response.create") == 1)
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import trio
import trio_websocket as tws

REPLY_TEXT = "Hello from mock"
AUDIO_DELTA = bytes(320)  # 320 zero bytes of PCM, as in the reference mock
WAIT = 5.0


@dataclass
class Script:
    """How the fake answers; every field has the reference mock's default."""

    # handshake
    reject_status: int | None = None  # answer the upgrade with this HTTP status, no 101
    hang: bool = False  # read the upgrade request, never answer it
    accept_gate: trio.Event | None = None  # hold the 101 until this is set
    session_created: bool = False  # send session.created right after the 101
    # session.update -> session.updated
    session_updated: bool = True
    session_updated_delay: float = 0.0
    session_updated_gate: trio.Event | None = None  # each session.updated waits for this too
    after_session_updated: list[dict[str, Any]] = field(default_factory=list)  # once, after the first
    # user conversation.item.create -> conversation.item.added (+ .done)
    item_added: bool = True
    item_added_delay: float = 0.0
    item_done: bool = False
    echo_assistant_items: bool = False  # assistant item.create -> item.added with the same content
    # response.create -> [audio delta + audio.done] + output_text.done + item.done(assistant)
    respond: bool = True
    reply_text: str = REPLY_TEXT
    reply_audio: bool = False
    reply_delay: float = 0.0
    reply_response_done: bool = False  # also end with response.done
    # function_call_output item.create -> the completion the reference mock varies:
    # "text_done" | "response_done" | "response_done_then_text_done" | "audio_done_response_done"
    # | "item_events" | "none"
    function_output: str = "text_done"
    function_done_text: str = ""
    # input_audio_buffer.commit -> input_audio_buffer.committed
    ack_commit: bool = True


class FakeConn:
    """One upstream connection: the request, every event received (with its time), every
    event sent, and how it ended."""

    def __init__(self, server: ScriptedOpenAI, request: tws.WebSocketRequest, script: Script) -> None:
        parts = urlsplit(request.path)
        self.server = server
        self.script = script
        self.path = parts.path
        self.query = parse_qsl(parts.query, keep_blank_values=True)
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers}
        self.subprotocols = list(request.proposed_subprotocols)
        self.accepted = False
        self.received: list[tuple[float, Any]] = []  # (trio time, parsed JSON or raw frame)
        self.sent: list[tuple[float, Any]] = []  # (trio time, event) after it was written
        self.close_code: int | None = None  # the peer's close code (1006: TCP just ended;
        # None when this side started the close)
        self.closed = trio.Event()
        self.ws: tws.WebSocketConnection | None = None
        self.nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._items = 0
        self._replies = 0
        self._outputs = 0
        self._updated_once = False
        self._closing: trio.Event | None = None

    # -- what a test reads -------------------------------------------------------------------

    def events(self, etype: str | None = None) -> list[dict[str, Any]]:
        """Received JSON events (of one type, when given), in arrival order."""
        return [e for _, e in self.received if isinstance(e, dict) and (etype is None or e.get("type") == etype)]

    def types(self) -> list[str]:
        return [e.get("type") for e in self.events()]

    def count(self, etype: str) -> int:
        return len(self.events(etype))

    def times(self, etype: str) -> list[float]:
        return [t for t, e in self.received if isinstance(e, dict) and e.get("type") == etype]

    def sent_times(self, etype: str) -> list[float]:
        return [t for t, e in self.sent if isinstance(e, dict) and e.get("type") == etype]

    def appended_audio(self) -> list[bytes]:
        """Decoded `input_audio_buffer.append` payloads, in order."""
        return [base64.b64decode(e.get("audio", "")) for e in self.events("input_audio_buffer.append")]

    async def wait_for(self, predicate: Callable[[FakeConn], bool], timeout: float = WAIT) -> None:
        await self.server.wait_for(lambda: predicate(self), timeout)

    async def wait_closed(self, timeout: float = WAIT) -> int | None:
        with trio.fail_after(timeout):
            await self.closed.wait()
        return self.close_code

    # -- what a test does --------------------------------------------------------------------

    async def send(self, *events: dict[str, Any] | str | bytes) -> None:
        """Send frames now, in order (dicts as JSON text)."""
        async with self._lock:
            for event in events:
                assert self.ws is not None, "not accepted"
                data = orjson.dumps(event).decode() if isinstance(event, dict) else event
                await self.ws.send_message(data)
                self.sent.append((trio.current_time(), event))
        self.server.bump()

    async def close(self, code: int, reason: str = "") -> None:
        """Start a close handshake with this code (bounded); the connection's reader keeps
        running until the peer's answer arrived."""
        assert self.ws is not None
        self._closing = trio.Event()
        try:
            with trio.move_on_after(2):
                await self.ws.aclose(code, reason)
        finally:
            self._closing.set()
        with trio.move_on_after(2):
            await self.closed.wait()

    async def drop(self) -> None:
        """End TCP without a close frame."""
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()
        with trio.move_on_after(2):
            await self.closed.wait()

    # -- scripted behaviour ------------------------------------------------------------------

    def _later(self, delay: float, *events: dict[str, Any] | float, gate: trio.Event | None = None) -> None:
        """Send `events` (a float is a pause between them) after `delay`, then after `gate`."""
        assert self.nursery is not None
        self.nursery.start_soon(self._send_later, delay, events, gate)

    async def _send_later(self, delay: float, events: tuple[dict[str, Any] | float, ...], gate: trio.Event | None) -> None:
        if delay > 0:
            await trio.sleep(delay)
        if gate is not None:
            await gate.wait()
        try:
            for event in events:
                if isinstance(event, float):  # a pause inside a scripted sequence
                    await trio.sleep(event)
                else:
                    await self.send(event)
        except tws.ConnectionClosed:
            pass

    def _react(self, event: dict[str, Any]) -> None:
        s = self.script
        etype = event.get("type")
        if etype == "session.update" and s.session_updated:
            events: list[Any] = [{"type": "session.updated", "session": {"type": "realtime"}}]
            if not self._updated_once:
                self._updated_once = True
                events += s.after_session_updated
            self._later(s.session_updated_delay, *events, gate=s.session_updated_gate)
        elif etype == "conversation.item.create":
            item = event.get("item") if isinstance(event.get("item"), dict) else {}
            if item.get("type") == "function_call_output":
                self._function_output(item)
            elif item.get("role") == "user" and s.item_added:
                self._items += 1
                echoed = {
                    "id": f"item_mock_{self._items}",
                    "type": "message",
                    "role": "user",
                    "content": item.get("content"),
                }
                events = [{"type": "conversation.item.added", "item": echoed}]
                if s.item_done:
                    events.append({"type": "conversation.item.done", "item": echoed})
                self._later(s.item_added_delay, *events)
            elif item.get("role") == "assistant" and s.echo_assistant_items:
                self._items += 1
                echoed = {"id": f"item_mock_{self._items}", "type": "message", "role": "assistant",
                          "content": item.get("content")}
                self._later(0, {"type": "conversation.item.added", "item": echoed})
        elif etype == "response.create" and s.respond:
            self._replies += 1
            events = []
            if s.reply_audio:
                events += [
                    {"type": "response.output_audio.delta", "delta": base64.b64encode(AUDIO_DELTA).decode()},
                    {"type": "response.output_audio.done"},
                ]
            events += [
                {"type": "response.output_text.done", "text": s.reply_text},
                {
                    "type": "conversation.item.done",
                    "item": {
                        "id": f"item_mock_response_{self._replies}",
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": s.reply_text}],
                    },
                },
            ]
            if s.reply_response_done:
                events.append({"type": "response.done", "response": {"output": []}})
            self._later(s.reply_delay, *events)
        elif etype == "input_audio_buffer.commit" and s.ack_commit:
            self._later(0, {"type": "input_audio_buffer.committed", "item_id": f"item_commit_{len(self.times(etype))}"})

    def _function_output(self, item: dict[str, Any]) -> None:
        s = self.script
        text_done = {"type": "response.output_text.done", "text": s.function_done_text}
        response_done = {"type": "response.done", "response": {"output": []}}
        self._outputs += 1
        variant = s.function_output
        if variant == "text_done":
            self._later(0, text_done)
        elif variant == "response_done":
            self._later(0, response_done)
        elif variant == "response_done_then_text_done":
            self._later(0, response_done, 0.05, text_done)
        elif variant == "audio_done_response_done":
            self._later(0, {"type": "response.output_audio.done"}, response_done)
        elif variant == "item_events":
            echoed = {"id": f"o{self._outputs}", "type": "function_call_output",
                      "call_id": item.get("call_id"), "output": item.get("output")}
            self._later(0, {"type": "conversation.item.added", "item": echoed},
                        {"type": "conversation.item.done", "item": echoed})


class ScriptedOpenAI:
    """`await nursery.start(fake.serve)` -> port. `script` applies to connections opened after
    it is set; `conns` lists every connection in arrival order."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.conns: list[FakeConn] = []
        self.port = 0
        self._handed = 0
        self._changed = trio.Event()

    def bump(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await self._changed.wait()

    async def next_conn(self, index: int | None = None, timeout: float = WAIT) -> FakeConn:
        """Connection number `index` (default: the next one not yet returned)."""
        wanted = self._handed if index is None else index
        await self.wait_for(lambda: len(self.conns) > wanted, timeout)
        if index is None:
            self._handed += 1
        return self.conns[wanted]

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn: FakeConn | None = None
        try:
            async with trio.open_nursery() as nursery:
                request = await tws.wrap_server_stream(nursery, stream, max_message_size=64 << 20)
                conn = FakeConn(self, request, self.script)
                conn.nursery = nursery
                self.conns.append(conn)
                self.bump()
                await self._run(conn, request)
                nursery.cancel_scope.cancel()
        except Exception:  # noqa: BLE001 - a broken test connection must not stop the fake
            pass
        finally:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)
            if conn is not None:
                if conn.close_code is None and conn.accepted and conn._closing is None:
                    conn.close_code = 1006
                conn.closed.set()
                self.bump()

    async def _run(self, conn: FakeConn, request: tws.WebSocketRequest) -> None:
        script = conn.script
        if script.reject_status is not None:
            body = orjson.dumps({"error": {"message": "Incorrect API key provided.", "code": "invalid_api_key"}})
            await request.reject(script.reject_status, body=body)
            return
        if script.hang:
            await trio.sleep_forever()
        if script.accept_gate is not None:
            await script.accept_gate.wait()
        conn.ws = await request.accept(subprotocol="realtime" if "realtime" in conn.subprotocols else None)
        conn.accepted = True
        self.bump()
        if script.session_created:
            await conn.send({"type": "session.created", "session": {"type": "realtime"}})
        while True:
            try:
                message = await conn.ws.get_message()
            except tws.ConnectionClosed as exc:
                if conn._closing is not None:  # we started the close: let the handshake finish
                    await conn._closing.wait()
                else:
                    conn.close_code = exc.reason.code if exc.reason else None
                return
            try:
                event = orjson.loads(message) if isinstance(message, str) else message
            except orjson.JSONDecodeError:
                event = message
            conn.received.append((trio.current_time(), event))
            self.bump()
            if isinstance(event, dict):
                conn._react(event)
