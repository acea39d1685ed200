"""Responses of the translator (openai-translator §6): when a `response.create` goes out, the
per-response once-only signals (R12-R15, D20-D24), assistant text and its dedupe, output audio,
function calls and the deferred create after their results (R8, R9, D25), interrupts, and the
latencies a Deepgram-dialect client is told.

`Responses` sends through the shared `Outbox` and calls back into the coordinator at two
points only: `before_create` (held session changes go first) and `idle` (a response ended or
a function result was stored; the coordinator decides what the quiet moment is used for).
"""

from __future__ import annotations

import binascii
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from voxgate.workers.openai.actions import (
    TIMER_DEFERRED_CREATE,
    Outbox,
    conversation_text,
    dumps,
    simple,
)
from voxgate.workers.openai.audio_flow import OutputAudio
from voxgate.workers.openai.bounded import Bounded
from voxgate.workers.openai.function_calls import FunctionCalls
from voxgate.workers.openai.settings_map import function_call_output_event
from voxgate.workers.openai.upstream_map import (
    assistant_text_from_item,
    assistant_text_from_response,
    function_call_request,
    output_text_from_done,
    text_delta,
)

__all__ = ["ResponseState", "Responses", "MAX_TEXT_CHARS", "since"]

MAX_TEXT_CHARS = 1 << 20  # cap on accumulated text per response / transcript per item
AGENT_STARTED = simple("AgentStartedSpeaking")
AGENT_DONE = simple("AgentDone")
AGENT_AUDIO_DONE = simple("AgentAudioDone")
AGENT_THINKING = dumps({"type": "AgentThinking", "content": ""})


def since(start: float | None, end: float) -> float | None:
    """Seconds from `start` to `end`, rounded to the millisecond, never negative."""
    if start is None:
        return None
    return round(max(0.0, end - start), 3)


def _has_input_text(item: dict[str, Any]) -> bool:
    content = item.get("content")
    parts = content if isinstance(content, list) else [content]
    return any(isinstance(p, dict) and p.get("type") == "input_text" for p in parts)


@dataclass(slots=True)
class ResponseState:
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


