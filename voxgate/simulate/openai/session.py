"""The sans-IO simulated Realtime session: one connection's protocol state.

Feed client frames with ``receive(message, now)``; take server frames with
``next_output(now)``. Dispatch, the outbox (ordering, ``reply_delay``, ``delay_updated``),
conversation item events, input audio with energy-based server VAD, the idle timeout, and
the life of a response (start, cancel, ``response.done``) live here; what a response says
and streams comes from ``model`` and ``responses``.

Server VAD: a 20 ms window whose RMS exceeds ``threshold * 0.05`` (full scale 1.0) is speech;
``silence_duration_ms`` of quiet windows ends the turn; the committed item's transcript is
``audio of <speech seconds, 1 decimal> seconds``. Only ``audio/pcm`` input goes through VAD.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import orjson

from voxgate.simulate.driver import Close, Drop
from voxgate.simulate.faults import Fault
from voxgate.simulate.openai.items import (
    find_item,
    insert_item,
    item_index,
    normalise_item,
    truncate_item,
    user_audio_item,
)
from voxgate.simulate.openai.model import choose_tool, reply_text, transcription_events
from voxgate.simulate.openai.outbox import Outbox, Queued
from voxgate.simulate.openai.protocol import (
    Invalid,
    base64_audio,
    check_keys,
    expect_object,
    invalid_value,
    missing,
    new_id,
    server_event,
)
from voxgate.simulate.openai.responses import (
    RESPONSE_KEYS,
    Response,
    output_item,
    queue_audio,
    queue_call,
    queue_text,
    rate_limits_event,
    response_object,
    response_options,
    usage,
)
from voxgate.simulate.openai.session_config import (
    DEFAULT_MODEL,
    apply_session_update,
    bytes_per_ms,
    default_session,
)
from voxgate.simulate.openai.vad import VAD_WINDOW_MS, ServerVad
from voxgate.workers.openai.turn_detection import SERVER_VAD

__all__ = ["GARBAGE_FRAME", "RealtimeSession"]

GARBAGE_FRAME = "this is not JSON {"
MIN_COMMIT_MS = 100

CLIENT_EVENT_TYPES = (
    "session.update",
    "session.close",
    "input_audio_buffer.append",
    "session.input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "response.create",
    "response.cancel",
)


class RealtimeSession:
    """Protocol state of one simulated Realtime connection.

    Feed client frames with ``receive(message, now)``; take server frames with
    ``next_output(now)`` (a JSON string, ``Close``/``Drop``, a wake-up time, or ``None``).
    ``now`` is any monotonic clock in seconds (the socket loop passes trio's); it drives
    ``reply_delay``, ``delay_updated`` and the VAD idle timeout.
    """

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        fault: Fault | None = None,
        reply_delay: float = 0.0,
        expires_at: int | None = None,
        audio_pace: float = 0.0,
    ) -> None:
        self.fault = fault
        self.reply_delay = reply_delay
        self.audio_pace = audio_pace  # seconds between reply audio chunks (0: all at once)
        self.session = default_session(
            model, expires_at=expires_at if expires_at is not None else int(time.time()) + 3600
        )
        self.conversation_id = new_id("conv")
        self.items: list[dict[str, Any]] = []
        self.wakeup: Callable[[], None] | None = None
        self._outbox = Outbox()
        self._active: Response | None = None
        self._assistant_audio_sent = False
        self._transcripts: dict[str, str] = {}
        self._item_audio_ms: dict[str, int] = {}  # assistant item -> ms of audio generated
        self._buffer = bytearray()
        self._audio_ms = 0.0  # audio clock: ms of input audio appended this session
        self._vad = ServerVad()
        self._idle_deadline: float | None = None
        self._idle_start_ms = 0.0
        self._tokens_remaining = 40_000
        self._closed = False

        self._outbox.push(server_event("session.created", session=self.session))
        kind = fault.kind if fault else None
        if kind == "close":
            self._outbox.push_raw(
                Close(fault.arg if fault and fault.arg is not None else 1000, "simulated close")
            )
        elif kind == "drop":
            self._outbox.clear()  # accept, then drop: not even session.created
            self._outbox.push_raw(Drop())
        elif kind == "garbage":
            self._outbox.push_raw(GARBAGE_FRAME)

    # -- public sans-IO interface --------------------------------------------------------

    def receive(self, message: str | bytes, now: float) -> None:
        if self._closed:
            return
        if isinstance(message, bytes):
            self._error(
                "invalid_event",
                "Expected a text WebSocket message; binary frames are not supported.",
            )
            return
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError:
            self._error("invalid_json", "Invalid event: failed to parse JSON value.")
            return
        client_event_id = event.get("event_id") if isinstance(event, dict) else None
        if not isinstance(client_event_id, str):
            client_event_id = None
        try:
            self._dispatch(event, now)
        except Invalid as exc:
            self._error(exc.code, exc.message, exc.param, client_event_id)

    def next_output(self, now: float) -> str | Close | Drop | float | None:
        if self._idle_deadline is not None and now >= self._idle_deadline:
            self._idle_timeout(now)
        out = self._outbox.pop_due(now)
        if isinstance(out, Queued):
            return self._sent(out, now)
        if out is not None:
            return out if self._idle_deadline is None else min(out, self._idle_deadline)
        return self._idle_deadline

    def _sent(self, out: Queued, now: float) -> str | Close | Drop:
        if out.on_send is not None:
            out.on_send(now)
        if isinstance(out.payload, Close | Drop):
            self._closed = True
            self._outbox.clear()
        return out.payload

    def push(self, event: dict[str, Any] | str) -> None:
        """Queue an arbitrary server frame (tests script upstream behaviour with this);
        a dict without ``event_id`` gets one."""
        if isinstance(event, dict) and "event_id" not in event:
            event = {"type": event.get("type"), "event_id": new_id("event"), **event}
        self._outbox.push_raw(event if isinstance(event, str) else orjson.dumps(event).decode())
        if self.wakeup is not None:
            self.wakeup()

    def refuse(self, code: str, message: str, close: Close) -> None:
        """Replace everything queued with one ``error`` and ``close`` (a connection the
        service refuses right after the upgrade)."""
        self._outbox.clear()
        self._error(code, message)
        self._outbox.push_raw(close)

    @property
    def response_active(self) -> bool:
        """True from ``response.create`` until its ``response.done`` is sent or a
        cancellation of it is queued."""
        return self._active is not None and not self._active.finished

    # -- output plumbing -----------------------------------------------------------------

    def _error(
        self,
        code: str | None,
        message: str,
        param: str | None = None,
        client_event_id: str | None = None,
    ) -> None:
        self._outbox.push(
            server_event(
                "error",
                error={
                    "type": "invalid_request_error",
                    "code": code,
                    "message": message,
                    "param": param,
                    "event_id": client_event_id,
                },
            )
        )

    # -- dispatch ------------------------------------------------------------------------

    def _dispatch(self, event: Any, now: float) -> None:
        if not isinstance(event, dict):
            raise Invalid("invalid_type", "Invalid type for event: expected an object.")
        kind = event.get("type")
        if kind is None:
            raise missing("type")
        if kind not in CLIENT_EVENT_TYPES:
            raise invalid_value(kind, "type", CLIENT_EVENT_TYPES)
        handler = {
            "session.update": self._on_session_update,
            "session.close": self._on_session_close,
            "input_audio_buffer.append": self._on_append,
            "session.input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "conversation.item.create": self._on_item_create,
            "conversation.item.truncate": self._on_item_truncate,
            "conversation.item.delete": self._on_item_delete,
            "conversation.item.retrieve": self._on_item_retrieve,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
        }[kind]
        handler(event, now)

    def _on_session_update(self, event: dict[str, Any], now: float) -> None:
        self.session = apply_session_update(
            self.session, event.get("session"), has_assistant_audio=self._assistant_audio_sent
        )
        fault = self.fault
        delay = (fault.arg or 0) / 1000 if fault and fault.kind == "delay_updated" else 0.0
        self._outbox.push(server_event("session.updated", session=self.session), delay=delay)
        if fault and fault.kind == "close_after_update":
            self._outbox.push_raw(Close(fault.arg if fault.arg is not None else 1000, "simulated close"))
        elif fault and fault.kind == "drop_after_update":
            self._outbox.push_raw(Drop())
        if not self.response_active and not self._vad.speaking:
            self._arm_idle(now)

    def _on_session_close(self, event: dict[str, Any], now: float) -> None:
        self._outbox.push_raw(Close(1000, "session closed"))

    # -- conversation items --------------------------------------------------------------

    def _on_item_create(self, event: dict[str, Any], now: float) -> None:
        item = normalise_item(event.get("item"))
        if item["id"] is not None and find_item(self.items, item["id"]) is not None:
            raise Invalid(
                "item_id_already_exists", f"Item with id '{item['id']}' already exists.", "item.id"
            )
        if item["id"] is None:
            item["id"] = new_id("item")
        prev = insert_item(self.items, item, event.get("previous_item_id"))
        self._outbox.push(server_event("conversation.item.added", previous_item_id=prev, item=item))
        self._outbox.push(server_event("conversation.item.done", previous_item_id=prev, item=item))

    def _on_item_delete(self, event: dict[str, Any], now: float) -> None:
        index = item_index(self.items, event.get("item_id"), "item_id")
        del self.items[index]
        self._outbox.push(server_event("conversation.item.deleted", item_id=event["item_id"]))

    def _on_item_retrieve(self, event: dict[str, Any], now: float) -> None:
        index = item_index(self.items, event.get("item_id"), "item_id")
        self._outbox.push(server_event("conversation.item.retrieved", item=self.items[index]))

    def _on_item_truncate(self, event: dict[str, Any], now: float) -> None:
        index = item_index(self.items, event.get("item_id"), "item_id")
        item = self.items[index]
        content_index = event.get("content_index", 0)
        audio_end_ms = event.get("audio_end_ms", 0)
        truncate_item(item, audio_end_ms, self._item_audio_ms.get(item["id"], 0))
        self._outbox.push(
            server_event(
                "conversation.item.truncated",
                item_id=item["id"],
                content_index=content_index,
                audio_end_ms=audio_end_ms,
            )
        )

    # -- input audio and VAD -------------------------------------------------------------

    def _input_format(self) -> dict[str, Any]:
        return self.session["audio"]["input"]["format"]

    def _turn_detection(self) -> dict[str, Any] | None:
        return self.session["audio"]["input"]["turn_detection"]

    def _on_append(self, event: dict[str, Any], now: float) -> None:
        data = base64_audio(event.get("audio"))
        fmt = self._input_format()
        td = self._turn_detection()
        if td is None or fmt["type"] != "audio/pcm":
            self._buffer += data
            self._audio_ms += len(data) / bytes_per_ms(fmt)
            return
        for chunk in self._vad.windows(data):
            self._vad_window(chunk, td, now)

    def _vad_window(self, chunk: bytes, td: dict[str, Any], now: float) -> None:
        start = self._audio_ms
        self._buffer += chunk
        self._audio_ms += VAD_WINDOW_MS
        change = self._vad.step(chunk, start, self._audio_ms, td)
        vad = self._vad
        if change == "started":
            self._idle_deadline = None
            padding = td.get("prefix_padding_ms", SERVER_VAD["prefix_padding_ms"])
            self._outbox.push(
                server_event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=int(max(0.0, start - padding)),
                    item_id=vad.item_id,
                )
            )
            if self.response_active and td.get("interrupt_response", True):
                self._cancel_response("turn_detected")
        elif change == "stopped":
            self._outbox.push(
                server_event(
                    "input_audio_buffer.speech_stopped", audio_end_ms=int(self._audio_ms), item_id=vad.item_id
                )
            )
            self._commit(vad.item_id, f"audio of {vad.heard_seconds:.1f} seconds")
            if td.get("create_response", True) and not self.response_active:
                self._start_response(None, None, now)

    def _commit(self, item_id: str, transcript: str | None) -> None:
        """Turn the buffered audio into a user item (transcript None: nothing was said)."""
        self._buffer.clear()
        item = user_audio_item(item_id)
        prev = insert_item(self.items, item)
        self._outbox.push(
            server_event("input_audio_buffer.committed", previous_item_id=prev, item_id=item_id)
        )
        self._outbox.push(server_event("conversation.item.added", previous_item_id=prev, item=item))
        self._outbox.push(server_event("conversation.item.done", previous_item_id=prev, item=item))
        if transcript is None:
            return
        self._transcripts[item_id] = transcript
        if self.session["audio"]["input"]["transcription"] is None:
            return
        for event in transcription_events(item_id, transcript):
            self._outbox.push(event)
        item["content"][0]["transcript"] = transcript

    def _on_commit(self, event: dict[str, Any], now: float) -> None:
        vad = self._vad
        self._buffer += vad.carry
        vad.carry.clear()
        ms = len(self._buffer) / bytes_per_ms(self._input_format())
        if ms < MIN_COMMIT_MS:
            raise Invalid(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has {ms:.2f}ms of audio.",
            )
        item_id = vad.item_id if vad.speaking else new_id("item")
        vad.speaking = False
        self._commit(item_id, f"audio of {ms / 1000:.1f} seconds")

    def _on_clear(self, event: dict[str, Any], now: float) -> None:
        self._buffer.clear()
        self._vad = ServerVad()
        self._outbox.push(server_event("input_audio_buffer.cleared"))
        if not self.response_active:
            self._arm_idle(now)  # a cleared turn counts as silence from here

    def _arm_idle(self, now: float) -> None:
        td = self._turn_detection()
        idle = td.get("idle_timeout_ms") if td and td["type"] == "server_vad" else None
        if idle:
            self._idle_deadline = now + idle / 1000
            self._idle_start_ms = self._audio_ms
        else:
            self._idle_deadline = None

    def _idle_timeout(self, now: float) -> None:
        """``idle_timeout_ms`` passed with no speech: commit what was heard and respond."""
        self._idle_deadline = None
        if self.response_active or self._vad.speaking:
            return
        item_id = new_id("item")
        self._buffer += self._vad.carry
        self._vad.carry.clear()
        self._outbox.push(
            server_event(
                "input_audio_buffer.timeout_triggered",
                audio_start_ms=int(self._idle_start_ms),
                audio_end_ms=int(self._audio_ms),
                item_id=item_id,
            )
        )
        self._commit(item_id, None)
        td = self._turn_detection()
        if td is None or td.get("create_response", True):
            self._start_response(None, None, now)

    # -- responses -----------------------------------------------------------------------

    def _on_response_create(self, event: dict[str, Any], now: float) -> None:
        params = event.get("response")
        if params is not None:
            params = expect_object(params, "response")
            check_keys(params, RESPONSE_KEYS, "response")
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        self._start_response(params, client_event_id, now)

    def _on_response_cancel(self, event: dict[str, Any], now: float) -> None:
        wanted = event.get("response_id")
        if not self.response_active or (wanted is not None and wanted != self._active.id):
            raise Invalid(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        self._cancel_response("client_cancelled")

    def _start_response(
        self, params: dict[str, Any] | None, client_event_id: str | None, now: float
    ) -> None:
        if self.response_active:
            assert self._active is not None
            self._error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self._active.id}. Wait until the response is finished before creating a "
                "new one.",
                None,
                client_event_id,
            )
            return
        params = params or {}
        modalities, tools, tool_choice, max_tokens = response_options(params, self.session)
        source = self._response_input(params)
        call = choose_tool(source, tools, tool_choice, self._transcripts)
        text = reply_text(source, self._transcripts)  # before the reply itself joins the conversation
        resp = Response(
            id=new_id("resp"),
            modalities=modalities,
            out_of_band=params.get("conversation") == "none",
            metadata=params.get("metadata"),
            max_output_tokens=max_tokens,
            item=output_item(new_id("item"), call),
        )
        self._active = resp
        self._idle_deadline = None
        self._outbox.push(server_event("response.created", response=response_object(resp, self.session, self.conversation_id, "in_progress")))
        prev = None if resp.out_of_band else insert_item(self.items, resp.item)
        self._queue_output(resp, prev, call, text)
        self._finish_events(resp, "completed", None, [resp.item])

    def _response_input(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The items a response answers: the conversation, or ``response.input``."""
        if not isinstance(params.get("input"), list):
            return self.items
        return [
            normalise_item(i) if i.get("type") != "item_reference" else self._ref(i)
            for i in params["input"]
            if isinstance(i, dict)
        ]

    def _ref(self, ref: dict[str, Any]) -> dict[str, Any]:
        return self.items[item_index(self.items, ref.get("id"), "response.input")]

    def _queue_output(
        self, resp: Response, prev: str | None, call: tuple[str, str] | None, text: str
    ) -> None:
        """Queue the response's output item from ``output_item.added`` to ``output_item.done``."""
        item = resp.item

        def added(now: float) -> None:
            resp.item_added_sent = True

        def tag(
            event: dict[str, Any],
            *,
            delay: float = 0.0,
            on_send: Callable[[float], None] | None = None,
        ) -> None:
            self._outbox.push(event, delay=delay, response_id=resp.id, on_send=on_send)

        tag(
            server_event("response.output_item.added", response_id=resp.id, output_index=0, item=item),
            delay=self.reply_delay,
            on_send=added,
        )
        if not resp.out_of_band:
            tag(server_event("conversation.item.added", previous_item_id=prev, item=item))
        ids = {"response_id": resp.id, "item_id": item["id"], "output_index": 0}
        if call is not None:
            queue_call(tag, ids, item, call)
        elif resp.modalities == ["audio"]:
            fmt = self.session["audio"]["output"]["format"]
            self._item_audio_ms[item["id"]] = queue_audio(
                tag, {**ids, "content_index": 0}, item, text, fmt,
                pace=self.audio_pace, on_audio=self._mark_audio_sent,
            )
        else:
            queue_text(tag, {**ids, "content_index": 0}, item, text)
        item["status"] = "completed"
        if not resp.out_of_band:
            tag(server_event("conversation.item.done", previous_item_id=prev, item=item))
        tag(server_event("response.output_item.done", response_id=resp.id, output_index=0, item=item))

    def _finish_events(
        self,
        resp: Response,
        status: str,
        details: dict[str, Any] | None,
        output: list[dict[str, Any]],
    ) -> None:
        counts = usage(self.items, output)

        def done(now: float) -> None:
            resp.finished = True
            if self._active is resp:
                self._active = None
                if not self._vad.speaking:
                    self._arm_idle(now)

        self._outbox.push(
            server_event(
                "response.done",
                response=response_object(resp, self.session, self.conversation_id, status, details, output, counts),
            ),
            response_id=resp.id,
            on_send=done,
        )
        self._tokens_remaining -= counts["total_tokens"]
        self._outbox.push(rate_limits_event(self._tokens_remaining), response_id=resp.id)

    def _cancel_response(self, reason: str) -> None:
        resp = self._active
        if resp is None or resp.finished:
            return
        self._outbox.drop_response(resp.id)
        output: list[dict[str, Any]] = []
        if resp.item_added_sent:
            item = copy.deepcopy(resp.item)
            item["status"] = "incomplete"
            output = [item]
            self._outbox.push(
                server_event(
                    "response.output_item.done", response_id=resp.id, output_index=0, item=item
                )
            )
            if not resp.out_of_band:
                self._outbox.push(server_event("conversation.item.done", item=item))
        elif not resp.out_of_band:
            index = find_item(self.items, resp.item["id"])
            if index is not None:
                del self.items[index]
        self._finish_events(resp, "cancelled", {"type": "cancelled", "reason": reason}, output)
        resp.finished = True

    def _mark_audio_sent(self, now: float) -> None:
        self._assistant_audio_sent = True
