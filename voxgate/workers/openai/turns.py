"""Turns outside an upstream response: the user's (speech start and stop, input transcripts,
typed `InjectUserMessage`) and the agent messages a client injects (`InjectAgentMessage`
with its default / queue / interrupt behaviors, §2.4).

These tie the session and the responses together (an inject waits for a ready session and
refuses or waits for a live response), so `Turns` is handed both and sends through the
shared `Outbox`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from voxgate.workers.openai.actions import Backlog, Outbox, conversation_text, dumps, simple
from voxgate.workers.openai.bounded import Bounded
from voxgate.workers.openai.responses import MAX_TEXT_CHARS, Responses
from voxgate.workers.openai.session_update import SessionUpdates
from voxgate.workers.openai.settings_map import assistant_message_event, user_message_event
from voxgate.workers.openai.upstream_map import transcript_final, transcript_interim, utterance_end

__all__ = ["Turns"]

INJECT_BEHAVIORS = ("default", "queue", "interrupt")
USER_STARTED = simple("UserStartedSpeaking")


class Turns:
    """Who holds the floor, and the messages injected into the conversation."""

    def __init__(
        self, outbox: Outbox, backlog: Backlog, session: SessionUpdates, responses: Responses
    ) -> None:
        self._outbox = outbox
        self._backlog = backlog
        self._session = session
        self._responses = responses
        self._user_speaking = False
        self._queued_agent: deque[str] = deque()  # InjectAgentMessage behavior "queue"
        self._transcripts = Bounded(64)  # item id -> accumulated interim text

    # --- InjectUserMessage -----------------------------------------------------------------

    def on_inject_user(self, msg: dict[str, Any], raw: str) -> None:
        content = msg.get("content")
        if not isinstance(content, str):  # D11
            self._outbox.error(
                "invalid_client_message", "InjectUserMessage needs a string 'content'."
            )
            return
        if self._session.ready:
            self.inject_user(content)
        else:  # R6
            self._backlog.hold_until_ready("user", content, raw)

    def inject_user(self, content: str) -> None:
        self._outbox.to_upstream(dumps(user_message_event(content)))
        self._outbox.to_client(conversation_text("user", content))  # R20
        self._responses.user_message_sent()
        self._responses.user_turn_typed()

    # --- InjectAgentMessage ----------------------------------------------------------------

    def on_inject_agent(self, msg: dict[str, Any], raw: str) -> None:
        message = msg.get("message")
        if not isinstance(message, str):
            self._outbox.error(
                "invalid_client_message", "InjectAgentMessage needs a string 'message'."
            )
            return
        behavior = msg.get("behavior")
        behavior = "default" if behavior is None else behavior
        if behavior not in INJECT_BEHAVIORS:
            self._outbox.error(
                "invalid_client_message",
                "InjectAgentMessage behavior must be default, queue or interrupt.",
            )
            return
        if self._session.ready:
            self.inject_agent(message, behavior)
        else:
            self._backlog.hold_until_ready("agent", (message, behavior), raw)

    def inject_agent(self, message: str, behavior: str = "default") -> None:
        """default: refused while the agent or the user holds the floor; queue: spoken when
        the live response ends; interrupt: the live response is cancelled and its audio item
        truncated to what the client received, then the message is spoken."""
        active = self._responses.active
        if behavior == "queue" and (
            active or self._responses.deferred_armed or self._queued_agent
        ):
            self._queued_agent.append(message)
            return
        if behavior == "default" and (active or self._user_speaking):
            reason = "agent is speaking" if active else "user is speaking"
            self._outbox.to_client(
                dumps({"type": "InjectionRefused", "message": f"Injection refused: {reason}."})
            )
            return
        if behavior == "interrupt" and active:
            self._responses.interrupt()
        self._speak_agent_message(message)

    def _speak_agent_message(self, message: str) -> None:
        self._outbox.to_upstream(dumps(assistant_message_event(message)))
        self._outbox.to_client(conversation_text("assistant", message))
        self._responses.done_signals()
        self._responses.expect_echo(message)

    def flush_queued_agent(self) -> None:
        """Speak the queued agent messages, now that no response holds the floor."""
        while self._queued_agent and not self._responses.active:
            self._speak_agent_message(self._queued_agent.popleft())

    # --- the user's speech -----------------------------------------------------------------

    def speech_started(self) -> None:
        self._user_speaking = True
        self._outbox.to_client(USER_STARTED)  # D32: the client's cue to stop playback

    def on_speech_stopped(self, event: dict[str, Any]) -> None:
        self._user_speaking = False
        self._responses.user_turn_spoken()
        if not self._outbox.deepgram:  # Deepgram's agent API has no UtteranceEnd
            self._outbox.to_client(dumps(utterance_end(event)))

    def on_transcription_delta(self, event: dict[str, Any]) -> None:
        if self._outbox.deepgram:  # the agent API reports only the final user text
            return
        item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else ""
        delta = event.get("delta") if isinstance(event.get("delta"), str) else ""
        text = self._transcripts.get(item_id, "")
        if len(text) < MAX_TEXT_CHARS:
            text += delta
        self._transcripts.set(item_id, text)
        self._outbox.to_client(dumps(transcript_interim(event, text)))

    def on_transcription_completed(self, event: dict[str, Any]) -> None:
        self._responses.transcript_arrived()
        if not self._outbox.deepgram:
            item_id = event.get("item_id") if isinstance(event.get("item_id"), str) else ""
            self._transcripts.pop(item_id)
            self._outbox.to_client(dumps(transcript_final(event)))
            return
        transcript = event.get("transcript")
        if isinstance(transcript, str) and transcript.strip():
            self._outbox.to_client(conversation_text("user", transcript.strip()))
