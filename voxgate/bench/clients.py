"""The generator's session kinds, each a `WsClient` reporting into one `PhaseState`.

- `EchoClient`: binary frames carrying a sequence number and a send timestamp
  (perf_counter_ns) in their first 16 bytes; the echo carries them back, so RTT needs no
  bookkeeping and reordering or loss is caught per session.
- `AgentClient`: Deepgram Voice Agent protocol (the `/openai` translator): Settings, wait for
  SettingsApplied, then 16 kHz PCM binary frames; RTT = send -> next binary frame back
  (first in, first out: one append upstream per frame, one delta back per append).
- `RealtimeClient`: OpenAI Realtime protocol (direct to the upstream, or through the raw
  relay): session.update, wait for session.updated, then `input_audio_buffer.append` events;
  RTT = send -> next `response.output_audio.delta`.
- `SetupProbe`: one connection timed to its 101 and to the first upstream byte (the
  upstream's greeting), then closed.
"""

from __future__ import annotations

import base64
import struct
from collections import deque
from time import perf_counter_ns

import orjson

from voxgate.bench.evloop import CLOSED, OPEN, Loop, WsClient
from voxgate.bench.wire import OP_BINARY, OP_TEXT, ZERO_MASK, client_frame, frame_header
from voxgate.simulate.audio import tone_pcm16

STAMP = struct.Struct("<QQ")
MAX_ERROR_SAMPLES = 20




class PhaseState:
    """Counters shared by every session of one measured phase (one target of a scenario)."""

    def __init__(self, frame_bytes: int = 960) -> None:
        self.frame_bytes = frame_bytes
        self.rtts: list[int] = []
        self.lags: list[int] = []
        self.sent = 0
        self.received = 0
        self.in_window = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.ready = 0
        self.ended = 0
        self.setup_ns: list[int] = []  # time from connect() to ready
        self.t_start = 0  # measured window
        self.t_end = 1 << 62
        self.streaming = False
        self.reply = False  # echo-driven modes send one frame per echo received
        self.closing = False

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what)

    def client_ended(self, error: str | None, was_ready: bool, never_ready: str) -> None:
        """Count one ended session; one that never got ready is settled, as an error."""
        self.ended += 1
        if error is not None:
            self.error(error)
        if not was_ready:
            self.ready += 1
            if error is None:
                self.error(never_ready)


# ----------------------------------------------------------------------------- echo


class EchoClient(WsClient):
    def __init__(self, loop: Loop, host: str, port: int, path: str, ph: PhaseState, filler: bytes) -> None:
        super().__init__(loop, host, port, path)
        self.ph = ph
        self.prefix = frame_header(OP_BINARY, ph.frame_bytes, masked=True) + ZERO_MASK
        self.filler = filler
        self.next_seq = 0
        self.expect = 0
        self.outstanding = 0
        self.is_ready = False
        self.want = 0

    def frame(self) -> bytes:
        seq = self.next_seq
        self.next_seq = seq + 1
        self.outstanding += 1
        return self.prefix + STAMP.pack(seq, perf_counter_ns()) + self.filler

    def send_one(self) -> None:
        if self.state == OPEN:
            self.ph.sent += 1
            self.send(self.frame())

    def send_many(self, count: int) -> None:
        if self.state == OPEN and count > 0:
            self.ph.sent += count
            self.send(b"".join([self.frame() for _ in range(count)]))

    def tick(self, due: int) -> None:
        """Paced mode: one frame now (`due` is when it was scheduled)."""
        if self.state == OPEN:
            self.ph.lags.append(perf_counter_ns() - due)
            self.send_one()

    def on_open(self, now: int) -> None:
        self.send(self.frame())  # the warm-up echo: the upstream leg is open once it returns

    def on_frame(self, op: int, buf: bytes, start: int, end: int, now: int) -> None:
        ph = self.ph
        if op != OP_BINARY:
            if op == OP_TEXT:
                self.on_text(bytes(buf[start:end]), now)
            return
        if end - start != ph.frame_bytes:
            ph.error(f"echo of {end - start} bytes, sent {ph.frame_bytes}")
            return
        seq, t = STAMP.unpack_from(buf, start)
        if seq != self.expect:
            ph.error(f"echo out of order: got {seq}, expected {self.expect}")
        self.expect = seq + 1
        self.outstanding -= 1
        if not self.is_ready:
            self.is_ready = True
            ph.ready += 1
            ph.setup_ns.append(now - self.t_start)
            return
        ph.rtts.append(now - t)
        ph.received += 1
        if now <= ph.t_end:
            ph.in_window += 1
            if ph.reply:
                self.want += 1

    def on_text(self, payload: bytes, now: int) -> None:
        """Text from the echo path is unexpected here (the greeting is the setup probe's)."""

    def after_read(self, now: int) -> None:
        if self.want:
            want, self.want = self.want, 0
            if self.ph.streaming and perf_counter_ns() < self.ph.t_end:
                self.send_many(want)

    def on_closed(self) -> None:
        self.ph.client_ended(self.error, self.is_ready, "closed before its first echo")


# ----------------------------------------------------------------------------- translator


