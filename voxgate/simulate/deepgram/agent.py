"""The simulated Deepgram Voice Agent V1 (``/v1/agent/converse``).

``Welcome``, then ``Settings`` (validated the way the live API parses it) -> ``SettingsApplied``
and an optional greeting; injections, client- and server-side function calls, prompt/speak/
think/listen updates; binary mic audio goes through the energy VAD and a user turn ends after
``AGENT_END_OF_SPEECH_S`` of silence. Replies are deterministic (``You said: <text>``) and
spoken as an ``AGENT_AUDIO_MS`` tone in the requested output encoding. With
``?sim_json_binary=1`` ``ConversationText`` and ``FunctionCallRequest`` go out as JSON in
BINARY frames, as real Deepgram occasionally does.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from voxgate.simulate.audio import EnergyVad, decode_audio
from voxgate.simulate.deepgram.session import (
    UNPARSABLE,
    UNPARSABLE_TEXT,
    DeepgramSession,
    energy_vad,
    json_object,
)
from voxgate.simulate.faults import Fault

__all__ = ["AGENT_AUDIO_MS", "AGENT_END_OF_SPEECH_S", "JSON_BINARY_PARAM", "AgentSession"]

JSON_BINARY_PARAM = "sim_json_binary"

# Agent behaviour (simulator choices, kept small so tests stay fast).
AGENT_AUDIO_MS = 600  # length of every agent reply tone
AGENT_END_OF_SPEECH_S = 0.6  # silence that ends a user turn on the agent path


def _ack_when_object(field: str, reply: str) -> Any:
    """An Update* handler: acknowledge with ``reply`` when ``field`` holds an object."""

    def handler(session: AgentSession, msg: dict[str, Any]) -> None:
        if isinstance(msg.get(field), dict | list):
            session._emit({"type": reply})
        else:
            session._error(UNPARSABLE, UNPARSABLE_TEXT)

    return handler


class AgentSession(DeepgramSession):
    """Voice Agent V1 (``/v1/agent/converse``): Settings, injections, function calls,
    prompt/speak updates, and an energy-VAD "listener" for binary mic audio."""

    def __init__(
        self,
        *,
        now: float,
        request_id: str | None = None,
        json_binary: bool = False,
        fault: Fault | None = None,
        close_reason: str = "",
    ) -> None:
        self.request_id = request_id or str(uuid.uuid4())
        self._json_binary = json_binary
        self._settings_delay = (
            (fault.arg or 0) / 1000 if fault is not None and fault.kind == "delay_updated" else 0.0
        )
        self.settings: dict[str, Any] | None = None
        self._in_encoding = "linear16"
        self._out_encoding = "linear16"
        self._out_rate = 24000
        self._functions: dict[str, bool] = {}  # name -> client_side
        self._pending_calls: dict[str, str] = {}  # id -> name
        self._call_seq = 0
        self._vad: EnergyVad | None = None
        self._user_speaking = False
        self._speech_start = 0.0
        self._speech_end = 0.0
        self._silence = 0.0
        super().__init__(now=now, fault=fault, close_reason=close_reason)

    def _start(self, now: float) -> None:
        self._emit({"type": "Welcome", "request_id": self.request_id})

    # -- output helpers
    def _error(self, code: str, description: str) -> None:
        self._emit({"type": "Error", "description": description, "code": code})

    def _maybe_binary(self, obj: dict[str, Any]) -> None:
        self._emit(orjson.dumps(obj) if self._json_binary else obj)

    def _conversation_text(self, role: str, content: str) -> None:
        self._maybe_binary({"type": "ConversationText", "role": role, "content": content})

    def _speak(self, text: str, *, latency: bool = True) -> None:
        """One agent turn: assistant text, AgentStartedSpeaking, tone audio, AgentAudioDone."""
        self._conversation_text("assistant", text)
        self._emit(
            {
                "type": "AgentStartedSpeaking",
                "total_latency": 0.25 if latency else 0.0,
                "tts_latency": 0.05 if latency else 0.0,
                "ttt_latency": 0.2 if latency else 0.0,
            }
        )
        self._emit_tone(AGENT_AUDIO_MS, rate=self._out_rate, encoding=self._out_encoding, freq=440.0)
        self._emit({"type": "AgentAudioDone"})

    def _think(self, user_text: str) -> None:
        """Answer a user turn: a function call when the text names a declared function,
        otherwise a deterministic reply."""
        lowered = user_text.lower()
        called = next((n for n in self._functions if n and n.lower() in lowered), None)
        if called is None:
            self._speak(f"You said: {user_text}")
            return
        self._call_seq += 1
        call_id = f"call_{self._call_seq}"
        client_side = self._functions[called]
        self._emit({"type": "AgentThinking", "content": f"I should call {called}."})
        self._maybe_binary(
            {
                "type": "FunctionCallRequest",
                "functions": [
                    {
                        "id": call_id,
                        "name": called,
                        "arguments": orjson.dumps({"text": user_text}).decode(),
                        "client_side": client_side,
                    }
                ],
            }
        )
        if client_side:
            self._pending_calls[call_id] = called
        else:
            result = "simulated server-side result"
            self._emit(
                {"type": "FunctionCallResponse", "id": call_id, "name": called, "content": result}
            )
            self._speak(f"The {called} function returned: {result}")

    # -- input
    def _on_text(self, message: str, now: float) -> None:
        msg = json_object(message)
        kind = msg.get("type") if msg is not None else None
        if msg is None or not isinstance(kind, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        if kind == "KeepAlive":
            return
        if kind == "Settings":
            self._on_settings(msg, now)
            return
        handler = self._HANDLERS.get(kind)
        if handler is None:
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
        elif self.settings is None:
            self._error("SETTINGS_REQUIRED", f"Received {kind} before Settings.")
        else:
            handler(self, msg)

    def _on_binary(self, message: bytes, now: float) -> None:
        if self.settings is None or self._vad is None:
            self._error("SETTINGS_REQUIRED", "Received audio before Settings.")
            return
        for start, end, speech in self._vad.feed(decode_audio(message, self._in_encoding)):
            if speech:
                if not self._user_speaking:
                    self._user_speaking = True
                    self._speech_start = start
                    self._emit({"type": "UserStartedSpeaking"})
                self._speech_end = end
                self._silence = 0.0
            elif self._user_speaking:
                self._silence += end - start
                if self._silence >= AGENT_END_OF_SPEECH_S:
                    self._user_speaking = False
                    heard = self._speech_end - self._speech_start
                    text = f"audio of {heard:.1f} seconds"
                    self._conversation_text("user", text)
                    self._think(text)

    def _on_settings(self, msg: dict[str, Any], now: float) -> None:
        if self.settings is not None:
            self._error("SETTINGS_ALREADY_APPLIED", "Settings have already been applied.")
            return
        problem = _settings_problem(msg)
        if problem is not None:
            self._error(
                UNPARSABLE,
                f"Error parsing client message. Check the {problem} field against the API spec.",
            )
            return
        self.settings = msg
        audio = msg["audio"]
        inp = audio.get("input") or {}
        out = audio.get("output") or {}
        self._in_encoding = inp.get("encoding", "linear16")
        in_rate = int(inp.get("sample_rate", 24000))
        self._out_encoding = out.get("encoding") or "linear16"
        self._out_rate = int(out.get("sample_rate") or 24000)
        self._vad = energy_vad(in_rate)
        agent = msg["agent"]
        if isinstance(agent, dict):
            self._functions = _declared_functions(agent.get("think"))
        self._emit({"type": "SettingsApplied"}, at=now + self._settings_delay)
        greeting = agent.get("greeting") if isinstance(agent, dict) else None
        if isinstance(greeting, str) and greeting:
            self._speak(greeting, latency=False)

    def _on_inject_user(self, msg: dict[str, Any]) -> None:
        content = msg.get("content")
        if not isinstance(content, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        self._conversation_text("user", content)
        self._think(content)

    def _on_inject_agent(self, msg: dict[str, Any]) -> None:
        text = msg.get("message")
        if not isinstance(text, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
        elif self._user_speaking:
            self._emit({"type": "InjectionRefused", "message": "The user is currently speaking."})
        else:
            self._speak(text, latency=False)

    def _on_function_response(self, msg: dict[str, Any]) -> None:
        name, content = msg.get("name"), msg.get("content")
        if not isinstance(content, str):
            self._error(UNPARSABLE, UNPARSABLE_TEXT)
            return
        call_id = msg.get("id")
        known = self._pending_calls.pop(call_id, None) if isinstance(call_id, str) else None
        self._speak(f"The {known or name} function returned: {content}")

    def _on_update_prompt(self, msg: dict[str, Any]) -> None:
        if isinstance(msg.get("prompt"), str):
            self._emit({"type": "PromptUpdated"})
        else:
            self._error(UNPARSABLE, UNPARSABLE_TEXT)

    _HANDLERS = {
        "InjectUserMessage": _on_inject_user,
        "InjectAgentMessage": _on_inject_agent,
        "FunctionCallResponse": _on_function_response,
        "UpdatePrompt": _on_update_prompt,
        "UpdateSpeak": _ack_when_object("speak", "SpeakUpdated"),
        "UpdateThink": _ack_when_object("think", "ThinkUpdated"),
        "UpdateListen": _ack_when_object("listen", "ListenUpdated"),
    }


def _settings_problem(msg: Mapping[str, Any]) -> str | None:
    """Name of the first field the real API would refuse to parse, or None."""
    audio = msg.get("audio")
    if not isinstance(audio, dict):
        return "audio"
    return _input_problem(audio.get("input")) or _output_problem(audio.get("output")) or _agent_problem(
        msg.get("agent")
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _input_problem(inp: Any) -> str | None:
    if inp is None:
        return None
    if not isinstance(inp, dict):
        return "audio.input"
    if not isinstance(inp.get("encoding"), str):
        return "audio.input.encoding"
    if not _positive_int(inp.get("sample_rate")):
        return "audio.input.sample_rate"
    return None


def _output_problem(out: Any) -> str | None:
    if out is None:
        return None
    if not isinstance(out, dict):
        return "audio.output"
    if "encoding" in out and not isinstance(out["encoding"], str):
        return "audio.output.encoding"
    rate = out.get("sample_rate")
    if rate is not None and not _positive_int(rate):
        return "audio.output.sample_rate"
    return None


def _agent_problem(agent: Any) -> str | None:
    if isinstance(agent, str):
        return None
    if not isinstance(agent, dict):
        return "agent"
    think = agent.get("think")
    for provider in think if isinstance(think, list) else [think] if think is not None else []:
        problem = _think_problem(provider)
        if problem is not None:
            return problem
    if "greeting" in agent and not isinstance(agent["greeting"], str):
        return "agent.greeting"
    return None


def _think_problem(provider: Any) -> str | None:
    if not isinstance(provider, dict):
        return "agent.think"
    functions = provider.get("functions", [])
    # A function is client-side by having no ``endpoint``; the schema has no
    # ``client_side`` flag and the live API refuses Settings that carry one.
    if not isinstance(functions, list) or not all(
        isinstance(f, dict) and isinstance(f.get("name"), str) and "client_side" not in f
        for f in functions
    ):
        return "agent.think.functions"
    return None


def _declared_functions(think: Any) -> dict[str, bool]:
    """Function name -> client_side (a function without an ``endpoint`` runs on the client)."""
    found: dict[str, bool] = {}
    for provider in think if isinstance(think, list) else [think]:
        if isinstance(provider, dict):
            for f in provider.get("functions") or []:
                found.setdefault(f["name"], "endpoint" not in f)
    return found
