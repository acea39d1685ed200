"""Sans-IO translator core of the `/openai` path: Deepgram Voice Agent protocol on the client leg,
OpenAI Realtime GA on the upstream leg (openai-translator.md, D34).

One `Translator` per connection. The I/O wrapper feeds it client frames, upstream frames, timer
expiries and connection events; every call returns the actions to perform, in order. No sockets,
clocks or tasks live here, so every ordering rule is a plain unit test. No public method raises:
a bug becomes an `internal_error` Error to the client plus an error `Log`, and the session goes on.

The `Translator` is the coordinator: it owns the connection events and timers, parses frames,
and routes each message or event through one of two explicit tables (`client_handlers`,
`upstream_handlers`: type -> bound method) to the part that owns it -- `SessionUpdates`
(session_update.py), `Turns` (turns.py), `Responses` (responses.py), `InputAudio`/`OutputAudio`
(audio_flow.py) -- which all emit through one `Outbox` (actions.py). What happens when no
response is live (`_when_idle`) is decided here, because it involves all of them.

Frame routing follows the opcode (D1): `str` is a text frame, `bytes` a binary frame. The only
binary frames sent to the client are decoded `response.output_audio.delta` payloads (R19).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from voxgate.workers.closecodes import map_close_code, safe_reason
from voxgate.workers.limits import limit_for
from voxgate.workers.openai.actions import (
    TIMER_COMMIT_COALESCE,
    TIMER_COMMIT_DEBOUNCE,
    TIMER_DEFERRED_CREATE,
    Action,
    Backlog,
    Outbox,
    dumps,
)
from voxgate.workers.openai.audio_flow import InputAudio, OutputAudio
from voxgate.workers.openai.responses import Responses
from voxgate.workers.openai.session_update import SessionUpdates
from voxgate.workers.openai.settings_map import AudioFormat
from voxgate.workers.openai.turns import Turns
from voxgate.workers.openai.upstream_map import redact, upstream_error

__all__ = [
    "Translator",
    "DIALECT_DEEPGRAM",
    "DIALECT_REFERENCE",
    "STRICT_DESCRIPTION",
    "dialect_for_path",
]

STRICT_ALLOWED = frozenset({"Settings", "InjectUserMessage", "FunctionCallResponse"})
STRICT_DESCRIPTION = (
    'Disallowed client message type "{}" for OpenAI proxy (Issue #533). Allowed: Settings, '
    "InjectUserMessage, FunctionCallResponse. KeepAlive is ignored. Enable "
    "OPENAI_PROXY_CLIENT_JSON_PASSTHROUGH=1 only for legacy debugging."
)
ACTIVE_RESPONSE_ERROR = "conversation_already_has_active_response"
CANCEL_NOT_ACTIVE_ERROR = "response_cancel_not_active"  # our interrupt raced the response's end
EXPECTED_CLOSURE_ERRORS = frozenset({"idle_timeout", "session_max_duration"})

DIALECT_REFERENCE = "reference"
"""Bare `/openai`: the reference translator's message set (dg_react_agent): interim and final
`Transcript`, `UtteranceEnd`, an `AgentDone`+`AgentAudioDone` pair, lower-case error codes."""
DIALECT_DEEPGRAM = "deepgram"
"""`/openai/v1/agent/converse`: exactly Deepgram's Voice Agent message set and order, which
the official SDKs model: a final user transcript is `ConversationText` (role user), no
`Transcript`/`UtteranceEnd`/`AgentDone`, the assistant's text before `AgentAudioDone`,
`AgentStartedSpeaking` with its latencies, a `LatencyReport` per turn, upper-case codes."""
AGENT_CONVERSE_PATH = "/openai/v1/agent/converse"


def dialect_for_path(path: str) -> str:
    """The Deepgram SDKs' agent path speaks Deepgram's dialect; bare `/openai` the reference's."""
    return DIALECT_DEEPGRAM if path == AGENT_CONVERSE_PATH else DIALECT_REFERENCE


