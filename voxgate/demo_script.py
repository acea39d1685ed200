"""The scripted client conversation `voxgate demo` plays on each path.

One function per path (`STEPS`), the `Conversation` they speak through, and how each
provider's messages are shown in the transcript. `demo.py` runs them against a live gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
import trio
from trio_websocket import WebSocketConnection

MIC_RATE = 16000
OUTPUT_RATE = 24000  # every path is asked for 24 kHz linear16 output
FRAME_MS = 20
TONE_MS = 400
SILENCE_MS = 400


class StepFailed(Exception):
    """A path did not behave as the script expects; the message says what was wrong."""


# ---------------------------------------------------------------------------------------
# Output


@dataclass
class Printer:
    """Writes the transcript; `quiet` keeps only the per-path results and the summary."""

    quiet: bool = False
    write: Callable[[str], None] = click.echo

    def detail(self, text: str) -> None:
        if not self.quiet:
            self.write(text)

    def always(self, text: str) -> None:
        self.write(text)


def as_ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def shorten(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------
# One client conversation


Message = dict[str, Any] | bytes


@dataclass
class Conversation:
    """A client WebSocket in the script: sends, waits for an expected message, and prints
    one transcript line per meaningful event (audio frames are summed into one line)."""

    ws: WebSocketConnection
    path: str
    printer: Printer
    describe: Callable[[dict[str, Any]], str | None]
    nursery: trio.Nursery
    started: float = field(default_factory=trio.current_time)
    waiting_for: str = ""
    audio_frames: int = 0
    audio_bytes: int = 0
    _pending_frames: int = 0
    _pending_bytes: int = 0

    def line(self, text: str) -> None:
        """One transcript line; received audio not yet shown is summed up first."""
        self.flush_audio()
        self._emit(text)

    def _emit(self, text: str) -> None:
        elapsed = (trio.current_time() - self.started) * 1000
        self.printer.detail(f"[{elapsed:8.1f} ms] {self.path:<26} {text}")

    def flush_audio(self) -> None:
        """Print the audio received since the last line as one summary line."""
        if self._pending_frames:
            seconds = self._pending_bytes / (2 * OUTPUT_RATE)
            self._emit(
                f"<- audio: {self._pending_frames} binary frames, {self._pending_bytes} bytes "
                f"({seconds:.2f} s of {OUTPUT_RATE // 1000} kHz PCM16)"
            )
            self._pending_frames = self._pending_bytes = 0

    async def send_json(self, message: dict[str, Any], note: str | None = None) -> None:
        self.line(f"-> {note or message.get('type')}")
        await self.ws.send_message(orjson.dumps(message).decode())

    def stream_audio(self, frames: list[bytes], note: str) -> trio.Event:
        """Start sending frames paced like a live microphone (one every FRAME_MS) while
        the script goes on reading, so replies show up with their real timing. The event
        is set once the last frame is sent."""
        self.line(f"-> {note}")
        sent = trio.Event()

        async def pace() -> None:
            next_at = trio.current_time()
            for frame in frames:
                await self.ws.send_message(frame)
                next_at += FRAME_MS / 1000
                await trio.sleep_until(next_at)
            self.line(f"-> (end of audio: {len(frames)} frames sent)")
            sent.set()

        self.nursery.start_soon(pace)
        return sent

    async def receive(self) -> Message:
        raw = await self.ws.get_message()
        if isinstance(raw, bytes):
            self.audio_frames += 1
            self.audio_bytes += len(raw)
            self._pending_frames += 1
            self._pending_bytes += len(raw)
            return raw
        self.flush_audio()
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.line(f"<- (text that is not JSON: {shorten(raw, 60)!r})")
            raise StepFailed("received a text frame that is not JSON") from None
        if not isinstance(msg, dict):
            raise StepFailed(f"received JSON that is not an object: {shorten(raw, 60)}")
        shown = self.describe(msg)
        if shown:
            self.line(shown)
        return msg

    async def expect(self, what: str, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read until a JSON message satisfies `match`; an `Error`/`error` message fails."""
        self.waiting_for = what
        while True:
            msg = await self.receive()
            if isinstance(msg, bytes):
                continue
            if match(msg):
                self.waiting_for = ""
                return msg
            if msg.get("type") in ("Error", "error"):
                raise StepFailed(f"got an error while waiting for {self.waiting_for}: {_error_text(msg)}")

    async def expect_type(self, kind: str) -> dict[str, Any]:
        return await self.expect(kind, lambda m: m.get("type") == kind)


