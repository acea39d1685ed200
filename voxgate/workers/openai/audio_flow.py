"""Audio through the translator: client audio appended upstream under the commit policy
(server VAD, or manual commit R10 with its thresholds and timers), and upstream audio converted
to the client's output format.

Kept apart from the response rules because the commit policy is its own small state machine:
pending bytes, a first-commit threshold, two timers, and silence padding (D26).
"""

from __future__ import annotations

import binascii
from typing import TYPE_CHECKING

from voxgate.workers.openai.actions import (
    TIMER_COMMIT_COALESCE,
    TIMER_COMMIT_DEBOUNCE,
    Outbox,
    dumps,
    simple,
)
from voxgate.workers.openai.audio import OPENAI_RATE, StreamResampler, silence
from voxgate.workers.openai.settings_map import (
    DEFAULT_INPUT,
    DEFAULT_OUTPUT,
    AudioFormat,
    SessionPlan,
)

if TYPE_CHECKING:
    from voxgate.workers.openai.responses import Responses

__all__ = ["InputAudio", "OutputAudio", "MAX_APPEND_BYTES"]

COMMIT_DEBOUNCE_SECONDS = 0.4
COMMIT_COALESCE_SECONDS = 0.6
MIN_COMMIT_BYTES = 4800  # 100 ms at 24 kHz PCM16
MIN_FIRST_COMMIT_BYTES = 48000  # 1 s at 24 kHz PCM16
MAX_APPEND_BYTES = 15 * 1024 * 1024
COMMIT = simple("input_audio_buffer.commit")


def append_event(pcm: bytes) -> str:
    """`input_audio_buffer.append` for one chunk of upstream-format audio."""
    # base64 needs no JSON escaping, so the frame is assembled without a dict round trip;
    # binascii directly: base64.b64encode is a Python wrapper around the same call.
    audio = binascii.b2a_base64(pcm, newline=False).decode("ascii")
    return '{"type":"input_audio_buffer.append","audio":"' + audio + '"}'