QUIET_EVENTS = frozenset(
    {
        "response.output_audio.delta",
        "response.output_text.delta",
        "response.output_audio_transcript.delta",
        "response.function_call_arguments.delta",
        "conversation.item.input_audio_transcription.delta",
    }
)
IGNORED_EVENTS = (
    "conversation.created",
    "conversation.item.retrieved",
    "conversation.item.deleted",
    "conversation.item.truncated",
    "conversation.item.input_audio_transcription.failed",
    "conversation.item.input_audio_transcription.segment",
    "input_audio_buffer.committed",
    "input_audio_buffer.cleared",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "mcp_list_tools.in_progress",
    "mcp_list_tools.completed",
    "mcp_list_tools.failed",
    "rate_limits.updated",
    # GA events outside the reference's list of 38: known, deliberately silent.
    "output_audio_buffer.started",
    "output_audio_buffer.stopped",
    "output_audio_buffer.cleared",
    "response.mcp_call_arguments.delta",
    "response.mcp_call_arguments.done",
    "response.mcp_call.in_progress",
    "response.mcp_call.completed",
    "response.mcp_call.failed",
)
"""Known upstream events with no client-side meaning."""


class Translator:
    """Per-connection state machine (openai-translator §6). Feed events, perform the actions.

    What the I/O wrapper does with it:
    - `start()` on accept (Welcome), `upstream_open()` when the upstream handshake is done, or
      `upstream_failed()` when it cannot be; then every frame of either leg, in arrival order.
    - Actions are performed in list order. `ArmTimer` replaces a running timer of that name;
      `CancelTimer` of a timer that is not running is a no-op; a stale expiry is ignored.
      Timers: "commit_debounce" (0.4 s) and "commit_coalesce" (0.6 s) in manual-commit mode
      only, "deferred_create" (`deferred_create_timeout`) after function results.
    - While `pending_bytes > max_pending_bytes`, stop reading the client (D30); the value falls
      when the upstream opens / sends `session.updated`, and to 0 on close.
    - `CloseUpstream` can come before the upstream is open (client gone, gateway limit): abandon
      the connect. Once `closed` is True every method returns [] and the wrapper stops feeding.
    """

    def __init__(
        self,
        *,
        request_id: str,
        default_model: str = "gpt-realtime",
        strict: bool = False,
        json_passthrough: bool = False,
        deferred_create_timeout: float = 20.0,
        max_pending_bytes: int = 4 * 1024 * 1024,
        policy: dict[str, Any] | None = None,
        dialect: str = DIALECT_REFERENCE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.request_id = request_id or str(uuid.uuid4())
        self.strict = strict
        self.json_passthrough = json_passthrough
        self.max_pending_bytes = max_pending_bytes
        self.internal_errors = 0  # bugs caught by the guard; tests assert it stays 0
        self._default_model = default_model or "gpt-realtime"
        self._dg = dialect == DIALECT_DEEPGRAM
        self._welcome_sent = False

        self._outbox = Outbox(deepgram=self._dg)
        self._backlog = Backlog()
        self._output = OutputAudio()
        self._responses = Responses(
            self._outbox,
            self._output,
            clock=clock,
            deferred_create_timeout=deferred_create_timeout,
            before_create=self._before_create,
            idle=self._when_idle,
        )
        self._input = InputAudio(self._outbox, self._responses)
        self._session = SessionUpdates(
            self._outbox,
            self._responses,
            self._input,
            self._output,
            self._backlog,
            default_model=self._default_model,
            policy=policy,
        )
        self._turns = Turns(self._outbox, self._backlog, self._session, self._responses)

        self.client_handlers: dict[str, Callable[[dict[str, Any], str], None]] = {
            "Settings": self._session.on_settings,
            "InjectUserMessage": self._turns.on_inject_user,
            "FunctionCallResponse": self._responses.on_function_call_response,
            "UpdatePrompt": self._session.on_update_prompt,
            "InjectAgentMessage": self._turns.on_inject_agent,
            "UpdateSpeak": self._c_update_speak,
            "UpdateThink": self._session.on_update_think,
            "UpdateListen": self._session.on_update_listen,
        }
        self.upstream_handlers: dict[str, Callable[[dict[str, Any]], None]] = (
            self._upstream_table()
        )

    def _upstream_table(self) -> dict[str, Callable[[dict[str, Any]], None]]:
        """Every upstream event type the translator knows, and the handler that owns it."""
        r, t = self._responses, self._turns
        table: dict[str, Callable[[dict[str, Any]], None]] = {
            "session.created": self._up_session_created,
            "session.updated": self._up_session_updated,
            "conversation.item.created": r.on_item,
            "conversation.item.added": r.on_item,
            "conversation.item.done": r.on_item_done,
            "conversation.item.input_audio_transcription.delta": t.on_transcription_delta,
            "conversation.item.input_audio_transcription.completed": t.on_transcription_completed,
            "error": self._up_error,
            "input_audio_buffer.speech_started": self._up_speech_started,
            "input_audio_buffer.speech_stopped": t.on_speech_stopped,
            "response.created": self._up_response_created,
            "response.done": r.on_done,
            "response.output_item.added": r.on_output_item,
            "response.output_item.done": r.on_output_item,
            "response.content_part.added": r.on_part,
            "response.content_part.done": r.on_part,
            "response.output_text.added": r.on_part,
            "response.output_text.delta": r.on_text_delta,
            "response.output_text.done": r.on_text_done,
            "response.output_audio.delta": r.on_audio_delta,
            "response.output_audio.done": r.on_audio_done,
            "response.output_audio_transcript.delta": r.on_transcript_delta,
            "response.output_audio_transcript.done": r.on_audio_transcript_done,
            "response.function_call_arguments.done": r.on_function_call,
            "response.function_call_arguments.delta": r.on_function_call_delta,
        }
        for name in IGNORED_EVENTS:
            table[name] = self._up_ignore
        return table

    # --- public API ------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of client frames held before the upstream is open or ready (D30)."""
        return self._backlog.pending_bytes

    @property
    def closed(self) -> bool:
        """True once the session is over (a close was emitted for the leg(s) still open)."""
        return self._outbox.closed

    @property
    def ready(self) -> bool:
        """True once a real `session.updated` has arrived."""
        return self._session.ready

    @property
    def settings_forwarded(self) -> bool:
        """True once a Settings became a `session.update` (its audio formats are in force)."""
        return self._session.forwarded

    @property
    def audio_formats(self) -> tuple[AudioFormat, AudioFormat]:
        """The client's (input, output) audio formats as in force now (usage metering)."""
        return self._input.format, self._output.format

    @property
    def on_usage(self) -> Callable[[Any], None] | None:
        """Called with each `response.done`'s `usage` (token metering)."""
        return self._responses.on_usage

    @on_usage.setter
    def on_usage(self, callback: Callable[[Any], None] | None) -> None:
        self._responses.on_usage = callback

    def start(self) -> list[Action]:
        """The client leg was accepted: `Welcome` goes out first (D6)."""
        return self._guard(self._on_start)

    def upstream_open(self) -> list[Action]:
        """The upstream handshake completed: drain the frames queued before it (R1)."""
        return self._guard(self._on_upstream_open)

    def upstream_failed(self, *, auth: bool, status: int | None = None) -> list[Action]:
        """The upstream could not be opened (D27): Error, then close the client 1008/1011."""
        return self._guard(self._on_upstream_failed, auth, status)

    def client_message(self, data: str | bytes) -> list[Action]:
        """One client frame: `str` = text (JSON), `bytes` = binary (PCM) (D1)."""
        return self._guard(self._on_client_message, data)

    def upstream_message(self, data: str | bytes) -> list[Action]:
        """One upstream frame (a JSON text frame normally)."""
        return self._guard(self._on_upstream_message, data)

    def timer_expired(self, name: str) -> list[Action]:
        """A timer armed by `ArmTimer` fired."""
        return self._guard(self._on_timer, name)

    def client_closed(self, code: int | None, reason: str) -> list[Action]:
        """The client leg closed: manual-mode flush (R10b), then close the upstream (D29)."""
        return self._guard(self._on_client_closed, code, reason)

    def upstream_closed(self, code: int | None, reason: str) -> list[Action]:
        """The upstream leg closed: held errors, then close the client with the mapped code."""
        return self._guard(self._on_upstream_closed, code, reason)

    def gateway_limit(self, code: str) -> list[Action]:
        """A gateway limit ended the session (D35): Error first, then close both legs."""
        return self._guard(self._on_gateway_limit, code)

    # --- plumbing --------------------------------------------------------------------------

    def _guard(self, handler: Callable[..., None], *args: Any) -> list[Action]:
        if self._outbox.closed:
            return []
        self._outbox.take()
        try:
            handler(*args)
        except Exception as exc:  # never let one bad frame take the connection down
            self.internal_errors += 1
            self._outbox.log(
                "error", "translator internal error", where=handler.__name__, exc=type(exc).__name__
            )
            self._outbox.error(
                "internal_error", "The gateway could not process a message; it was dropped."
            )
        return self._outbox.take()

    def _finish(self, client: tuple[int, str] | None, upstream: tuple[int, str] | None) -> None:
        """Every close path: timers cancelled, open legs closed, every held frame dropped."""
        self._outbox.finish(client, upstream)
        self._backlog.clear()

    def _before_create(self) -> None:
        """A response.create is about to start a response: held session changes go first."""
        self._session.flush_held()

    def _when_idle(self, response_ended: bool) -> None:
        """No response active: manual-mode commit of audio that waited (R10a), held session
        changes, queued agent messages (spoken after the turn they waited for), then the owed
        response.create."""
        if response_ended:
            self._input.after_response(self._session.ready)
        responses = self._responses
        if responses.active:
            return
        self._session.flush_held()
        if not responses.deferred_armed:
            self._turns.flush_queued_agent()
        if responses.deferred_armed or responses.owed_create:
            responses.send_create("deferred" if responses.deferred_armed else "inject")

    # --- connection events -----------------------------------------------------------------

    def _on_start(self) -> None:
        if not self._welcome_sent:
            self._welcome_sent = True
            self._outbox.to_client(dumps({"type": "Welcome", "request_id": self.request_id}))

    def _on_upstream_open(self) -> None:
        if self._outbox.upstream_open:
            return
        self._outbox.upstream_open = True
        self._outbox.log("info", "upstream open", queued_frames=self._backlog.frames_before_open)
        while not self._outbox.closed:
            frame = self._backlog.next_frame()
            if frame is None:
                break
            self._client_frame(frame)

    def _on_upstream_failed(self, auth: bool, status: int | None) -> None:
        shown = f" (HTTP {status})" if isinstance(status, int) and 100 <= status <= 599 else ""
        if auth:
            self._outbox.error(
                "upstream_auth_failed",
                f"The OpenAI Realtime API rejected the gateway's credentials{shown}.",
            )
            self._finish(client=(1008, "upstream auth failed"), upstream=None)
        else:
            self._outbox.error(
                "upstream_unavailable", f"Could not connect to the OpenAI Realtime API{shown}."
            )
            self._finish(client=(1011, "upstream unavailable"), upstream=None)

    def _on_client_closed(self, code: int | None, reason: str) -> None:
        self._outbox.log("info", "client closed", code=code)
        self._input.flush_on_close(self._session.ready)  # R10b
        self._finish(
            client=None, upstream=(map_close_code(code, toward="upstream"), "client closed")
        )

    def _on_upstream_closed(self, code: int | None, reason: str) -> None:
        self._outbox.log("info", "upstream closed", code=code)
        self._responses.flush_idle_error()
        if not self._session.ready:
            shown = redact(safe_reason(reason if isinstance(reason, str | bytes) else None))
            detail = f", reason: {shown}" if shown else ""
            self._outbox.error(
                "upstream_closed_before_session_ready",
                f"Upstream closed before session ready (code {1005 if code is None else code}"
                f"{detail}). Session may not have been applied.",
            )
        self._finish(
            client=(map_close_code(code, toward="client"), "upstream closed"), upstream=None
        )

    def _on_gateway_limit(self, code: str) -> None:
        limit = limit_for(code)
        self._responses.flush_idle_error()
        self._outbox.error(limit.code, limit.description)
        self._outbox.log("info", "gateway limit", code=limit.code)
        self._finish(
            client=(limit.client_close, limit.code), upstream=(limit.upstream_close, limit.code)
        )

    def _on_timer(self, name: str) -> None:
        if not self._outbox.expire(name):
            return  # cancelled or unknown: a stale expiry
        if name in (TIMER_COMMIT_DEBOUNCE, TIMER_COMMIT_COALESCE):
            self._input.try_commit()
        elif name == TIMER_DEFERRED_CREATE:
            self._responses.deferred_expired()

    # --- client frames ---------------------------------------------------------------------

    def _on_client_message(self, data: str | bytes) -> None:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, str | bytes):
            self._outbox.log(
                "warning", "client frame of unknown kind dropped", kind=type(data).__name__
            )
            return
        if len(data) == 0:
            return  # D1
        if not self._outbox.upstream_open:  # R1
            self._backlog.hold_frame(data)
            return
        self._client_frame(data)

    def _client_frame(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self._c_audio(data)
            return
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._outbox.error(
                "unparsable_client_message", "Client text frame is not valid JSON; it was dropped."
            )
            return
        mtype = msg.get("type") if isinstance(msg, dict) else None
        name = mtype if isinstance(mtype, str) and mtype else None
        if name == "KeepAlive":  # D12: never forwarded, even in passthrough mode
            return
        handler = self.client_handlers.get(name) if name else None
        if handler is not None and (not self.strict or name in STRICT_ALLOWED):
            handler(msg, data)
            return
        self._c_unhandled(name, data)

    def _c_unhandled(self, name: str | None, data: str) -> None:
        """A client message no handler takes: passed through (D16) or refused (D14, D15)."""
        if self.json_passthrough:  # D16
            self._outbox.log("debug", "client JSON passed through", type=(name or "")[:64])
            self._outbox.to_upstream(data)
            return
        shown = name[:64] if name else "(missing type)"
        if self.strict:  # D15
            self._outbox.error("disallowed_client_message_type", STRICT_DESCRIPTION.format(shown))
        else:  # D14
            self._outbox.error(
                "unsupported_client_message",
                f'Unsupported client message type "{shown}" for the OpenAI translator.',
            )

    def _c_audio(self, data: bytes) -> None:
        if self._session.forwarded and self._input.format.is_linear16 and len(data) % 2:
            self._outbox.error(
                "invalid_audio_frame", "Binary audio frame has an odd byte length; it was dropped."
            )
            return
        if not self._session.ready:  # R5
            self._backlog.hold_audio(data)
            return
        self._input.feed(data)

    def _c_update_speak(self, msg: dict[str, Any], raw: str) -> None:
        self._outbox.error(
            "unsupported_client_message", "UpdateSpeak is not supported by the OpenAI translator"
        )

    # --- upstream frames -------------------------------------------------------------------

    def _on_upstream_message(self, data: str | bytes) -> None:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        try:
            event = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            self._outbox.log(
                "warning",
                "upstream frame is not JSON",
                length=len(data) if hasattr(data, "__len__") else 0,
            )
            self._outbox.error(
                "unmapped_upstream_event",
                "Proxy received upstream message that could not be parsed as JSON.",
            )
            return
        etype = event.get("type") if isinstance(event, dict) else None
        handler = self.upstream_handlers.get(etype) if isinstance(etype, str) else None
        if handler is None:  # R22: unknown or future events never reach the client
            shown = etype[:100] if isinstance(etype, str) else "(missing type)"
            self._outbox.log("warning", "unmapped upstream event", type=shown, length=len(data))
            self._outbox.log(
                "debug", "unmapped upstream event payload", payload=_payload_preview(data)
            )
            return
        if etype not in QUIET_EVENTS:
            self._outbox.log("debug", "upstream event", type=etype)
        handler(event)

    def _up_ignore(self, event: dict[str, Any]) -> None:
        """Known event with no client-side meaning."""

    def _up_session_created(self, event: dict[str, Any]) -> None:
        self._outbox.log("info", "session.created (waiting for session.updated)")  # R4

    def _up_session_updated(self, event: dict[str, Any]) -> None:
        self._session.updated()
        self._flush_ready_queues()

    def _flush_ready_queues(self) -> None:
        """R6 then R5: queued injects/prompts in arrival order, then queued audio."""
        while (held := self._backlog.next_until_ready()) is not None:
            kind, payload = held
            if kind == "user":
                self._turns.inject_user(payload)
            elif kind == "agent":
                self._turns.inject_agent(*payload)
            else:
                self._session.change(kind, payload)
        appended = False
        while (data := self._backlog.next_audio()) is not None:
            appended = self._input.append(data) or appended
        if appended:
            self._input.schedule_commit()

    def _up_response_created(self, event: dict[str, Any]) -> None:
        self._responses.on_created(event, server_vad=self._input.server_vad)  # R11

    def _up_speech_started(self, event: dict[str, Any]) -> None:
        self._turns.speech_started()

    def _up_error(self, event: dict[str, Any]) -> None:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        message = upstream_error(event)
        code = message["code"]
        event_id = err.get("event_id")
        if code == ACTIVE_RESPONSE_ERROR:  # R21: never forwarded
            self._outbox.log(
                "info", "upstream reports an active response", event_id=str(event_id)[:64]
            )
            self._responses.requeue_create(event_id)
            return
        if code == CANCEL_NOT_ACTIVE_ERROR:  # our interrupt's cancel arrived after the end
            self._outbox.log("info", "response.cancel found no active response")
            return
        self._session.refused(event_id)
        level = "info" if code in EXPECTED_CLOSURE_ERRORS else "error"
        self._outbox.log(level, "upstream error", code=code[:64])
        frame = self._outbox.error_frame(code, message["description"])
        if not (code == "idle_timeout" and self._responses.hold_idle_error(frame)):  # R16
            self._outbox.to_client(frame)


def _payload_preview(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text[:4096]
