"""Sans-IO translator core of the `/openai` path: Deepgram Voice Agent protocol on the client leg,
OpenAI Realtime GA on the upstream leg (openai-translator.md, D34).

One `Translator` per connection. The I/O wrapper feeds it client frames, upstream frames, timer
expiries and connection events; every call returns the actions to perform, in order. No sockets,
clocks or tasks live here, so every ordering rule is a plain unit test. No public method raises:
a bug becomes an `internal_error` Error to the client plus an error `Log`, and the session goes on.

Frame routing follows the opcode (D1): `str` is a text frame, `bytes` a binary frame. The only
binary frames sent to the client are decoded `response.output_audio.delta` payloads (R19).
"""

from __future__ import annotations

import binascii
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

from voxgate.policy import apply_policy, pinned_message
from voxgate.workers.closecodes import map_close_code, safe_reason
from voxgate.workers.limits import limit_for
from voxgate.workers.openai.audio import OPENAI_RATE, StreamResampler, silence
from voxgate.workers.openai.settings_map import (
    DEFAULT_INPUT,
    DEFAULT_OUTPUT,
    AudioFormat,
    ListenChange,
    SettingsRejected,
    ThinkChange,
    assistant_message_event,
    function_call_output_event,
    listen_session,
    map_settings,
    map_update_listen,
    map_update_think,
    user_message_event,
)
from voxgate.workers.openai.upstream_map import (
    assistant_text_from_item,
    assistant_text_from_response,
    client_error,
    function_call_request,
    output_text_from_done,
    redact,
    text_delta,
    transcript_final,
    transcript_interim,
    upstream_error,
    utterance_end,
)

__all__ = [
    "Action",
    "ArmTimer",
    "CancelTimer",
    "CloseClient",
    "CloseUpstream",
    "Log",
    "SendClient",
    "SendUpstream",
    "Translator",
    "TIMER_COMMIT_COALESCE",
    "TIMER_COMMIT_DEBOUNCE",
    "TIMER_DEFERRED_CREATE",
    "DIALECT_DEEPGRAM",
    "DIALECT_REFERENCE",
    "dialect_for_path",
]


# --- actions -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendClient:
    """Send to the client: `str` as a WebSocket text frame, `bytes` as a binary frame."""

    data: str | bytes


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Send to the upstream; always one JSON text frame."""

    data: str


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """(Re)arm the named timer; replaces a running timer of the same name."""

    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """Cancel the named timer; a timer that is not running is left alone."""

    name: str


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Close the client leg with this code and a short generic reason (<= 123 bytes)."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Close the upstream leg (or abandon its connect) with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    """A line for the wrapper's logger; never holds keys, payloads only at debug."""

    level: str  # "debug" | "info" | "warning" | "error"
    message: str
    fields: dict


Action = SendClient | SendUpstream | ArmTimer | CancelTimer | CloseClient | CloseUpstream | Log

# --- constants -----------------------------------------------------------------------------

TIMER_COMMIT_DEBOUNCE = "commit_debounce"
TIMER_COMMIT_COALESCE = "commit_coalesce"
TIMER_DEFERRED_CREATE = "deferred_create"
TIMERS = (TIMER_COMMIT_DEBOUNCE, TIMER_COMMIT_COALESCE, TIMER_DEFERRED_CREATE)
COMMIT_DEBOUNCE_SECONDS = 0.4
COMMIT_COALESCE_SECONDS = 0.6
MIN_COMMIT_BYTES = 4800  # 100 ms at 24 kHz PCM16
MIN_FIRST_COMMIT_BYTES = 48000  # 1 s at 24 kHz PCM16
MAX_APPEND_BYTES = 15 * 1024 * 1024
MAX_TEXT_CHARS = 1 << 20  # cap on accumulated text per response / transcript per item

STRICT_ALLOWED = frozenset({"Settings", "InjectUserMessage", "FunctionCallResponse"})
STRICT_DESCRIPTION = (
    'Disallowed client message type "{}" for OpenAI proxy (Issue #533). Allowed: Settings, '
    "InjectUserMessage, FunctionCallResponse. KeepAlive is ignored. Enable "
    "OPENAI_PROXY_CLIENT_JSON_PASSTHROUGH=1 only for legacy debugging."
)
ACTIVE_RESPONSE_ERROR = "conversation_already_has_active_response"
CANCEL_NOT_ACTIVE_ERROR = "response_cancel_not_active"  # our interrupt raced the response's end
INJECT_BEHAVIORS = ("default", "queue", "interrupt")

DIALECT_REFERENCE = "reference"
"""Bare `/openai`: the reference translator's message set (dg_react_agent): interim and final
`Transcript`, `UtteranceEnd`, an `AgentDone`+`AgentAudioDone` pair, lower-case error codes."""
DIALECT_DEEPGRAM = "deepgram"
"""`/openai/v1/agent/converse`: exactly Deepgram's Voice Agent message set and order, which
the official SDKs model: a final user transcript is `ConversationText` (role user), no
`Transcript`/`UtteranceEnd`/`AgentDone`, the assistant's text before `AgentAudioDone`,
`AgentStartedSpeaking` with its latencies, a `LatencyReport` per turn, upper-case codes."""
DEEPGRAM_ERROR_CODES = {
    "unparsable_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "invalid_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "unsupported_client_message": "UNPARSABLE_CLIENT_MESSAGE",
    "disallowed_client_message_type": "UNPARSABLE_CLIENT_MESSAGE",
    "internal_error": "INTERNAL_SERVER_ERROR",
}
AGENT_CONVERSE_PATH = "/openai/v1/agent/converse"


def dialect_for_path(path: str) -> str:
    """The Deepgram SDKs' agent path speaks Deepgram's dialect; bare `/openai` the reference's."""
    return DIALECT_DEEPGRAM if path == AGENT_CONVERSE_PATH else DIALECT_REFERENCE


UPDATE_ANSWERS = {"prompt": "PromptUpdated", "think": "ThinkUpdated", "listen": "ListenUpdated"}
EXPECTED_CLOSURE_ERRORS = frozenset({"idle_timeout", "session_max_duration"})

def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _simple(kind: str) -> str:
    return _dumps({"type": kind})


SETTINGS_APPLIED = _simple("SettingsApplied")
AGENT_STARTED = _simple("AgentStartedSpeaking")
AGENT_DONE = _simple("AgentDone")
AGENT_AUDIO_DONE = _simple("AgentAudioDone")
USER_STARTED = _simple("UserStartedSpeaking")
AGENT_THINKING = _dumps({"type": "AgentThinking", "content": ""})
COMMIT = _simple("input_audio_buffer.commit")


def _conversation_text(role: str, content: str) -> str:
    return _dumps({"type": "ConversationText", "role": role, "content": content})


def _append_event(pcm: bytes) -> str:
    # base64 needs no JSON escaping, so the frame is assembled without a dict round trip;
    # binascii directly: base64.b64encode is a Python wrapper around the same call.
    audio = binascii.b2a_base64(pcm, newline=False).decode("ascii")
    return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "replace"))


