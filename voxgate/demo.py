"""`voxgate demo`: the whole gateway working, with no keys and no network.

A newcomer should see every path work before writing a line of code. The demo starts both
simulated upstreams in this process (loopback, random ports, throwaway keys), starts the real
gateway as a child process pointed at them, and plays a scripted conversation through each
path, printing what the client sent and received with timings. Exit status 0 means every
path worked. With `--keep-running` everything stays up afterwards so a real client can be
pointed at the printed URLs, until Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import math
import secrets
import signal
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import click
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from voxgate.launcher import GatewayProcess, LaunchError, clean_env, start_gateway_async

__all__ = ["STEPS", "demo", "run_demo"]

STEP_TIMEOUT = 10.0  # seconds for one whole path, connect to close
CONNECT_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
START_TIMEOUT = 30.0
GATEWAY_GRACE = "2"  # the demo's sessions are short; do not make Ctrl-C wait 30 s

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


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _short(text: str, limit: int = 100) -> str:
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
            self.line(f"<- (text that is not JSON: {_short(raw, 60)!r})")
            raise StepFailed("received a text frame that is not JSON") from None
        if not isinstance(msg, dict):
            raise StepFailed(f"received JSON that is not an object: {_short(raw, 60)}")
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
    return _short(f"{code} {text}".strip(), 160)


def _describe_agent(msg: dict[str, Any]) -> str | None:
    """Voice Agent protocol events (both /openai and the Deepgram agent passthrough)."""
    kind = msg.get("type")
    if kind == "ConversationText":
        return f"{msg.get('role')}: {_short(str(msg.get('content', '')))}"
    if kind == "Transcript":
        # Interim transcripts grow word by word; the final one says it all.
        return f"<- Transcript: {_short(str(msg.get('transcript', '')))}" if msg.get("is_final") else None
    if kind == "FunctionCallRequest":
        calls = msg.get("functions") or []
        shown = ", ".join(f"{c.get('name')}({_short(str(c.get('arguments', '')), 60)})" for c in calls)
        return f"<- FunctionCallRequest: {shown}"
    if kind == "Error":
        return f"<- Error: {_error_text(msg)}"
    return f"<- {kind}"


def _describe_listen(msg: dict[str, Any]) -> str | None:
    kind = msg.get("type")
    if kind == "Results":
        final = " (final)" if msg.get("is_final") else " (interim)"
        return f"<- Results{final}: {_short(_listen_transcript(msg)) or '(silence)'}"
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
        return f"<- response.done; assistant: {_short(text)}" if text else "<- response.done"
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
    n_tone = rate * tone_ms // 1000
    tone = struct.pack(
        f"<{n_tone}h", *(round(0.3 * 32767 * math.sin(2 * math.pi * 440.0 * i / rate)) for i in range(n_tone))
    )
    pcm = tone + bytes(2 * (rate * silence_ms // 1000))
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


async def run_step(gw: GatewayProcess, step: Step, index: int, printer: Printer) -> bool:
    """Play one path; prints its transcript and one result line; never raises (but Cancelled)."""
    total = len(STEPS)
    url = gw.url(step.path + step.query)
    printer.detail("")
    printer.detail(f"-- {index}/{total} {step.name}: {gw.url(step.path)}")
    started = trio.current_time()
    conv: Conversation | None = None
    error: str | None = None
    try:
        with trio.fail_after(STEP_TIMEOUT):
            async with open_websocket_url(
                url, connect_timeout=CONNECT_TIMEOUT, disconnect_timeout=CLOSE_TIMEOUT
            ) as ws:
                async with trio.open_nursery() as nursery:
                    conv = Conversation(ws, step.path, printer, step.describe, nursery, started=started)
                    await step.play(conv)
                    nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        waiting = f" waiting for {conv.waiting_for}" if conv and conv.waiting_for else ""
        error = f"timed out after {STEP_TIMEOUT:g} s{waiting}"
    except StepFailed as exc:
        error = str(exc)
    except ConnectionRejected as exc:
        body = (exc.body or b"")[:200].decode("utf-8", "replace")
        error = f"the gateway refused the upgrade: HTTP {exc.status_code} {_short(body, 120)}"
    except HandshakeError as exc:
        error = f"WebSocket handshake failed: {type(exc).__name__}"
    except ConnectionClosed as exc:
        reason = exc.reason
        waiting = f" while waiting for {conv.waiting_for}" if conv and conv.waiting_for else ""
        error = f"connection closed ({reason.code} {reason.reason or ''}){waiting}".replace(" )", ")")
    except OSError as exc:
        error = f"cannot connect: {exc.strerror or exc}"
    elapsed = trio.current_time() - started
    if conv is not None:
        conv.flush_audio()
    if error is None:
        printer.always(f"ok    {index}/{total} {step.name:<26} {step.path:<26} {_ms(elapsed)}")
        return True
    printer.always(f"FAIL  {index}/{total} {step.name:<26} {step.path:<26} {error}")
    return False


# ---------------------------------------------------------------------------------------
# Orchestration


@dataclass
class DemoOptions:
    port: int = 0
    keep_running: bool = False
    quiet: bool = False


def _url_lines(gw: GatewayProcess) -> list[str]:
    rows = [
        (gw.url("/", "http"), "browser page: talk through /openai, /deepgram-proxy, /deepgram-proxy/v1/listen"),
        (gw.url("/openai"), "Deepgram Voice Agent protocol -> OpenAI Realtime (simulated)"),
        (gw.url("/openai/v1/realtime"), "raw OpenAI Realtime relay (simulated)"),
        (gw.url("/deepgram-proxy"), "Deepgram Voice Agent passthrough (simulated)"),
        (gw.url("/deepgram-proxy/v1/listen"), "Deepgram live transcription (simulated)"),
        (gw.url("/deepgram-proxy/v1/speak"), "Deepgram streaming TTS (simulated)"),
        (gw.url("/deepgram-proxy/v2/listen"), "Deepgram Flux turn-based transcription (simulated)"),
        (gw.url("/deepgram-proxy/v2/speak"), "Deepgram Flux turn-based TTS (simulated)"),
        (gw.url("/readyz", "http"), "readiness; /healthz liveness; /metrics Prometheus"),
    ]
    width = max(len(url) for url, _ in rows)
    return [f"  {url:<{width}}  {label}" for url, label in rows]


async def run_demo(options: DemoOptions, printer: Printer) -> int:
    """Start simulators and gateway, play every path, stop everything; returns the exit code."""
    from voxgate.simulate.deepgram.server import DeepgramSimulator
    from voxgate.simulate.openai.server import OpenAISimulator

    # Throwaway keys: the simulators check them and the gateway injects them, exactly as
    # with the real services, but they are worthless anywhere else.
    openai_key = "sk-demo-" + secrets.token_hex(16)
    deepgram_key = "demo-" + secrets.token_hex(24)
    results: list[bool] = []
    finished = False
    interrupted: str | None = None

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal interrupted
                async for signum in signals:
                    interrupted = signal.Signals(signum).name
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch_signals)
            openai_sim = OpenAISimulator(api_key=openai_key)
            deepgram_sim = DeepgramSimulator(api_key=deepgram_key)
            openai_port = await nursery.start(openai_sim.serve)
            deepgram_port = await nursery.start(deepgram_sim.serve)
            printer.detail(f"demo: simulated OpenAI Realtime on ws://127.0.0.1:{openai_port}")
            printer.detail(f"demo: simulated Deepgram on ws://127.0.0.1:{deepgram_port}")
            env = clean_env(
                {
                    "OPENAI_API_KEY": openai_key,
                    "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{openai_port}/v1/realtime",
                    "DEEPGRAM_API_KEY": deepgram_key,
                    "DEEPGRAM_AGENT_URL": f"ws://127.0.0.1:{deepgram_port}",
                    "DEEPGRAM_API_URL": f"ws://127.0.0.1:{deepgram_port}",
                    "VOXGATE_GRACE": GATEWAY_GRACE,
                    "VOXGATE_DEMO_PAGE": "1",
                }
            )
            gw: GatewayProcess | None = None
            try:
                try:
                    gw = await start_gateway_async(env, port=options.port, timeout=START_TIMEOUT)
                except LaunchError as exc:
                    printer.always(f"demo: the gateway did not start: {_launch_summary(exc)}")
                    nursery.cancel_scope.cancel()
                    return 1
                printer.detail(f"demo: gateway pid {gw.pid} listening on {gw.url('', 'http')}")
                printer.detail(f"demo: browser page {gw.url('/', 'http')}" + ("" if options.keep_running else " (with --keep-running it stays up)"))
                for index, step in enumerate(STEPS, 1):
                    results.append(await run_step(gw, step, index, printer))
                finished = True
                failed = results.count(False)
                printer.always("")
                if failed:
                    _print_gateway_tail(gw, printer)
                    printer.always(f"demo: {failed} of {len(STEPS)} paths failed")
                else:
                    printer.always(f"demo: all {len(STEPS)} paths worked")
                if options.keep_running:
                    printer.always("demo: gateway and simulators keep running; point a client at:")
                    for line in _url_lines(gw):
                        printer.always(line)
                    printer.always("demo: press Ctrl-C to stop")
                    await trio.sleep_forever()
                nursery.cancel_scope.cancel()
            finally:
                if gw is not None:
                    await gw.stop_async()

    if not finished:
        printer.always(f"demo: interrupted ({interrupted or 'cancelled'}) after {len(results)} of {len(STEPS)} paths")
        return 1
    if interrupted and options.keep_running:
        printer.always(f"demo: stopped ({interrupted})")
    return 0 if all(results) else 1


def _launch_summary(exc: LaunchError) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["unknown"])[-1]


def _print_gateway_tail(gw: GatewayProcess, printer: Printer, n: int = 15) -> None:
    lines = [line.rstrip() for line in gw.output.splitlines() if line.strip()]
    if lines and not printer.quiet:
        printer.always(f"demo: last {min(n, len(lines))} lines of gateway output:")
        for line in lines[-n:]:
            printer.always(f"  | {line}")


@click.command()
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Gateway port (0 = any free port).")
@click.option("--keep-running", is_flag=True,
              help="Leave the gateway and simulators up after the script, until Ctrl-C / SIGTERM.")
@click.option("--quiet", "-q", is_flag=True, help="Print only the per-path results and the summary.")
def demo(port: int, keep_running: bool, quiet: bool) -> None:
    """Run the gateway against built-in simulators and play a conversation through every
    path (no keys, no network). Exit 0 when every path worked."""
    code = trio.run(run_demo, DemoOptions(port=port, keep_running=keep_running, quiet=quiet), Printer(quiet))
    raise click.exceptions.Exit(code)


if __name__ == "__main__":
    demo()
