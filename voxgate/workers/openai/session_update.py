"""Everything the translator turns into a `session.update`: the first `Settings` (R2, R3, D9)
and the mid-session `UpdatePrompt` / `UpdateThink` / `UpdateListen`, held while a response is
live (§2.4); and the `session.updated` answers (`SettingsApplied`, `PromptUpdated`, ...) with
the greeting (R17).

The mapping itself is pure and lives in `settings_map`; this module keeps the session as last
sent (instructions, turn detection, transcription) so a change can send whole objects.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from voxgate.policy import apply_policy, pinned_message
from voxgate.workers.openai.actions import Backlog, Outbox, conversation_text, dumps, simple
from voxgate.workers.openai.audio_flow import InputAudio, OutputAudio
from voxgate.workers.openai.responses import Responses
from voxgate.workers.openai.settings_map import (
    ListenChange,
    SessionPlan,
    SettingsRejected,
    ThinkChange,
    listen_session,
    map_settings,
    map_update_listen,
    map_update_think,
)

__all__ = ["SessionUpdates", "UPDATE_ANSWERS"]

UPDATE_ANSWERS = {"prompt": "PromptUpdated", "think": "ThinkUpdated", "listen": "ListenUpdated"}
SETTINGS_APPLIED = simple("SettingsApplied")


class SessionUpdates:
    """The session as configured, and the `session.update`s that configure it."""

    def __init__(
        self,
        outbox: Outbox,
        responses: Responses,
        input_audio: InputAudio,
        output_audio: OutputAudio,
        backlog: Backlog,
        *,
        default_model: str,
        policy: dict[str, Any] | None,
    ) -> None:
        self._outbox = outbox
        self._responses = responses
        self._input = input_audio
        self._output = output_audio
        self._backlog = backlog
        self._default_model = default_model
        self._policy = policy  # server-owned session policy rules (voxgate.policy)
        self.ready = False  # a real session.updated was seen (R4)
        self.forwarded = False  # a Settings became a session.update (R2)
        self._owed_settings_applied = 0  # D9
        self._update_kinds: deque[tuple[str, str]] = deque()  # (event_id, "settings"|kind)
        self._instructions = ""
        self._greeting: str | None = None
        self._had_context = False
        self._held: deque[tuple[str, Any]] = deque()  # (kind, change) during a response
        self._turn_detection: dict[str, Any] | None = None  # as last sent (UpdateListen)
        self._transcription: dict[str, Any] = {}

    def _busy(self) -> bool:
        """A response is live or owed: a session.update now would be refused upstream."""
        return self._responses.active or self._responses.deferred_armed

    def on_settings(self, msg: dict[str, Any], raw: str) -> None:
        """A client `Settings`: the first one is mapped and sent; later ones only answered."""
        if self.forwarded:  # R2, D9
            if self.ready:
                self._outbox.to_client(SETTINGS_APPLIED)
            else:
                self._owed_settings_applied += 1
            self._outbox.log("info", "duplicate Settings answered without a session.update")
            return
        if self.ready and self._busy():  # R3
            self._outbox.to_client(SETTINGS_APPLIED)
            self._outbox.log("info", "Settings during an active response discarded")
            return
        plan = map_settings(msg, default_model=self._default_model)
        if isinstance(plan, SettingsRejected):
            self._outbox.error(plan.code, plan.description)
            return
        self._apply(plan)
        self._send(plan.session, "settings")

    def _apply(self, plan: SessionPlan) -> None:
        """Remember what the plan configures, and tell the audio paths their formats."""
        self.forwarded = True
        self._instructions = plan.instructions
        self._greeting = plan.greeting
        self._had_context = plan.had_context
        self._input.configure(plan)
        self._output.configure(plan)
        audio_input = plan.session["audio"]["input"]
        self._turn_detection = audio_input["turn_detection"]
        self._transcription = audio_input["transcription"]
        if plan.requested_model is not None:
            self._outbox.log(
                "debug",
                "non-realtime model replaced",
                requested=plan.requested_model[:64],
                model=plan.session["model"],
            )
        self._outbox.log(
            "info",
            "Settings forwarded",
            model=plan.session["model"],
            server_vad=plan.server_vad,
            input=f"{plan.input_format.encoding}/{plan.input_format.sample_rate}",
            output=f"{plan.output_format.encoding}/{plan.output_format.sample_rate}",
        )

    def _send(self, session: dict[str, Any], kind: str) -> None:
        """Emit the `session.update` (after the server's policy pins its fields)."""
        if self._policy:
            for name in apply_policy(session, self._policy):
                self._outbox.to_client(
                    dumps(
                        {
                            "type": "Warning",
                            "description": pinned_message(name),
                            "code": "policy_pinned",
                        }
                    )
                )
                self._outbox.log("info", "pinned field replaced", field=name)
        event_id = self._outbox.next_event_id("su")
        self._update_kinds.append((event_id, kind))
        self._outbox.to_upstream(
            dumps({"type": "session.update", "event_id": event_id, "session": session})
        )

    # --- UpdatePrompt, UpdateThink, UpdateListen -------------------------------------------

    def on_update_prompt(self, msg: dict[str, Any], raw: str) -> None:
        prompt = msg.get("prompt")
        if not isinstance(prompt, str):
            self._outbox.error("invalid_client_message", "UpdatePrompt needs a string 'prompt'.")
            return
        self._request_change("prompt", prompt, raw)

    def on_update_think(self, msg: dict[str, Any], raw: str) -> None:
        change = map_update_think(msg, default_model=self._default_model)
        if isinstance(change, SettingsRejected):
            self._outbox.error(change.code, change.description)
            return
        self._request_change("think", change, raw)

    def on_update_listen(self, msg: dict[str, Any], raw: str) -> None:
        change = map_update_listen(msg)
        if isinstance(change, SettingsRejected):
            self._outbox.error(change.code, change.description)
            return
        self._request_change("listen", change, raw)

    def _request_change(self, kind: str, change: Any, raw: str) -> None:
        """Gated like an inject before `session.updated`; held during a response (§2.4)."""
        if self.ready:
            self.change(kind, change)
        else:
            self._backlog.hold_until_ready(kind, change, raw)

    def change(self, kind: str, change: Any) -> None:
        """A ready session's prompt/think/listen change: now, or after the live response."""
        if self._busy():
            self._held.append((kind, change))
            return
        self._send_change(kind, change)

    def flush_held(self) -> None:
        """Send the changes held during the response that just ended (or before a create)."""
        while self._held:
            self._send_change(*self._held.popleft())

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
        self._send(session, kind)

    def updated(self) -> None:
        """`session.updated`: the session is ready; answer the update it confirms, and after
        the Settings' answer speak the greeting (R17)."""
        kind = self._update_kinds.popleft()[1] if self._update_kinds else "settings"
        self.ready = True
        if kind in UPDATE_ANSWERS:
            self._outbox.to_client(simple(UPDATE_ANSWERS[kind]))
            return
        self._outbox.to_client(SETTINGS_APPLIED)
        for _ in range(self._owed_settings_applied):  # D9
            self._outbox.to_client(SETTINGS_APPLIED)
        self._owed_settings_applied = 0
        if self._greeting and not self._had_context:  # R17
            self._outbox.to_client(conversation_text("assistant", self._greeting))
            self._responses.done_signals()
        self._greeting = None
        self._had_context = False

    def refused(self, event_id: Any) -> None:
        """The upstream answered this event with an error: no session.updated will follow."""
        if not isinstance(event_id, str):
            return
        for entry in self._update_kinds:
            if entry[0] == event_id:
                self._update_kinds.remove(entry)
                break