def _error_text(msg: dict[str, Any]) -> str:
    err = msg.get("error") if isinstance(msg.get("error"), dict) else msg
    code = err.get("code") or err.get("err_code") or ""
    text = err.get("description") or err.get("message") or err.get("err_msg") or ""
    return shorten(f"{code} {text}".strip(), 160)


def _describe_agent(msg: dict[str, Any]) -> str | None:
    """Voice Agent protocol events (both /openai and the Deepgram agent passthrough)."""
    kind = msg.get("type")
    if kind == "ConversationText":
        return f"{msg.get('role')}: {shorten(str(msg.get('content', '')))}"
    if kind == "Transcript":
        # Interim transcripts grow word by word; the final one says it all.
        return f"<- Transcript: {shorten(str(msg.get('transcript', '')))}" if msg.get("is_final") else None
    if kind == "FunctionCallRequest":
        calls = msg.get("functions") or []
        shown = ", ".join(f"{c.get('name')}({shorten(str(c.get('arguments', '')), 60)})" for c in calls)
        return f"<- FunctionCallRequest: {shown}"
    if kind == "Error":
        return f"<- Error: {_error_text(msg)}"
    return f"<- {kind}"


def _describe_listen(msg: dict[str, Any]) -> str | None:
    kind = msg.get("type")
    if kind == "Results":
        final = " (final)" if msg.get("is_final") else " (interim)"
        return f"<- Results{final}: {shorten(_listen_transcript(msg)) or '(silence)'}"
    return f"<- {kind}"


def _describe_speak(msg: dict[str, Any]) -> str | None:
    kind = msg.get("type")
    if kind in ("Warning", "Error"):
        return f"<- {kind}: {_error_text(msg)}"
    return f"<- {kind}"


REALTIME_SHOWN = {"session.created", "session.updated", "response.created", "rate_limits.updated"}


def _describe_realtime(msg: dict[str, Any]) -> str | None:
    """Raw OpenAI Realtime: only the milestones; deltas and item bookkeeping stay quiet."""
    kind = msg.get("type")
    if kind == "response.done":
        text = _response_text(msg)
        return f"<- response.done; assistant: {shorten(text)}" if text else "<- response.done"
    if kind == "error":
        return f"<- error: {_error_text(msg)}"
    return f"<- {kind}" if kind in REALTIME_SHOWN else None


def _listen_transcript(msg: dict[str, Any]) -> str:
    try:
        return str(msg["channel"]["alternatives"][0]["transcript"])
    except (KeyError, IndexError, TypeError):
        return ""


def _response_text(msg: dict[str, Any]) -> str:
    parts = []
    for item in (msg.get("response") or {}).get("output") or []:
        for part in item.get("content") or [] if isinstance(item, dict) else []:
            if isinstance(part, dict):
                parts.append(part.get("text") or part.get("transcript") or "")
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------
# Audio