class _Bounded:
    """An insertion-ordered map that forgets its oldest entries past `limit`."""

    __slots__ = ("_data", "_limit")

    def __init__(self, limit: int) -> None:
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._limit = limit

    def __contains__(self, key: Any) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._data.get(key, default)

    def pop(self, key: Any, default: Any = None) -> Any:
        return self._data.pop(key, default)

    def set(self, key: Any, value: Any = True) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._limit:
            self._data.popitem(last=False)

    add = set


@dataclass(slots=True)
class _Response:
    """Once-per-response guards and accumulators (R13-R15), keyed by response id (D23)."""

    response_id: str | None = None
    started_sent: bool = False  # AgentStartedSpeaking
    done_sent: bool = False  # AgentDone + AgentAudioDone
    audio_seen: bool = False
    text_sent: bool = False  # an assistant ConversationText
    last_text: str | None = None
    text_parts: list[str] = field(default_factory=list)
    text_chars: int = 0
    ended: bool = False
    phantom: bool = False  # a create that upstream refused (D19); any response end ends it
    done_owed: bool = False  # Deepgram dialect: AgentAudioDone waits for the assistant text
    interrupted: bool = False  # cancelled by an InjectAgentMessage interrupt: output dropped
    audio_item_id: str | None = None  # the item whose audio the client is playing
    audio_bytes: int = 0  # upstream-format bytes of that item sent to the client
    turn_end: float | None = None  # when the user turn this response answers ended
    first_token: float | None = None
    first_text: float | None = None
    first_tool: float | None = None
    first_audio: float | None = None
    reported: bool = False  # LatencyReport sent