class Responses:
    """The response lifecycle and everything keyed by a response, item or call id."""

    def __init__(
        self,
        outbox: Outbox,
        output: OutputAudio,
        *,
        clock: Callable[[], float],
        deferred_create_timeout: float,
        before_create: Callable[[], None],
        idle: Callable[[bool], None],
    ) -> None:
        self._outbox = outbox
        self._output = output
        self._clock = clock  # latency measurements only; ordering never depends on it
        self._deferred_create_timeout = deferred_create_timeout
        self._before_create = before_create
        self._idle = idle
        self.on_usage: Callable[[Any], None] | None = None  # each response.done's `usage`
        self.calls = FunctionCalls()

        self.active = False
        self.deferred_armed = False  # R8
        self.owed_create = False  # D18
        self._cur = ResponseState()
        self._by_id = Bounded(32)  # response id -> ResponseState
        self._item_response = Bounded(512)  # item id -> response id
        self._sent_item_ids = Bounded(1024)  # items that already produced assistant text
        self._unbound_injects = 0  # D17
        self._bound_item_ids = Bounded(512)
        self._awaiting_created: deque[str] = deque(maxlen=16)  # D19
        self._our_creates = Bounded(64)
        self._held_idle_error: str | None = None  # R16
        self._agent_echoes: deque[str] = deque(maxlen=16)

        # the user turn a response answers (latencies)
        self.turn_end: float | None = None  # latest user turn end (speech stop, inject)
        self._speech_stopped_at: float | None = None
        self._stt_latency: float | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def send_create(self, reason: str) -> None:
        """One response.create covering every owed create (D18, D25); a response starts."""
        if not self.active:
            self._before_create()
        event_id = self._outbox.next_event_id("rc")
        self._outbox.to_upstream(dumps({"type": "response.create", "event_id": event_id}))
        self._awaiting_created.append(event_id)
        self._our_creates.add(event_id)
        self.owed_create = False
        self._disarm_deferred()
        self._outbox.log("debug", "response.create", reason=reason, event_id=event_id)
        self._started()

    def _disarm_deferred(self) -> None:
        if self.deferred_armed:
            self.deferred_armed = False
            self._outbox.cancel(TIMER_DEFERRED_CREATE)

    def _started(self) -> None:
        self.active = True
        self._cur = ResponseState(turn_end=self.turn_end)
        self.turn_end = None

    def _ended(self, st: ResponseState) -> None:
        cur = self._cur
        if st is not cur and not cur.ended and not cur.phantom:
            # A late end of an earlier response (D22/D23): the current one goes on.
            st.ended = True
            self._idle(False)
            return
        st.ended = cur.ended = True
        self.active = False
        self._idle(True)

    def deferred_expired(self) -> None:
        """The deferred-create timer fired before the upstream said the results were stored."""
        if not self.deferred_armed:
            return
        self._outbox.log(
            "error",
            "Required upstream contract violated: no response.done, response.output_text.done"
            " or function_call_output item.done after function_call_output; sending"
            " response.create anyway",
            seconds=self._deferred_create_timeout,
        )
        self.send_create("deferred-timeout")

    def requeue_create(self, event_id: Any) -> None:
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
        self.owed_create = True
        self.active = True
        self._cur.phantom = True

    def _lookup(self, response_id: Any) -> ResponseState:
        """The per-response state an event belongs to (D23)."""
        if not isinstance(response_id, str) or not response_id:
            return self._cur
        st = self._by_id.get(response_id)
        if st is not None:
            return st
        if self._cur.response_id is None and not self._cur.ended:
            st = self._cur
        else:  # a response we never saw start
            st = ResponseState()
            self._cur = st
        st.response_id = response_id
        self._by_id.set(response_id, st)
        return st

    def _state_for(self, event: dict[str, Any]) -> ResponseState:
        response_id = event.get("response_id")
        item_id = event.get("item_id")
        if isinstance(item_id, str) and item_id and isinstance(response_id, str) and response_id:
            self._item_response.set(item_id, response_id)
        return self._lookup(response_id)

    # --- user turns (latency bookkeeping) --------------------------------------------------

    def user_turn_spoken(self) -> None:
        """VAD saw the user stop: the turn ends now; STT latency is timed from here."""
        self.turn_end = self._speech_stopped_at = self._clock()
        self._stt_latency = None  # a late transcript of an earlier turn is not this turn's

    def user_turn_typed(self) -> None:
        """An injected user message ends a turn that has no speech-to-text."""
        self.turn_end = self._clock()
        self._stt_latency = self._speech_stopped_at = None

    def transcript_arrived(self) -> None:
        if self._speech_stopped_at is not None:
            self._stt_latency = since(self._speech_stopped_at, self._clock())
            self._speech_stopped_at = None

    def user_message_sent(self) -> None:
        """An injected user message will become an item that owes a response.create (D17)."""
        self._unbound_injects += 1

    # --- client-visible signals ------------------------------------------------------------

    def done_signals(self) -> None:
        """The end of an agent turn outside any upstream response (greeting, agent message)."""
        if not self._outbox.deepgram:
            self._outbox.to_client(AGENT_DONE)
        self._outbox.to_client(AGENT_AUDIO_DONE)

    def _agent_started(self, st: ResponseState) -> None:
        if st.started_sent:
            return
        st.started_sent = True
        if not self._outbox.deepgram:
            self._outbox.to_client(AGENT_STARTED)
            return
        # Deepgram's AgentStartedSpeaking carries the turn's latencies (0 when unknown).
        now = self._clock()
        total = since(st.turn_end, now) or 0.0
        ttt = since(st.turn_end, st.first_token or now) or 0.0
        self._outbox.to_client(
            dumps(
                {
                    "type": "AgentStartedSpeaking",
                    "total_latency": total,
                    "tts_latency": round(max(0.0, total - ttt), 3),
                    "ttt_latency": ttt,
                }
            )
        )

    def _agent_done(self, st: ResponseState, final: bool = False) -> None:
        """The response's done signal(s), once. The Deepgram dialect sends AgentAudioDone only
        after the response's assistant text (or at the response's end, `final`)."""
        if st.done_sent:
            return
        dg = self._outbox.deepgram
        if dg and not st.text_sent and not final:
            st.done_owed = True
            return
        st.done_sent = True
        st.done_owed = False
        if not dg:
            self._outbox.to_client(AGENT_DONE)
        self._outbox.to_client(AGENT_AUDIO_DONE)
        if dg:
            self._latency_report(st)

    def _latency_report(self, st: ResponseState) -> None:
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
                report[key] = since(st.turn_end, at)
        if st.first_audio is not None and st.first_text is not None:
            report["tts_latency"] = round(max(0.0, st.first_audio - st.first_text), 3)
        if st.first_audio is not None:
            report["total_latency"] = since(st.turn_end, st.first_audio)
        self._outbox.to_client(dumps(report))

    def _first(self, st: ResponseState, kind: str) -> None:
        """Time the response's first token of a kind ("text", "tool", "audio")."""
        attr = "first_" + kind
        if getattr(st, attr) is None:
            now = self._clock()
            setattr(st, attr, now)
            if st.first_token is None and kind != "audio":
                st.first_token = now

    def _assistant_text(self, st: ResponseState, content: str, item_ids: list[Any]) -> None:
        if st.first_text is None:
            self._first(st, "text")
        self._agent_started(st)  # D20
        self._outbox.to_client(conversation_text("assistant", content))
        st.text_sent = True
        st.last_text = content.strip()
        for item_id in item_ids:
            if isinstance(item_id, str) and item_id:
                self._sent_item_ids.add(item_id)
        if st.done_owed:
            self._agent_done(st)

    def hold_idle_error(self, frame: str) -> bool:
        """R16: an idle_timeout Error during a response waits for the response's end."""
        if not self.active:
            return False
        self.flush_idle_error()
        self._held_idle_error = frame
        return True

    def flush_idle_error(self) -> None:
        if self._held_idle_error is not None:
            self._outbox.to_client(self._held_idle_error)
            self._held_idle_error = None

    def expect_echo(self, message: str) -> None:
        """Our InjectAgentMessage item will come back as an assistant item; not said twice."""
        if message.strip():
            self._agent_echoes.append(message.strip())

    def interrupt(self) -> None:
        """Cancel the live response; truncate its audio item at what the client was sent."""
        st = self._cur
        cancel: dict[str, Any] = {"type": "response.cancel"}
        if st.response_id:
            cancel["response_id"] = st.response_id
        self._outbox.to_upstream(dumps(cancel))
        if st.audio_item_id is not None:
            self._outbox.to_upstream(
                dumps(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": st.audio_item_id,
                        "content_index": 0,
                        "audio_end_ms": self._output.milliseconds(st.audio_bytes),
                    }
                )
            )
        st.interrupted = True
        st.text_sent = True  # what was cut off is not reported as said
        if st.started_sent:
            self._agent_done(st, final=True)
        else:
            st.done_sent = True
        self._outbox.log(
            "info", "response interrupted by InjectAgentMessage", response=st.response_id
        )

    # --- client: FunctionCallResponse ------------------------------------------------------

    def on_function_call_response(self, msg: dict[str, Any], raw: str) -> None:
        """R9, D25: forward the output; the create waits until every requested call has one."""
        self._outbox.to_upstream(dumps(function_call_output_event(msg)))
        self._outbox.to_client(AGENT_THINKING)
        self.calls.answer(msg.get("id"))
        if self.calls.outstanding:
            self._outbox.log(
                "debug",
                "function output sent; waiting for more",
                waiting=len(self.calls.outstanding),
            )
            return
        self.deferred_armed = True
        self._outbox.arm(TIMER_DEFERRED_CREATE, self._deferred_create_timeout)

    # --- upstream events -------------------------------------------------------------------

    def on_part(self, event: dict[str, Any]) -> None:
        """Content-part events: only remember item -> response for later dedupe."""
        self._state_for(event)

    def on_output_item(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        response_id = event.get("response_id")
        if isinstance(item, dict) and isinstance(item.get("id"), str) and item["id"]:
            if isinstance(response_id, str) and response_id:
                self._item_response.set(item["id"], response_id)
        self._lookup(response_id)

    def on_item(self, event: dict[str, Any], done: bool = False) -> None:
        """`conversation.item.added/created/done`: stored results (R8), injected user
        messages that owe a create (D17), assistant text not yet reported."""
        item = event.get("item")
        if not isinstance(item, dict):
            return
        item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else None
        if done and item.get("type") == "function_call_output" and self.deferred_armed:
            self._idle(False)  # R8; waits for the end when a response is still active (D18)
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
            self.owed_create = True
            if not self.active and not self.deferred_armed:
                self.send_create("inject")
        if item.get("role") == "assistant":
            self._assistant_item(item, item_id)

    def on_item_done(self, event: dict[str, Any]) -> None:
        self.on_item(event, done=True)

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

    def on_created(self, event: dict[str, Any], *, server_vad: bool) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        if self._awaiting_created:
            self._awaiting_created.popleft()
        if not self.active and server_vad:  # R11
            self._started()
            self._lookup(response.get("id"))
        elif self.active:
            self._lookup(response.get("id"))

    def on_text_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_text is None:
            self._first(st, "text")
        delta = text_delta(event)
        if delta and st.text_chars < MAX_TEXT_CHARS:
            st.text_parts.append(delta)
            st.text_chars += len(delta)

    def on_transcript_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_text is None:
            self._first(st, "text")

    def on_function_call_delta(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_tool is None:
            self._first(st, "tool")

    def on_text_done(self, event: dict[str, Any]) -> None:
        # voxgate order (D22-D24): started, text, done pair of the ending response, held
        # idle_timeout Error, then the end (which may send the deferred response.create).
        st = self._state_for(event)
        if st.interrupted:
            self._ended(st)
            return
        self._agent_started(st)
        text = output_text_from_done(event) or "".join(st.text_parts)
        st.text_parts.clear()
        st.text_chars = 0
        if text.strip() and not st.text_sent:
            self._assistant_text(st, text.strip(), [event.get("item_id")])
        if not st.audio_seen:
            self._agent_done(st, final=True)
        self.flush_idle_error()
        self._ended(st)

    def on_audio_transcript_done(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        transcript = event.get("transcript")
        if isinstance(transcript, str) and transcript.strip() and not st.text_sent:
            self._assistant_text(st, transcript, [event.get("item_id")])

    def on_audio_delta(self, event: dict[str, Any]) -> None:
        pcm = self._decode_audio(event.get("delta"))
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
        pcm = self._output.convert(pcm)
        if pcm:
            self._outbox.to_client(pcm)

    def _decode_audio(self, delta: Any) -> bytes:
        if not isinstance(delta, str) or not delta:
            return b""
        try:
            # = base64.b64decode(delta) without its wrapper: the same non-strict decoding, and a
            # non-ASCII str raises ValueError there as here.
            return binascii.a2b_base64(delta)
        except (binascii.Error, ValueError):
            self._outbox.log("warning", "upstream audio delta is not base64", length=len(delta))
            return b""

    def on_audio_done(self, event: dict[str, Any]) -> None:
        self._agent_done(self._state_for(event))  # R12: does not end the response

    def on_done(self, event: dict[str, Any]) -> None:
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
        self.flush_idle_error()  # D24
        self._ended(st)

    def _cancel_calls(self, response_id: Any) -> None:
        """A cancelled response takes its requested calls with it: `FunctionCallCancelled` for
        those still unanswered, and they no longer hold back the deferred create (D25)."""
        gone = self.calls.cancel_with(response_id)
        if not gone:
            return
        self._outbox.to_client(dumps({"type": "FunctionCallCancelled", "functions": gone}))
        self._outbox.log("info", "function calls cancelled with their response", calls=len(gone))

    def on_function_call(self, event: dict[str, Any]) -> None:
        st = self._state_for(event)
        if st.first_tool is None:
            self._first(st, "tool")
        call_id = event.get("call_id")
        if isinstance(call_id, str) and call_id:
            if self.calls.announced(call_id):
                self._outbox.log("debug", "duplicate function call announcement ignored")
                return
            name = event.get("name") if isinstance(event.get("name"), str) else None
            if self.calls.announce(call_id, name, event.get("response_id")):
                self._disarm_deferred()  # D25: a call announced later re-blocks the create
        self._agent_started(st)
        self._outbox.to_client(dumps(function_call_request(event)))