def mic_frames(tone_ms: int, silence_ms: int, *, rate: int = MIC_RATE) -> list[bytes]:
    """A 440 Hz tone then silence, as PCM16 LE mono frames of FRAME_MS (stands in for speech)."""
    # imported here: numpy stays out of the supervisor process (cli imports this module)
    from voxgate.simulate.audio import tone_pcm16

    pcm = tone_pcm16(tone_ms, rate=rate) + bytes(2 * (rate * silence_ms // 1000))
    size = 2 * rate * FRAME_MS // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


# ---------------------------------------------------------------------------------------
# The script: one function per path


def agent_settings(*, functions: list[dict[str, Any]] | None = None, prompt: str) -> dict[str, Any]:
    """Voice Agent V1 Settings, as a Deepgram client sends them (16 kHz mic, 24 kHz out)."""
    think: dict[str, Any] = {"provider": {"type": "open_ai", "model": "gpt-4o-mini"}, "prompt": prompt}
    if functions:
        think["functions"] = functions
    return {
        "type": "Settings",
        "audio": {
            "input": {"encoding": "linear16", "sample_rate": MIC_RATE},
            "output": {"encoding": "linear16", "sample_rate": OUTPUT_RATE, "container": "none"},
        },
        "agent": {
            "language": "en",
            "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
            "think": think,
            "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        },
    }


PROMPT = "You are the voxgate demo assistant. Keep answers short."
WEATHER_FUNCTION = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string", "description": "City name"}},
        "required": ["location"],
    },
}
WEATHER_RESULT = "Sunny and 21 degrees in Paris"


def _is_assistant(msg: dict[str, Any], contains: str = "") -> bool:
    return (
        msg.get("type") == "ConversationText"
        and msg.get("role") == "assistant"
        and contains in str(msg.get("content", ""))
    )


async def _agent_start(conv: Conversation, settings: dict[str, Any], extra: str = "") -> None:
    await conv.expect_type("Welcome")
    await conv.send_json(settings, f"Settings (mic linear16 16 kHz, output linear16 24 kHz{', ' + extra if extra else ''})")
    await conv.expect_type("SettingsApplied")


async def _agent_reply(conv: Conversation, contains: str) -> None:
    """The agent's spoken reply: assistant text containing `contains` and an AgentAudioDone
    that follows reply audio, in either order (the translator may send the text last)."""
    frames_before = conv.audio_frames
    got_text = got_done = False

    def reply_complete(msg: dict[str, Any]) -> bool:
        nonlocal got_text, got_done
        got_text = got_text or _is_assistant(msg, contains)
        if msg.get("type") == "AgentAudioDone" and conv.audio_frames > frames_before:
            got_done = True
        conv.waiting_for = (
            "AgentAudioDone after reply audio" if got_text else f"assistant text with {contains!r}"
        )
        return got_text and got_done

    await conv.expect(f"assistant text with {contains!r}", reply_complete)


async def translator_text(conv: Conversation) -> None:
    await _agent_start(conv, agent_settings(prompt=PROMPT))
    text = "Hello, voxgate!"
    await conv.send_json({"type": "InjectUserMessage", "content": text}, f"InjectUserMessage: {text}")
    await conv.expect("the user echo", lambda m: m.get("type") == "ConversationText" and m.get("role") == "user")
    await _agent_reply(conv, f"You said: {text}")


async def translator_audio(conv: Conversation) -> None:
    await _agent_start(conv, agent_settings(prompt=PROMPT))
    frames = mic_frames(TONE_MS, SILENCE_MS)
    conv.stream_audio(
        frames,
        f"mic audio: {TONE_MS} ms tone + {SILENCE_MS} ms silence "
        f"({len(frames)} frames of {FRAME_MS} ms, 16 kHz PCM16)",
    )
    await conv.expect_type("UserStartedSpeaking")
    await conv.expect("a final Transcript", lambda m: m.get("type") == "Transcript" and bool(m.get("is_final")))
    await _agent_reply(conv, "You said:")


async def translator_function_call(conv: Conversation) -> None:
    await _agent_start(conv, agent_settings(prompt=PROMPT, functions=[WEATHER_FUNCTION]), "functions: get_weather")
    text = "Please get weather for Paris."
    await conv.send_json({"type": "InjectUserMessage", "content": text}, f"InjectUserMessage: {text}")
    request = await conv.expect_type("FunctionCallRequest")
    calls = request.get("functions") or []
    if not calls or calls[0].get("name") != WEATHER_FUNCTION["name"]:
        raise StepFailed(f"expected a call of {WEATHER_FUNCTION['name']}, got {calls!r}")
    call = calls[0]
    await conv.send_json(
        {"type": "FunctionCallResponse", "id": call.get("id"), "name": call["name"], "content": WEATHER_RESULT},
        f"FunctionCallResponse: {WEATHER_RESULT}",
    )
    await _agent_reply(conv, WEATHER_RESULT)


async def deepgram_agent(conv: Conversation) -> None:
    await _agent_start(conv, agent_settings(prompt=PROMPT))
    text = "Hello, Deepgram!"
    await conv.send_json({"type": "InjectUserMessage", "content": text}, f"InjectUserMessage: {text}")
    await _agent_reply(conv, f"You said: {text}")


async def deepgram_listen(conv: Conversation) -> None:
    frames = mic_frames(TONE_MS, 100)
    sent = conv.stream_audio(
        frames, f"audio: {TONE_MS} ms tone + 100 ms silence (16 kHz PCM16, {FRAME_MS} ms frames)"
    )
    final = await conv.expect(
        "a final Results with a transcript",
        lambda m: m.get("type") == "Results" and bool(m.get("is_final")) and bool(_listen_transcript(m)),
    )
    if "tone" not in _listen_transcript(final):
        raise StepFailed(f"unexpected transcript {_listen_transcript(final)!r}")
    conv.waiting_for = "the end of the audio"
    await sent.wait()
    await conv.send_json({"type": "CloseStream"})
    await conv.expect_type("Metadata")


async def deepgram_speak(conv: Conversation) -> None:
    await conv.expect_type("Metadata")
    text = "Hello from voxgate."
    await conv.send_json({"type": "Speak", "text": text}, f"Speak: {text}")
    await conv.send_json({"type": "Flush"})
    await conv.expect_type("Flushed")
    if conv.audio_frames == 0:
        raise StepFailed("Flushed arrived without any audio")
    await conv.send_json({"type": "Close"})


async def openai_realtime(conv: Conversation) -> None:
    await conv.expect_type("session.created")
    await conv.send_json(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"], "instructions": PROMPT}}
    )
    await conv.expect_type("session.updated")
    text = "Hello, Realtime!"
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await conv.send_json({"type": "conversation.item.create", "item": item}, f"conversation.item.create: {text}")
    await conv.send_json({"type": "response.create"})
    done = await conv.expect_type("response.done")
    if f"You said: {text}" not in _response_text(done):
        raise StepFailed(f"unexpected reply {_response_text(done)!r}")


@dataclass(frozen=True)
class Step:
    name: str
    path: str
    query: str
    play: Callable[[Conversation], Awaitable[None]]
    describe: Callable[[dict[str, Any]], str | None]


STEPS: tuple[Step, ...] = (
    Step("translator text turn", "/openai", "", translator_text, _describe_agent),
    Step("translator audio turn", "/openai", "", translator_audio, _describe_agent),
    Step("translator function call", "/openai", "", translator_function_call, _describe_agent),
    Step("deepgram agent", "/deepgram-proxy", "", deepgram_agent, _describe_agent),
    Step(
        "deepgram listen",
        "/deepgram-proxy/v1/listen",
        f"?encoding=linear16&sample_rate={MIC_RATE}&channels=1&interim_results=true",
        deepgram_listen,
        _describe_listen,
    ),
    Step(
        "deepgram speak",
        "/deepgram-proxy/v1/speak",
        f"?encoding=linear16&sample_rate={OUTPUT_RATE}&model=aura-2-thalia-en",
        deepgram_speak,
        _describe_speak,
    ),
    Step("openai realtime relay", "/openai/v1/realtime", "?model=gpt-realtime", openai_realtime, _describe_realtime),
)