# --- the core ------------------------------------------------------------------------------


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

    UPSTREAM_HANDLERS: ClassVar[dict[str, str]] = {
        "session.created": "_up_session_created",
        "session.updated": "_up_session_updated",
        "conversation.created": "_up_ignore",
        "conversation.item.created": "_up_item",
        "conversation.item.added": "_up_item",
        "conversation.item.done": "_up_item_done",
        "conversation.item.retrieved": "_up_ignore",
        "conversation.item.deleted": "_up_ignore",
        "conversation.item.truncated": "_up_ignore",
        "conversation.item.input_audio_transcription.delta": "_up_transcription_delta",
        "conversation.item.input_audio_transcription.completed": "_up_transcription_completed",
        "conversation.item.input_audio_transcription.failed": "_up_ignore",
        "conversation.item.input_audio_transcription.segment": "_up_ignore",
        "error": "_up_error",
        "input_audio_buffer.committed": "_up_ignore",
        "input_audio_buffer.cleared": "_up_ignore",
        "input_audio_buffer.timeout_triggered": "_up_ignore",
        "input_audio_buffer.dtmf_event_received": "_up_ignore",
        "input_audio_buffer.speech_started": "_up_speech_started",
        "input_audio_buffer.speech_stopped": "_up_speech_stopped",
        "mcp_list_tools.in_progress": "_up_ignore",
        "mcp_list_tools.completed": "_up_ignore",
        "mcp_list_tools.failed": "_up_ignore",
        "rate_limits.updated": "_up_ignore",
        "response.created": "_up_response_created",
        "response.done": "_up_response_done",
        "response.output_item.added": "_up_output_item",
        "response.output_item.done": "_up_output_item",
        "response.content_part.added": "_up_response_ignore",
        "response.content_part.done": "_up_response_ignore",
        "response.output_text.added": "_up_response_ignore",
        "response.output_text.delta": "_up_text_delta",
        "response.output_text.done": "_up_text_done",
        "response.output_audio.delta": "_up_audio_delta",
        "response.output_audio.done": "_up_audio_done",
        "response.output_audio_transcript.delta": "_up_transcript_delta",
        "response.output_audio_transcript.done": "_up_audio_transcript_done",
        "response.function_call_arguments.done": "_up_function_call",
        # GA events outside the reference's list of 38: known, deliberately silent.
        "response.function_call_arguments.delta": "_up_function_call_delta",
        "output_audio_buffer.started": "_up_ignore",
        "output_audio_buffer.stopped": "_up_ignore",
        "output_audio_buffer.cleared": "_up_ignore",
        "response.mcp_call_arguments.delta": "_up_ignore",
        "response.mcp_call_arguments.done": "_up_ignore",
        "response.mcp_call.in_progress": "_up_ignore",
        "response.mcp_call.completed": "_up_ignore",
        "response.mcp_call.failed": "_up_ignore",
    }
    QUIET_EVENTS: ClassVar[frozenset[str]] = frozenset(
        {
            "response.output_audio.delta",
            "response.output_text.delta",
            "response.output_audio_transcript.delta",
            "response.function_call_arguments.delta",
            "conversation.item.input_audio_transcription.delta",
        }
    )

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
        self.default_model = default_model or "gpt-realtime"
        self.strict = strict
        self.json_passthrough = json_passthrough
        self.deferred_create_timeout = deferred_create_timeout
        self.max_pending_bytes = max_pending_bytes
        self.dialect = dialect
        self._dg = dialect == DIALECT_DEEPGRAM
        self._clock = clock  # latency measurements only; ordering never depends on it
        self.internal_errors = 0  # bugs caught by the guard; tests assert it stays 0
        self.on_usage: Callable[[Any], None] | None = None  # each response.done's `usage`
        self.policy = policy  # server-owned session policy rules (voxgate.policy)

        self._out: list[Action] = []
        self._welcome_sent = False
        self._upstream_open = False
        self._closed = False
        self._client_leg_closed = False
        self._upstream_leg_closed = False
        self._event_seq = 0

        # pre-open / pre-ready queues (R1, R5, R6, D30)
        self._open_queue: deque[str | bytes] = deque()
        self._open_queue_bytes = 0
        self._ready_queue: deque[tuple[str, Any, int]] = deque()  # (kind, payload, size)
        self._ready_queue_bytes = 0
        self._audio_queue: deque[bytes] = deque()
        self._audio_queue_bytes = 0

        # session
        self._ready = False  # a real session.updated was seen (R4)
        self._forwarded = False  # a Settings became a session.update (R2)
        self._owed_settings_applied = 0  # D9
        self._update_kinds: deque[tuple[str, str]] = deque()  # (event_id, "settings"|UPDATE_ANSWERS)
        self._server_vad = True  # D31; manual only behind the test flag
        self._instructions = ""
        self._greeting: str | None = None
        self._had_context = False
        self._held_updates: deque[tuple[str, Any]] = deque()  # (kind, change) during a response
        self._turn_detection: dict[str, Any] | None = None  # as last sent (UpdateListen)
        self._transcription: dict[str, Any] = {}
        self._queued_agent: deque[str] = deque()  # InjectAgentMessage behavior "queue"
        self._agent_echoes: deque[str] = deque(maxlen=16)
        self._user_speaking = False
        self._turn_end: float | None = None  # latest user turn end (speech stop, inject)
        self._speech_stopped_at: float | None = None
        self._stt_latency: float | None = None
        self._out_bytes_per_ms = 48  # upstream output audio: 24 kHz PCM16

        # audio
        self._input_format: AudioFormat = DEFAULT_INPUT
        self._in_resampler: StreamResampler | None = StreamResampler(16000, OPENAI_RATE)
        self._output_format: AudioFormat = DEFAULT_OUTPUT
        self._out_resampler: StreamResampler | None = None
        self._out_carry = b""
        self._pending_audio = 0  # 24 kHz bytes appended since the last commit (manual mode)
        self._first_commit_done = False
        self._armed: set[str] = set()

        # responses
        self._active = False
        self._cur = _Response()
        self._responses = _Bounded(32)  # response id -> _Response
        self._item_response = _Bounded(512)  # item id -> response id
        self._sent_item_ids = _Bounded(1024)  # items that already produced assistant text
        self._unbound_injects = 0  # D17
        self._bound_item_ids = _Bounded(512)
        self._owed_create = False  # D18
        self._awaiting_created: deque[str] = deque(maxlen=16)  # D19
        self._our_creates = _Bounded(64)
        self._deferred_armed = False  # R8
        self._outstanding_calls: set[str] = set()  # D25
        self._announced_calls = _Bounded(512)  # call id -> (name, response id)
        self._answered_calls = _Bounded(512)
        self._held_idle_error: str | None = None  # R16
        self._transcripts = _Bounded(64)  # item id -> accumulated interim text

        self._client_handlers: dict[str, Callable[[dict[str, Any], str], None]] = {
            "Settings": self._c_settings,
            "InjectUserMessage": self._c_inject_user,
            "FunctionCallResponse": self._c_function_call_response,
            "UpdatePrompt": self._c_update_prompt,
            "InjectAgentMessage": self._c_inject_agent,
            "UpdateSpeak": self._c_update_speak,
            "UpdateThink": self._c_update_think,
            "UpdateListen": self._c_update_listen,
        }

    # --- public API ------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes of client frames held before the upstream is open or ready (D30)."""
        return self._open_queue_bytes + self._ready_queue_bytes + self._audio_queue_bytes

    @property
    def closed(self) -> bool:
        """True once the session is over (a close was emitted for the leg(s) still open)."""
        return self._closed

    @property
    def ready(self) -> bool:
        """True once a real `session.updated` has arrived."""
        return self._ready

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
        if self._closed:
            return []
        self._out = []
        try:
            handler(*args)
        except Exception as exc:  # never let one bad frame take the connection down
            self.internal_errors += 1
            self._log(
                "error", "translator internal error", where=handler.__name__, exc=type(exc).__name__
            )
            self._error(
                "internal_error", "The gateway could not process a message; it was dropped."
            )
        out, self._out = self._out, []
        return out

    def _log(self, level: str, message: str, **fields: Any) -> None:
        self._out.append(Log(level, message, fields))

    def _to_client(self, data: str | bytes) -> None:
        if not self._client_leg_closed:
            self._out.append(SendClient(data))

    def _to_upstream(self, data: str) -> None:
        if self._upstream_open and not self._upstream_leg_closed:
            self._out.append(SendUpstream(data))

    def _error(self, code: str, description: str) -> None:
        self._to_client(self._error_frame(code, description))

    def _error_frame(self, code: str, description: str) -> str:
        """An `Error`; the Deepgram dialect uses Deepgram's upper-case code style."""
        if self._dg:
            code = DEEPGRAM_ERROR_CODES.get(code) or code.upper()
        return _dumps(client_error(code, description))

    def _arm(self, name: str, seconds: float) -> None:
        self._armed.add(name)
        self._out.append(ArmTimer(name, seconds))

    def _cancel(self, name: str) -> None:
        if name in self._armed:
            self._armed.discard(name)
            self._out.append(CancelTimer(name))

    def _next_event_id(self, prefix: str) -> str:
        self._event_seq += 1
        return f"vg_{prefix}_{self._event_seq}"

    def _finish(self, client: tuple[int, str] | None, upstream: tuple[int, str] | None) -> None:
        """Every close path: cancel every timer, close what is still open, drop all queues."""
        for name in TIMERS:
            self._out.append(CancelTimer(name))
        self._armed.clear()
        if client is not None and not self._client_leg_closed:
            self._out.append(CloseClient(client[0], safe_reason(client[1])))
        if upstream is not None and not self._upstream_leg_closed:
            self._out.append(CloseUpstream(upstream[0], safe_reason(upstream[1])))
        self._client_leg_closed = self._upstream_leg_closed = True
        self._closed = True
        self._open_queue.clear()
        self._ready_queue.clear()
        self._audio_queue.clear()
        self._open_queue_bytes = self._ready_queue_bytes = self._audio_queue_bytes = 0

    # --- connection events -----------------------------------------------------------------

    def _on_start(self) -> None:
        if not self._welcome_sent:
            self._welcome_sent = True
            self._to_client(_dumps({"type": "Welcome", "request_id": self.request_id}))

    def _on_upstream_open(self) -> None:
        if self._upstream_open:
            return
        self._upstream_open = True
        self._log("info", "upstream open", queued_frames=len(self._open_queue))
        while self._open_queue and not self._closed:
            frame = self._open_queue.popleft()
            self._open_queue_bytes -= len(frame) if isinstance(frame, bytes) else _utf8_len(frame)
            self._client_frame(frame)

    def _on_upstream_failed(self, auth: bool, status: int | None) -> None:
        shown = f" (HTTP {status})" if isinstance(status, int) and 100 <= status <= 599 else ""
        if auth:
            self._error(
                "upstream_auth_failed",
                f"The OpenAI Realtime API rejected the gateway's credentials{shown}.",
            )
            self._finish(client=(1008, "upstream auth failed"), upstream=None)
        else:
            self._error(
                "upstream_unavailable", f"Could not connect to the OpenAI Realtime API{shown}."
            )
            self._finish(client=(1011, "upstream unavailable"), upstream=None)

    def _on_client_closed(self, code: int | None, reason: str) -> None:
        self._log("info", "client closed", code=code)
        if (
            not self._server_vad
            and self._ready
            and self._upstream_open
            and not self._active
            and self._pending_audio > 0
        ):  # R10b
            self._pad_pending_audio()
            self._to_upstream(COMMIT)
            self._to_upstream(
                _dumps({"type": "response.create", "event_id": self._next_event_id("rc")})
            )
            self._log("info", "flushed pending audio on client close", bytes=self._pending_audio)
            self._pending_audio = 0
        self._finish(
            client=None, upstream=(map_close_code(code, toward="upstream"), "client closed")
        )

    def _on_upstream_closed(self, code: int | None, reason: str) -> None:
        self._log("info", "upstream closed", code=code)
        self._flush_idle_error()
        if not self._ready:
            shown = redact(safe_reason(reason if isinstance(reason, str | bytes) else None))
            detail = f", reason: {shown}" if shown else ""
            self._error(
                "upstream_closed_before_session_ready",
                f"Upstream closed before session ready (code {1005 if code is None else code}"
                f"{detail}). Session may not have been applied.",
            )
        self._finish(
            client=(map_close_code(code, toward="client"), "upstream closed"), upstream=None
        )

    def _on_gateway_limit(self, code: str) -> None:
        limit = limit_for(code)
        self._flush_idle_error()
        self._error(limit.code, limit.description)
        self._log("info", "gateway limit", code=limit.code)
        self._finish(client=(limit.client_close, limit.code), upstream=(limit.upstream_close, limit.code))

    def _on_timer(self, name: str) -> None:
        if name not in self._armed:
            return  # cancelled or unknown: a stale expiry
        self._armed.discard(name)
        if name in (TIMER_COMMIT_DEBOUNCE, TIMER_COMMIT_COALESCE):
            self._try_commit()
        elif name == TIMER_DEFERRED_CREATE and self._deferred_armed:
            self._log(
                "error",
                "Required upstream contract violated: no response.done, response.output_text.done"
                " or function_call_output item.done after function_call_output; sending"
                " response.create anyway",
                seconds=self.deferred_create_timeout,
            )
            self._send_create("deferred-timeout")

    # --- client frames ---------------------------------------------------------------------

    def _on_client_message(self, data: str | bytes) -> None:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        if not isinstance(data, str | bytes):
            self._log("warning", "client frame of unknown kind dropped", kind=type(data).__name__)
            return
        if len(data) == 0:
            return  # D1
        if not self._upstream_open:  # R1
            self._open_queue.append(data)
            self._open_queue_bytes += len(data) if isinstance(data, bytes) else _utf8_len(data)
            return
        self._client_frame(data)

    def _client_frame(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            self._c_audio(data)
            return
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._error(
                "unparsable_client_message", "Client text frame is not valid JSON; it was dropped."
            )
            return
        mtype = msg.get("type") if isinstance(msg, dict) else None
        name = mtype if isinstance(mtype, str) and mtype else None
        if name == "KeepAlive":  # D12: never forwarded, even in passthrough mode
            return
        handler = self._client_handlers.get(name) if name else None
        if handler is not None and (not self.strict or name in STRICT_ALLOWED):
            handler(msg, data)
            return
        if self.json_passthrough:  # D16
            self._log("debug", "client JSON passed through", type=(name or "")[:64])
            self._to_upstream(data)
            return
        shown = name[:64] if name else "(missing type)"
        if self.strict:  # D15
            self._error("disallowed_client_message_type", STRICT_DESCRIPTION.format(shown))
        else:  # D14
            self._error(
                "unsupported_client_message",
                f'Unsupported client message type "{shown}" for the OpenAI translator.',
            )

    def _c_settings(self, msg: dict[str, Any], raw: str) -> None:
        if self._forwarded:  # R2, D9
            if self._ready:
                self._to_client(SETTINGS_APPLIED)
            else:
                self._owed_settings_applied += 1
            self._log("info", "duplicate Settings answered without a session.update")
            return
        if self._ready and (self._active or self._deferred_armed):  # R3
            self._to_client(SETTINGS_APPLIED)
            self._log("info", "Settings during an active response discarded")
            return
        plan = map_settings(msg, default_model=self.default_model)
        if isinstance(plan, SettingsRejected):
            self._error(plan.code, plan.description)
            return
        self._forwarded = True
        self._server_vad = plan.server_vad
        self._instructions = plan.instructions
        self._greeting = plan.greeting
        self._had_context = plan.had_context
        self._input_format = plan.input_format
        if plan.input_format.is_linear16 and plan.input_format.sample_rate != OPENAI_RATE:
            self._in_resampler = StreamResampler(plan.input_format.sample_rate, OPENAI_RATE)
        else:
            self._in_resampler = None
        self._output_format = plan.output_format
        audio_input = plan.session["audio"]["input"]
        self._turn_detection = audio_input["turn_detection"]
        self._transcription = audio_input["transcription"]
        out_type = plan.session["audio"].get("output", {}).get("format", {}).get("type")
        self._out_bytes_per_ms = 8 if out_type in ("audio/pcmu", "audio/pcma") else 48
        convert = not plan.output_passthrough and plan.output_format.is_linear16
        if convert and plan.output_format.sample_rate != OPENAI_RATE:
            self._out_resampler = StreamResampler(OPENAI_RATE, plan.output_format.sample_rate)
        else:
            self._out_resampler = None
        if plan.requested_model is not None:
            self._log(
                "debug",
                "non-realtime model replaced",
                requested=plan.requested_model[:64],
                model=plan.session["model"],
            )
        self._log(
            "info",
            "Settings forwarded",
            model=plan.session["model"],
            server_vad=plan.server_vad,
            input=f"{plan.input_format.encoding}/{plan.input_format.sample_rate}",
            output=f"{plan.output_format.encoding}/{plan.output_format.sample_rate}",
        )
        self._send_session_update(plan.session, "settings")

    def _send_session_update(self, session: dict[str, Any], kind: str) -> None:
        if self.policy:
            for name in apply_policy(session, self.policy):
                self._to_client(_dumps({"type": "Warning", "description": pinned_message(name), "code": "policy_pinned"}))
                self._log("info", "pinned field replaced", field=name)
        event_id = self._next_event_id("su")
        self._update_kinds.append((event_id, kind))
        self._to_upstream(
            _dumps({"type": "session.update", "event_id": event_id, "session": session})
        )

    def _queue_until_ready(self, kind: str, text: Any, raw: str) -> None:
        size = _utf8_len(raw)
        self._ready_queue.append((kind, text, size))
        self._ready_queue_bytes += size

    def _c_inject_user(self, msg: dict[str, Any], raw: str) -> None:
        content = msg.get("content")
        if not isinstance(content, str):  # D11
            self._error("invalid_client_message", "InjectUserMessage needs a string 'content'.")
            return
        if self._ready:
            self._inject_user(content)
        else:  # R6
            self._queue_until_ready("user", content, raw)

    def _inject_user(self, content: str) -> None:
        self._to_upstream(_dumps(user_message_event(content)))
        self._to_client(_conversation_text("user", content))  # R20
        self._unbound_injects += 1
        self._turn_end = self._clock()
        self._stt_latency = self._speech_stopped_at = None  # a typed turn has no STT

    # session changes: UpdatePrompt, UpdateThink, UpdateListen -----------------------------

    def _c_update_prompt(self, msg: dict[str, Any], raw: str) -> None:
        prompt = msg.get("prompt")
        if not isinstance(prompt, str):
            self._error("invalid_client_message", "UpdatePrompt needs a string 'prompt'.")
            return
        self._request_change("prompt", prompt, raw)

    def _c_update_think(self, msg: dict[str, Any], raw: str) -> None:
        change = map_update_think(msg, default_model=self.default_model)
        if isinstance(change, SettingsRejected):
            self._error(change.code, change.description)
            return
        self._request_change("think", change, raw)

    def _c_update_listen(self, msg: dict[str, Any], raw: str) -> None:
        change = map_update_listen(msg)
        if isinstance(change, SettingsRejected):
            self._error(change.code, change.description)
            return
        self._request_change("listen", change, raw)

    def _request_change(self, kind: str, change: Any, raw: str) -> None:
        """Gated like an inject before `session.updated`; held during a response (§2.4)."""
        if self._ready:
            self._session_change(kind, change)
        else:
            self._queue_until_ready(kind, change, raw)

    def _session_change(self, kind: str, change: Any) -> None:
        if self._active or self._deferred_armed:  # a session.update now would be refused
            self._held_updates.append((kind, change))
            return
        self._send_change(kind, change)

    def _send_change(self, kind: str, change: Any) -> None:
        """One `session.update`; its `session.updated` answers PromptUpdated / ThinkUpdated /
        ListenUpdated (UPDATE_ANSWERS)."""
        session: dict[str, Any] = {"type": "realtime"}
        if kind == "prompt":  # Deepgram semantics: adds to the prompt
            self._instructions = (
                f"{self._instructions}\n\n{change}" if self._instructions else change
            )
            session["instructions"] = self._instructions
        elif kind == "think":
            assert isinstance(change, ThinkChange)
            if change.prompt is not None:  # replaces the prompt
                self._instructions = change.prompt
                session["instructions"] = change.prompt
            if change.model is not None:
                session["model"] = change.model
            if change.tools is not None:
                session["tools"] = change.tools
        else:
            assert isinstance(change, ListenChange)
            td, tr = listen_session(change, self._turn_detection, self._transcription)
            self._turn_detection, self._transcription = td, tr
            session["audio"] = {"input": {"turn_detection": td, "transcription": tr}}
        self._send_session_update(session, kind)

    # InjectAgentMessage ---------------------------------------------------------------------

    def _c_inject_agent(self, msg: dict[str, Any], raw: str) -> None:
        message = msg.get("message")
        if not isinstance(message, str):
            self._error("invalid_client_message", "InjectAgentMessage needs a string 'message'.")
            return
        behavior = msg.get("behavior")
        behavior = "default" if behavior is None else behavior
        if behavior not in INJECT_BEHAVIORS:
            self._error(
                "invalid_client_message",
                "InjectAgentMessage behavior must be default, queue or interrupt.",
            )
            return
        if self._ready:
            self._inject_agent(message, behavior)
        else:
            self._queue_until_ready("agent", (message, behavior), raw)

    def _inject_agent(self, message: str, behavior: str = "default") -> None:
        """default: refused while the agent or the user holds the floor; queue: spoken when
        the live response ends; interrupt: the live response is cancelled and its audio item
        truncated to what the client received, then the message is spoken."""
        if behavior == "queue" and (self._active or self._deferred_armed or self._queued_agent):
            self._queued_agent.append(message)
            return
        if behavior == "default" and (self._active or self._user_speaking):
            reason = "agent is speaking" if self._active else "user is speaking"
            self._to_client(
                _dumps({"type": "InjectionRefused", "message": f"Injection refused: {reason}."})
            )
            return
        if behavior == "interrupt" and self._active:
            self._interrupt()
        self._speak_agent_message(message)

    def _speak_agent_message(self, message: str) -> None:
        self._to_upstream(_dumps(assistant_message_event(message)))
        self._to_client(_conversation_text("assistant", message))
        self._done_signals()
        if message.strip():
            self._agent_echoes.append(message.strip())

    def _done_signals(self) -> None:
        """The end of an agent turn outside any upstream response (greeting, agent message)."""
        if not self._dg:
            self._to_client(AGENT_DONE)
        self._to_client(AGENT_AUDIO_DONE)

    def _interrupt(self) -> None:
        """Cancel the live response; truncate its audio item at what the client was sent."""
        st = self._cur
        cancel: dict[str, Any] = {"type": "response.cancel"}
        if st.response_id:
            cancel["response_id"] = st.response_id
        self._to_upstream(_dumps(cancel))
        if st.audio_item_id is not None:
            self._to_upstream(
                _dumps(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": st.audio_item_id,
                        "content_index": 0,
                        "audio_end_ms": st.audio_bytes // self._out_bytes_per_ms,
                    }
                )
            )
        st.interrupted = True
        st.text_sent = True  # what was cut off is not reported as said
        if st.started_sent:
            self._agent_done(st, final=True)
        else:
            st.done_sent = True
        self._log("info", "response interrupted by InjectAgentMessage", response=st.response_id)

    def _flush_queued_agent(self) -> None:
        while self._queued_agent and not self._active:
            self._speak_agent_message(self._queued_agent.popleft())

    def _c_update_speak(self, msg: dict[str, Any], raw: str) -> None:
        self._error(
            "unsupported_client_message", "UpdateSpeak is not supported by the OpenAI translator"
        )

    def _c_function_call_response(self, msg: dict[str, Any], raw: str) -> None:
        self._to_upstream(_dumps(function_call_output_event(msg)))
        self._to_client(AGENT_THINKING)  # R9
        call_id = msg.get("id")
        if isinstance(call_id, str) and call_id:
            self._outstanding_calls.discard(call_id)
            self._answered_calls.add(call_id)
        if self._outstanding_calls:  # D25: wait for every requested call's output
            self._log(
                "debug",
                "function output sent; waiting for more",
                waiting=len(self._outstanding_calls),
            )
            return
        self._deferred_armed = True
        self._arm(TIMER_DEFERRED_CREATE, self.deferred_create_timeout)

    # --- client audio ----------------------------------------------------------------------

    def _c_audio(self, data: bytes) -> None:
        if self._forwarded and self._input_format.is_linear16 and len(data) % 2:
            self._error(
                "invalid_audio_frame", "Binary audio frame has an odd byte length; it was dropped."
            )
            return
        if not self._ready:  # R5
            self._audio_queue.append(data)
            self._audio_queue_bytes += len(data)
            return
        if self._append_audio(data):
            self._schedule_commit()

    def _append_audio(self, data: bytes) -> bool:
        """Append one client frame upstream (D3, D4); True when something was sent."""
        if self._input_format.is_linear16:
            if len(data) % 2:
                self._error(
                    "invalid_audio_frame",
                    "Binary audio frame has an odd byte length; it was dropped.",
                )
                return False
            resampler = self._in_resampler
            size = len(data) if resampler is None else resampler.output_size(len(data))
        else:
            resampler = None
            size = len(data)
        if size > MAX_APPEND_BYTES:
            self._error(
                "audio_frame_too_large",
                "Binary audio frame is too large for one append; it was dropped.",
            )
            return False
        pcm = data if resampler is None else resampler.push(data)
        if not pcm:
            return False
        self._to_upstream(_append_event(pcm))
        if not self._server_vad:
            self._pending_audio += len(pcm)
        return True

    # --- manual commit mode (R10) ----------------------------------------------------------

    def _commit_threshold(self) -> int:
        return MIN_COMMIT_BYTES if self._first_commit_done else MIN_FIRST_COMMIT_BYTES

    def _schedule_commit(self) -> None:
        if self._server_vad or self._pending_audio <= 0:
            return
        self._arm(TIMER_COMMIT_DEBOUNCE, COMMIT_DEBOUNCE_SECONDS)
        if (
            self._pending_audio >= self._commit_threshold()
            and not self._active
            and TIMER_COMMIT_COALESCE not in self._armed
        ):
            self._arm(TIMER_COMMIT_COALESCE, COMMIT_COALESCE_SECONDS)

    def _try_commit(self) -> None:
        if (
            self._server_vad
            or self._active
            or self._deferred_armed
            or self._pending_audio < self._commit_threshold()
            or not self._upstream_open
        ):
            return  # not re-armed: the next append, response end or close does that
        self._cancel(TIMER_COMMIT_DEBOUNCE)
        self._cancel(TIMER_COMMIT_COALESCE)
        self._log("info", "input_audio_buffer.commit + response.create", bytes=self._pending_audio)
        self._to_upstream(COMMIT)
        self._pending_audio = 0
        self._first_commit_done = True
        self._send_create("audio-commit")

    def _pad_pending_audio(self) -> None:
        """Top a sub-threshold tail up with silence to the current threshold (D26)."""
        missing = self._commit_threshold() - self._pending_audio
        if self._pending_audio > 0 and missing > 0:
            self._to_upstream(_append_event(silence(missing)))
            self._pending_audio += missing

    # --- responses (§6) --------------------------------------------------------------------

    def _send_create(self, reason: str) -> None:
        """One response.create covering every owed create (D18, D25); a response starts."""
        if not self._active:
            self._flush_held_updates()
        event_id = self._next_event_id("rc")
        self._to_upstream(_dumps({"type": "response.create", "event_id": event_id}))
        self._awaiting_created.append(event_id)
        self._our_creates.add(event_id)
        self._owed_create = False
        if self._deferred_armed:
            self._deferred_armed = False
            self._cancel(TIMER_DEFERRED_CREATE)
        self._log("debug", "response.create", reason=reason, event_id=event_id)
        self._response_started()

    def _response_started(self) -> None:
        self._active = True
        self._cur = _Response(turn_end=self._turn_end)
        self._turn_end = None

    def _response_ended(self, st: _Response) -> None:
        cur = self._cur
        if st is not cur and not cur.ended and not cur.phantom:
            # A late end of an earlier response (D22/D23): the current one goes on.
            st.ended = True
            self._when_idle()
            return
        st.ended = cur.ended = True
        self._active = False
        if not self._server_vad and self._ready:  # R10a
            self._pad_pending_audio()
            self._schedule_commit()
        self._when_idle()

    def _when_idle(self) -> None:
        """No response active: held session changes, queued agent messages (spoken after the
        turn they waited for), then the owed response.create."""
        if self._active:
            return
        self._flush_held_updates()
        if not self._deferred_armed:
            self._flush_queued_agent()
        if self._deferred_armed or self._owed_create:
            self._send_create("deferred" if self._deferred_armed else "inject")

    def _flush_held_updates(self) -> None:
        while self._held_updates:
            self._send_change(*self._held_updates.popleft())

    def _lookup(self, response_id: Any) -> _Response:
        """The per-response state an event belongs to (D23)."""
        if not isinstance(response_id, str) or not response_id:
            return self._cur
        st = self._responses.get(response_id)
        if st is not None:
            return st
        if self._cur.response_id is None and not self._cur.ended:
            st = self._cur
        else:  # a response we never saw start
            st = _Response()
            self._cur = st
        st.response_id = response_id
        self._responses.set(response_id, st)
        return st

    def _state_for(self, event: dict[str, Any]) -> _Response:
        response_id = event.get("response_id")
        item_id = event.get("item_id")
        if isinstance(item_id, str) and item_id and isinstance(response_id, str) and response_id:
            self._item_response.set(item_id, response_id)
        return self._lookup(response_id)

    def _agent_started(self, st: _Response) -> None:
        if not st.started_sent:
            st.started_sent = True
            if not self._dg:
                self._to_client(AGENT_STARTED)
                return
            # Deepgram's AgentStartedSpeaking carries the turn's latencies (0 when unknown).
            now = self._clock()
            total = _since(st.turn_end, now) or 0.0
            ttt = _since(st.turn_end, st.first_token or now) or 0.0
            self._to_client(
                _dumps(
                    {
                        "type": "AgentStartedSpeaking",
                        "total_latency": total,
                        "tts_latency": round(max(0.0, total - ttt), 3),
                        "ttt_latency": ttt,
                    }
                )
            )

    def _agent_done(self, st: _Response, final: bool = False) -> None:
        """The response's done signal(s), once. The Deepgram dialect sends AgentAudioDone only
        after the response's assistant text (or at the response's end, `final`)."""
        if st.done_sent:
            return
        if self._dg and not st.text_sent and not final:
            st.done_owed = True
            return
        st.done_sent = True
        st.done_owed = False
        if not self._dg:
            self._to_client(AGENT_DONE)
        self._to_client(AGENT_AUDIO_DONE)
        if self._dg:
            self._latency_report(st)

    def _latency_report(self, st: _Response) -> None:
        """One `LatencyReport` per user turn, with what the translator can time: user turn end
        (VAD speech stop, inject) -> transcript, first token of any kind, first text, first
        tool call, first audio byte. Fields it cannot measure are left out."""
        if st.reported or st.turn_end is None:
            return
        st.reported = True
        report: dict[str, Any] = {"type": "LatencyReport"}
        if self._stt_latency is not None:
            report["stt_latency"] = self._stt_latency
            self._stt_latency = None
        for key, at in (
            ("ttt_token_latency", st.first_token),
            ("ttt_text_latency", st.first_text),
            ("ttt_tool_latency", st.first_tool),
        ):
            if at is not None:
                report[key] = _since(st.turn_end, at)
        if st.first_audio is not None and st.first_text is not None:
            report["tts_latency"] = round(max(0.0, st.first_audio - st.first_text), 3)
        if st.first_audio is not None:
            report["total_latency"] = _since(st.turn_end, st.first_audio)
        self._to_client(_dumps(report))

    def _first(self, st: _Response, kind: str) -> None:
        """Time the response's first token of a kind ("text", "tool", "audio")."""
        attr = "first_" + kind
        if getattr(st, attr) is None:
            now = self._clock()
            setattr(st, attr, now)
            if st.first_token is None and kind != "audio":
                st.first_token = now

    def _assistant_text(self, st: _Response, content: str, item_ids: list[Any]) -> None:
        if st.first_text is None:
            self._first(st, "text")
        self._agent_started(st)  # D20
        self._to_client(_conversation_text("assistant", content))
        st.text_sent = True
        st.last_text = content.strip()
        for item_id in item_ids:
            if isinstance(item_id, str) and item_id:
                self._sent_item_ids.add(item_id)
        if st.done_owed:
            self._agent_done(st)

    def _flush_idle_error(self) -> None:
        if self._held_idle_error is not None:
            self._to_client(self._held_idle_error)
            self._held_idle_error = None

    # --- upstream frames -------------------------------------------------------------------

    def _on_upstream_message(self, data: str | bytes) -> None:
        if isinstance(data, bytearray | memoryview):
            data = bytes(data)
        try:
            event = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            self._log(
                "warning",
                "upstream frame is not JSON",
                length=len(data) if hasattr(data, "__len__") else 0,
            )
            self._error(
                "unmapped_upstream_event",
                "Proxy received upstream message that could not be parsed as JSON.",
            )
            return
        etype = event.get("type") if isinstance(event, dict) else None
        method = self.UPSTREAM_HANDLERS.get(etype) if isinstance(etype, str) else None
        if method is None:  # R22: unknown or future events never reach the client
            shown = etype[:100] if isinstance(etype, str) else "(missing type)"
            self._log("warning", "unmapped upstream event", type=shown, length=len(data))
            self._log("debug", "unmapped upstream event payload", payload=_payload_preview(data))
            return
        if etype not in self.QUIET_EVENTS:
            self._log("debug", "upstream event", type=etype)
        getattr(self, method)(event)

    def _up_ignore(self, event: dict[str, Any]) -> None:
        """Known event with no client-side meaning."""

    def _up_response_ignore(self, event: dict[str, Any]) -> None:
        self._state_for(event)  # remember item -> response for later dedupe

    def _up_output_item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        response_id = event.get("response_id")
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            if isinstance(response_id, str) and response_id:
                self._item_response.set(item["id"], response_id)
        self._lookup(response_id)

    def _up_session_created(self, event: dict[str, Any]) -> None:
        self._log("info", "session.created (waiting for session.updated)")  # R4

    def _up_session_updated(self, event: dict[str, Any]) -> None:
        kind = self._update_kinds.popleft()[1] if self._update_kinds else "settings"
        self._ready = True
        if kind in UPDATE_ANSWERS:
            self._to_client(_simple(UPDATE_ANSWERS[kind]))
        else:
            self._to_client(SETTINGS_APPLIED)
            for _ in range(self._owed_settings_applied):  # D9
                self._to_client(SETTINGS_APPLIED)
            self._owed_settings_applied = 0
            if self._greeting and not self._had_context:  # R17
                self._to_client(_conversation_text("assistant", self._greeting))
                self._done_signals()
            self._greeting = None
            self._had_context = False
        self._flush_ready_queues()

    def _flush_ready_queues(self) -> None:
        """R6 then R5: queued injects/prompts in arrival order, then queued audio."""
        while self._ready_queue:
            kind, text, size = self._ready_queue.popleft()
            self._ready_queue_bytes -= size
            if kind == "user":
                self._inject_user(text)
            elif kind == "agent":
                self._inject_agent(*text)
            else:
                self._session_change(kind, text)
        appended = False
        while self._audio_queue:
            data = self._audio_queue.popleft()
            self._audio_queue_bytes -= len(data)
            appended = self._append_audio(data) or appended
        if appended:
            self._schedule_commit()

    def _up_item(self, event: dict[str, Any], done: bool = False) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            return
        item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else None
        if done and item.get("type") == "function_call_output" and self._deferred_armed:
            self._when_idle()  # R8; waits for the end when a response is still active (D18)
        if (
            item.get("role") == "user"
            and item.get("type", "message") == "message"
            and item_id is not None
            and self._unbound_injects > 0
            and item_id not in self._bound_item_ids
            and _has_input_text(item)
        ):  # D17
            self._unbound_injects -= 1
            self._bound_item_ids.add(item_id)
            self._owed_create = True
            if not self._active and not self._deferred_armed:
                self._send_create("inject")
        if item.get("role") == "assistant":
            self._assistant_item(item, item_id)

    def _up_item_done(self, event: dict[str, Any]) -> None:
        self._up_item(event, done=True)

    def _assistant_item(self, item: dict[str, Any], item_id: str | None) -> None:
        text = assistant_text_from_item(item)
        if text is None or (item_id is not None and item_id in self._sent_item_ids):
            return
        if text in self._agent_echoes:  # echo of our InjectAgentMessage item (§2.4)
            self._agent_echoes.remove(text)
            if item_id is not None:
                self._sent_item_ids.add(item_id)
            return
        response_id = self._item_response.get(item_id) if item_id is not None else None
        st = self._lookup(response_id) if response_id else self._cur
        if st.text_sent or st.last_text == text:  # R15
            if item_id is not None:
                self._sent_item_ids.add(item_id)
            return
        self._assistant_text(st, text, [item_id])

    def _up_response_created(self, event: dict[str, Any]) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        if self._awaiting_created:
            self._awaiting_created.popleft()
        if not self._active and self._server_vad:  # R11
            self._response_started()
            self._lookup(response.get("id"))
        elif self._active:
            self._lookup(response.get("id"))

    def _up_text_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_text is None:
            self._first(st, "text")
        delta = text_delta(event)
        if delta and st.text_chars < MAX_TEXT_CHARS:
            st.text_parts.append(delta)
            st.text_chars += len(delta)

    def _up_transcript_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_text is None:
            self._first(st, "text")

    def _up_function_call_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_tool is None:
            self._first(st, "tool")

    def _up_text_done(self, event: dict[str, Any]) -> None:
        # voxgate order (D22-D24): started, text, done pair of the ending response, held
        # idle_timeout Error, then the end (which may send the deferred response.create).
        st = self._state_for(event)
        if st.interrupted:
            self._response_ended(st)
            return
        self._agent_started(st)
        text = output_text_from_done(event) or "".join(st.text_parts)
        st.text_parts.clear()
        st.text_chars = 0
        if text.strip() and not st.text_sent:
            self._assistant_text(st, text.strip(), [event.get("item_id")])
        if not st.audio_seen:
            self._agent_done(st, final=True)
        self._flush_idle_error()
        self._response_ended(st)

    def _up_audio_transcript_done(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        transcript = event.get("transcript")
        if isinstance(transcript, str) and transcript.strip() and not st.text_sent:
            self._assistant_text(st, transcript, [event.get("item_id")])

    def _up_audio_delta(self, event: dict[str, Any]) -> None:
        delta = event.get("delta")
        if not isinstance(delta, str) or not delta:
            return
        try:
            # = base64.b64decode(delta) without its wrapper: the same non-strict decoding, and a
            # non-ASCII str raises ValueError there as here.
            pcm = binascii.a2b_base64(delta)
        except (binascii.Error, ValueError):
            self._log("warning", "upstream audio delta is not base64", length=len(delta))
            return
        if not pcm:
            return
        st = self._state_for(event)
        if st.interrupted:
            return  # cancelled by an interrupt: the client must not hear the rest
        if st.first_audio is None:
            self._first(st, "audio")
        item_id = event.get("item_id")
        if isinstance(item_id, str) and item_id:
            if item_id != st.audio_item_id:
                st.audio_item_id, st.audio_bytes = item_id, 0
            st.audio_bytes += len(pcm)
        st.audio_seen = True
        self._agent_started(st)
        if self._out_resampler is not None:
            if self._out_carry or len(pcm) & 1:
                data = self._out_carry + pcm
                cut = len(data) & ~1
                self._out_carry = data[cut:]
                pcm = data[:cut]
            pcm = self._out_resampler.push(pcm)
        if pcm:
            self._to_client(pcm)

    def _up_audio_done(self, event: dict[str, Any]) -> None:
        self._agent_done(self._state_for(event))  # R12: does not end the response

    def _up_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        if self.on_usage is not None:
            self.on_usage(response.get("usage"))
        st = self._lookup(response.get("id"))
        output_text, item_ids = assistant_text_from_response(response)
        text = "".join(st.text_parts)
        if not text.strip():
            text = output_text or ""
        st.text_parts.clear()
        st.text_chars = 0
        if text.strip() and not st.text_sent:
            self._assistant_text(st, text.strip(), item_ids)
        else:
            for item_id in item_ids:
                self._sent_item_ids.add(item_id)
        self._agent_done(st, final=True)
        if response.get("status") == "cancelled":
            self._cancel_calls(response.get("id"))
        self._flush_idle_error()  # D24
        self._response_ended(st)

    def _cancel_calls(self, response_id: Any) -> None:
        """A cancelled response takes its requested calls with it: `FunctionCallCancelled` for
        those still unanswered, and they no longer hold back the deferred create (D25)."""
        gone = []
        for call_id in sorted(self._outstanding_calls):
            name, owner = self._announced_calls.get(call_id, ("function", None))
            if owner is None or not response_id or owner == response_id:
                gone.append({"id": call_id, "name": name})
        if not gone:
            return
        for call in gone:
            self._outstanding_calls.discard(call["id"])
            self._answered_calls.add(call["id"])
        self._to_client(_dumps({"type": "FunctionCallCancelled", "functions": gone}))
        self._log("info", "function calls cancelled with their response", calls=len(gone))

    def _up_function_call(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_tool is None:
            self._first(st, "tool")
        call_id = event.get("call_id")
        if isinstance(call_id, str) and call_id:
            if call_id in self._announced_calls:
                self._log("debug", "duplicate function call announcement ignored")
                return
            name = event.get("name") if isinstance(event.get("name"), str) else None
            owner = event.get("response_id")
            self._announced_calls.set(
                call_id, (name or "function", owner if isinstance(owner, str) else None)
            )
            if call_id not in self._answered_calls:
                self._outstanding_calls.add(call_id)
                if self._deferred_armed:  # D25: a call announced later re-blocks the create
                    self._deferred_armed = False
                    self._cancel(TIMER_DEFERRED_CREATE)
        self._agent_started(st)
        self._to_client(_dumps(function_call_request(event)))

    def _up_speech_started(self, event: dict[str, Any]) -> None:
        self._user_speaking = True
        self._to_client(USER_STARTED)  # D32: the client's cue to stop playback

    def _up_speech_stopped(self, event: dict[str, Any]) -> None:
        self._user_speaking = False
        self._turn_end = self._speech_stopped_at = self._clock()
        self._stt_latency = None  # a late transcript of an earlier turn is not this turn's
        if not self._dg:  # Deepgram's agent API has no UtteranceEnd
            self._to_client(_dumps(utterance_end(event)))

    def _up_transcription_delta(self, event: dict[str, Any]) -> None:
        if self._dg:  # the agent API reports only the final user text
            return
        item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else ""
        delta = event.get("delta") if isinstance(event.get("delta"), str) else ""
        text = self._transcripts.get(item_id, "")
        if len(text) < MAX_TEXT_CHARS:
            text += delta
        self._transcripts.set(item_id, text)
        self._to_client(_dumps(transcript_interim(event, text)))

    def _up_transcription_completed(self, event: dict[str, Any]) -> None:
        if self._speech_stopped_at is not None:
            self._stt_latency = _since(self._speech_stopped_at, self._clock())
            self._speech_stopped_at = None
        if not self._dg:
            item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else ""
            self._transcripts.pop(item_id)
            self._to_client(_dumps(transcript_final(event)))
            return
        transcript = event.get("transcript")
        if isinstance(transcript, str) and transcript.strip():
            self._to_client(_conversation_text("user", transcript.strip()))

    def _up_error(self, event: dict[str, Any]) -> None:
        err = event.get("error") if isinstance(event.get("error"), dict) else {}
        message = upstream_error(event)
        code = message["code"]
        event_id = err.get("event_id")
        if code == ACTIVE_RESPONSE_ERROR:  # R21: never forwarded
            self._log("info", "upstream reports an active response", event_id=str(event_id)[:64])
            self._requeue_create(event_id)
            return
        if code == CANCEL_NOT_ACTIVE_ERROR:  # our interrupt's cancel arrived after the end
            self._log("info", "response.cancel found no active response")
            return
        if isinstance(event_id, str):
            for entry in self._update_kinds:
                if entry[0] == event_id:  # that session.update will get no session.updated
                    self._update_kinds.remove(entry)
                    break
        level = "info" if code in EXPECTED_CLOSURE_ERRORS else "error"
        self._log(level, "upstream error", code=code[:64])
        frame = self._error_frame(code, message["description"])
        if code == "idle_timeout" and self._active:  # R16
            self._flush_idle_error()
            self._held_idle_error = frame
        else:
            self._to_client(frame)

    def _requeue_create(self, event_id: Any) -> None:
        """D19: the upstream refused one of our creates; send it again after the active one."""
        if isinstance(event_id, str) and event_id:
            if event_id not in self._our_creates:
                return
            target = event_id
        elif self._awaiting_created:
            target = self._awaiting_created[-1]
        else:
            return
        self._our_creates.pop(target)
        if target in self._awaiting_created:
            self._awaiting_created.remove(target)
        self._owed_create = True
        self._active = True
        self._cur.phantom = True


def _since(start: float | None, end: float) -> float | None:
    """Seconds from `start` to `end`, rounded to the millisecond, never negative."""
    if start is None:
        return None
    return round(max(0.0, end - start), 3)


def _has_input_text(item: dict[str, Any]) -> bool:
    content = item.get("content")
    parts = content if isinstance(content, list) else [content]
    return any(isinstance(p, dict) and p.get("type") == "input_text" for p in parts)


def _payload_preview(data: str | bytes) -> str:
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    return text[:4096]