def agent_settings(rate: int) -> bytes:
    return orjson.dumps({
        "type": "Settings",
        "audio": {
            "input": {"encoding": "linear16", "sample_rate": rate},
            "output": {"encoding": "linear16", "sample_rate": rate, "container": "none"},
        },
        "agent": {
            "listen": {"provider": {"type": "deepgram", "model": "nova-3"}},
            "think": {"provider": {"type": "open_ai", "model": "gpt-realtime"}, "prompt": "You are a benchmark."},
            "speak": {"provider": {"type": "deepgram", "model": "aura-2-thalia-en"}},
        },
    })


class _PacedFifo(WsClient):
    """Shared by the two audio protocols: paced sends, FIFO RTT on the replies."""

    def __init__(self, loop: Loop, host: str, port: int, path: str, ph: PhaseState,
                 hello: bytes, audio_frame: bytes) -> None:
        super().__init__(loop, host, port, path)
        self.ph = ph
        self.hello = hello
        self.audio_frame = audio_frame
        self.sendtimes: deque[int] = deque()
        self.is_ready = False

    @property
    def outstanding(self) -> int:
        return len(self.sendtimes)

    def on_open(self, now: int) -> None:
        self.send(self.hello)

    def set_ready(self, now: int) -> None:
        if not self.is_ready:
            self.is_ready = True
            self.ph.ready += 1
            self.ph.setup_ns.append(now - self.t_start)

    def tick(self, due: int) -> None:
        if self.state == OPEN:
            now = perf_counter_ns()
            self.ph.lags.append(now - due)
            self.ph.sent += 1
            self.sendtimes.append(now)
            self.send(self.audio_frame)

    def audio_back(self, now: int) -> None:
        ph = self.ph
        if not self.sendtimes:
            ph.error("audio back with nothing outstanding")
            return
        ph.rtts.append(now - self.sendtimes.popleft())
        ph.received += 1
        if now <= ph.t_end:
            ph.in_window += 1

    def on_closed(self) -> None:
        self.ph.client_ended(self.error, self.is_ready, "closed before the session was ready")


class AgentClient(_PacedFifo):
    RATE = 16000

    def __init__(self, loop: Loop, host: str, port: int, path: str, ph: PhaseState) -> None:
        pcm = tone_pcm16(20, rate=self.RATE)  # 640 bytes: 20 ms of 16 kHz PCM16
        super().__init__(loop, host, port, path, ph, client_frame(OP_TEXT, agent_settings(self.RATE)),
                         client_frame(OP_BINARY, pcm))

    def on_frame(self, op: int, buf: bytes, start: int, end: int, now: int) -> None:
        if op == OP_BINARY:
            self.audio_back(now)
            return
        head = bytes(buf[start : min(end, start + 64)])
        if b'"Error"' in head or b'"Warning"' in head:
            self.ph.error("translator said: " + bytes(buf[start:end])[:200].decode(errors="replace"))
        elif not self.is_ready and b"SettingsApplied" in head:
            self.set_ready(now)


class RealtimeClient(_PacedFifo):
    RATE = 24000

    def __init__(self, loop: Loop, host: str, port: int, path: str, ph: PhaseState) -> None:
        pcm = tone_pcm16(20, rate=self.RATE)  # 960 bytes: 20 ms of 24 kHz PCM16
        append = b'{"type":"input_audio_buffer.append","audio":"' + base64.b64encode(pcm) + b'"}'
        update = orjson.dumps({"type": "session.update", "event_id": "bench_su", "session": {
            "type": "realtime", "model": "gpt-realtime", "instructions": "You are a benchmark.",
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": self.RATE}}}}})
        super().__init__(loop, host, port, path, ph, client_frame(OP_TEXT, update),
                         client_frame(OP_TEXT, append))

    def on_frame(self, op: int, buf: bytes, start: int, end: int, now: int) -> None:
        if op != OP_TEXT:
            return
        head = bytes(buf[start : min(end, start + 64)])
        if b"output_audio.delta" in head:
            self.audio_back(now)
        elif not self.is_ready and b"session.updated" in head:
            self.set_ready(now)
        elif b'"type":"error"' in head:
            self.ph.error("upstream error: " + bytes(buf[start:end])[:200].decode(errors="replace"))


# ----------------------------------------------------------------------------- setup


class SetupProbe(WsClient):
    """Connect, time the 101 and the upstream greeting, close."""

    def __init__(self, loop: Loop, host: str, port: int, path: str, ph: PhaseState) -> None:
        super().__init__(loop, host, port, path)
        self.ph = ph
        self.t101: int | None = None
        self.t_first: int | None = None
        self.done = False

    def request_path(self) -> str:
        return self.path + ("&" if "?" in self.path else "?") + "greet=1"

    def on_open(self, now: int) -> None:
        self.t101 = now - self.t_start

    def on_frame(self, op: int, buf: bytes, start: int, end: int, now: int) -> None:
        if self.t_first is None:
            self.t_first = now - self.t_start
            self.close()

    def on_closed(self) -> None:
        self.done = True
        if self.error is not None:
            self.ph.error(self.error)
        elif self.t_first is None:
            self.ph.error("closed before the upstream greeting")


def still_open(clients: list) -> int:
    return sum(1 for c in clients if c.state != CLOSED)