class InputAudio:
    """Client audio -> `input_audio_buffer.append`, and when to commit it (R10, D3, D4, D26)."""

    def __init__(self, outbox: Outbox, responses: Responses) -> None:
        self._outbox = outbox
        self._responses = responses
        self.server_vad = True  # D31; manual commit only behind the test flag
        self.format: AudioFormat = DEFAULT_INPUT
        self._resampler: StreamResampler | None = StreamResampler(16000, OPENAI_RATE)
        self._pending = 0  # 24 kHz bytes appended since the last commit (manual mode)
        self._first_commit_done = False

    def configure(self, plan: SessionPlan) -> None:
        """Take the input format and turn-taking mode of an accepted Settings."""
        self.server_vad = plan.server_vad
        self.format = plan.input_format
        if plan.input_format.is_linear16 and plan.input_format.sample_rate != OPENAI_RATE:
            self._resampler = StreamResampler(plan.input_format.sample_rate, OPENAI_RATE)
        else:
            self._resampler = None

    def feed(self, data: bytes) -> None:
        """One client audio frame once the session is ready."""
        if self.append(data):
            self.schedule_commit()

    def append(self, data: bytes) -> bool:
        """Append one client frame upstream (D3, D4); True when something was sent."""
        if self.format.is_linear16:
            if len(data) % 2:
                self._outbox.error(
                    "invalid_audio_frame",
                    "Binary audio frame has an odd byte length; it was dropped.",
                )
                return False
            resampler = self._resampler
            size = len(data) if resampler is None else resampler.output_size(len(data))
        else:
            resampler = None
            size = len(data)
        if size > MAX_APPEND_BYTES:
            self._outbox.error(
                "audio_frame_too_large",
                "Binary audio frame is too large for one append; it was dropped.",
            )
            return False
        pcm = data if resampler is None else resampler.push(data)
        if not pcm:
            return False
        self._outbox.to_upstream(append_event(pcm))
        if not self.server_vad:
            self._pending += len(pcm)
        return True

    def _threshold(self) -> int:
        return MIN_COMMIT_BYTES if self._first_commit_done else MIN_FIRST_COMMIT_BYTES

    def schedule_commit(self) -> None:
        if self.server_vad or self._pending <= 0:
            return
        self._outbox.arm(TIMER_COMMIT_DEBOUNCE, COMMIT_DEBOUNCE_SECONDS)
        if (
            self._pending >= self._threshold()
            and not self._responses.active
            and not self._outbox.armed(TIMER_COMMIT_COALESCE)
        ):
            self._outbox.arm(TIMER_COMMIT_COALESCE, COMMIT_COALESCE_SECONDS)

    def try_commit(self) -> None:
        """A commit timer fired: commit and ask for a response, if nothing stands in the way."""
        if (
            self.server_vad
            or self._responses.active
            or self._responses.deferred_armed
            or self._pending < self._threshold()
            or not self._outbox.upstream_open
        ):
            return  # not re-armed: the next append, response end or close does that
        self._outbox.cancel(TIMER_COMMIT_DEBOUNCE)
        self._outbox.cancel(TIMER_COMMIT_COALESCE)
        self._outbox.log(
            "info", "input_audio_buffer.commit + response.create", bytes=self._pending
        )
        self._outbox.to_upstream(COMMIT)
        self._pending = 0
        self._first_commit_done = True
        self._responses.send_create("audio-commit")

    def _pad_pending(self) -> None:
        """Top a sub-threshold tail up with silence to the current threshold (D26)."""
        missing = self._threshold() - self._pending
        if self._pending > 0 and missing > 0:
            self._outbox.to_upstream(append_event(silence(missing)))
            self._pending += missing

    def after_response(self, ready: bool) -> None:
        """R10a: a response ended; audio that arrived meanwhile gets its commit."""
        if not self.server_vad and ready:
            self._pad_pending()
            self.schedule_commit()

    def flush_on_close(self, ready: bool) -> None:
        """R10b: the client left with uncommitted audio; commit it and ask for the answer."""
        if (
            self.server_vad
            or not ready
            or not self._outbox.upstream_open
            or self._responses.active
            or self._pending <= 0
        ):
            return
        self._pad_pending()
        self._outbox.to_upstream(COMMIT)
        self._outbox.to_upstream(
            dumps({"type": "response.create", "event_id": self._outbox.next_event_id("rc")})
        )
        self._outbox.log("info", "flushed pending audio on client close", bytes=self._pending)
        self._pending = 0


class OutputAudio:
    """Upstream audio deltas -> client binary frames in the client's output format."""

    def __init__(self) -> None:
        self.format: AudioFormat = DEFAULT_OUTPUT  # as the client hears it
        self._resampler: StreamResampler | None = None
        self._carry = b""
        self._bytes_per_ms = 48  # upstream output audio: 24 kHz PCM16

    def configure(self, plan: SessionPlan) -> None:
        """Take the output format of an accepted Settings."""
        self.format = plan.output_format
        out_type = plan.session["audio"].get("output", {}).get("format", {}).get("type")
        self._bytes_per_ms = 8 if out_type in ("audio/pcmu", "audio/pcma") else 48
        convert = not plan.output_passthrough and plan.output_format.is_linear16
        if convert and plan.output_format.sample_rate != OPENAI_RATE:
            self._resampler = StreamResampler(OPENAI_RATE, plan.output_format.sample_rate)
        else:
            self._resampler = None

    def convert(self, pcm: bytes) -> bytes:
        """One decoded delta as the client hears it (an odd byte waits for the next delta)."""
        if self._resampler is None:
            return pcm
        if self._carry or len(pcm) & 1:
            data = self._carry + pcm
            cut = len(data) & ~1
            self._carry = data[cut:]
            pcm = data[:cut]
        return self._resampler.push(pcm)

    def milliseconds(self, upstream_bytes: int) -> int:
        """How much audio that many upstream-format bytes are (for a truncate)."""
        return upstream_bytes // self._bytes_per_ms
