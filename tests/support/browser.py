"""Real Chromium (Debian's `chromium`) driven by Playwright for Python, for the page tests.

No browser is downloaded: Playwright launches the system executable. The simulators run in
their own trio loop in a thread (Playwright's sync API owns the test's thread), so a test can
read what the simulated upstreams saw while the browser talks through a real gateway.
"""

from __future__ import annotations

import os
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from tests.support.gateway import Gateway, gateway_env, start_gateway
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY
from tests.support.trio_thread import TrioThread
from voxgate.simulate.audio import tone_pcm16

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("VOXGATE_CHROMIUM", "/usr/bin/chromium")
INSTALL_SCRIPT = ROOT / ".ci" / "install-chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # tests open pages without a click; a person's click does the same for the AudioContext
    "--autoplay-policy=no-user-gesture-required",
]
MIC_RATE = 48000


def ensure_chromium() -> str:
    """The Chromium executable; installs Debian's package (.ci/install-chromium) when missing."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        result = subprocess.run(
            [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL
        )
        if result.returncode != 0 or not os.path.isfile(CHROMIUM):
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise RuntimeError(f"Chromium is missing and {INSTALL_SCRIPT.name} failed: {' | '.join(tail)}")
    return CHROMIUM


def write_mic_wav(path: Path, *, lead_ms: int = 600, speech_ms: int = 800, total_ms: int = 60_000) -> Path:
    """The fake microphone: silence, a 440 Hz tone standing in for speech, then silence
    (Chromium loops the file; `total_ms` keeps the loop past the end of a test).
    `speech_ms=0` is a silent microphone."""
    n_lead, n_speech = MIC_RATE * lead_ms // 1000, MIC_RATE * speech_ms // 1000
    n_total = max(MIC_RATE * total_ms // 1000, n_lead + n_speech)
    tone = tone_pcm16(speech_ms, rate=MIC_RATE)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE)
        out.writeframes(bytes(2 * n_lead) + tone + bytes(2 * (n_total - n_lead - n_speech)))
    return path


def launch(playwright: Any, user_data_dir: Path, wav: Path) -> Any:
    """A fresh persistent Chromium context (its own --user-data-dir) with a fake microphone."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=ensure_chromium(),
        headless=True,
        args=[*CHROMIUM_FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
        ignore_default_args=["--mute-audio"],
        viewport={"width": 900, "height": 900},
    )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


# ---------------------------------------------------------------------------------------
# What the page shows


def page_state(page: Any) -> dict[str, str]:
    """The connection state element: state, close code, close reason."""
    return page.evaluate(
        """() => ({state: document.getElementById('state').dataset.state,
                   code: document.getElementById('close-code').dataset.code,
                   reason: document.getElementById('close-reason').textContent})"""
    )


def lines(page: Any, role: str | None = None) -> list[str]:
    """Final transcript lines (of one role)."""
    return page.evaluate(
        """(role) => [...document.querySelectorAll('#transcript li[data-final=true]')]
               .filter(li => !role || li.dataset.role === role).map(li => li.textContent)""",
        role,
    )


def counter(page: Any, element_id: str) -> int:
    return int(page.get_attribute(f"#{element_id}", "data-samples") or 0)


def wait_state(page: Any, state: str, timeout: float = 10.0) -> dict[str, str]:
    return wait_for(lambda: (s := page_state(page))["state"] == state and s, f"page state {state!r}", timeout)


def wait_line(page: Any, role: str, contains: str, timeout: float = 10.0) -> str:
    return wait_for(
        lambda: next((t for t in lines(page, role) if contains in t), None),
        f"a {role} line with {contains!r}", timeout,
    )


def set_hidden(page: Any, hidden: bool) -> None:
    """Emulate the page going to the background (or back): visibilityState + the event."""
    page.evaluate(
        """(hidden) => {
            Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => hidden ? 'hidden' : 'visible'});
            Object.defineProperty(document, 'hidden', {configurable: true, get: () => hidden});
            document.dispatchEvent(new Event('visibilitychange'));
        }""",
        hidden,
    )


# ---------------------------------------------------------------------------------------
# Simulated upstreams in a thread


class Simulators(TrioThread):
    """OpenAI and Deepgram simulators on free loopback ports, in a trio loop of their own."""

    name = "simulators"

    def __init__(self, *, openai_key: str, deepgram_key: str, listen_idle_timeout: float = 10.0) -> None:
        from voxgate.simulate.deepgram.server import DeepgramSimulator
        from voxgate.simulate.openai.server import OpenAISimulator

        super().__init__()
        self.openai = OpenAISimulator(api_key=openai_key)
        self.deepgram = DeepgramSimulator(api_key=deepgram_key, listen_idle_timeout=listen_idle_timeout)

    def start(self) -> Simulators:
        self.start_thread()
        return self

    async def serve(self, started: Callable[[], None]) -> None:
        async with trio.open_nursery() as nursery:
            self.openai.port = await nursery.start(self.openai.serve)
            self.deepgram.port = await nursery.start(self.deepgram.serve)
            started()

    def records(self, provider: str, path_suffix: str = "") -> list[Any]:
        sim = self.openai if provider == "openai" else self.deepgram
        return [r for r in list(sim.connections) if r.status == 101 and r.path.endswith(path_suffix)]

    def open_upstreams(self) -> list[Any]:
        """Accepted upstream connections not yet over, on both simulators."""
        return [r for p in ("openai", "deepgram") for r in self.records(p) if not r.closed.is_set()]


# ---------------------------------------------------------------------------------------
# What the fixtures (tests/browser/conftest.py) hand a test


@dataclass
class Stack:
    """Simulators + a gateway with the page on, started per test with that test's options."""

    tmp: Path
    sims: Simulators | None = None
    gateways: list[Gateway] = field(default_factory=list)

    def start(self, *args: str, listen_idle_timeout: float = 10.0, **env: str) -> Gateway:
        self.sims = Simulators(
            openai_key=OPENAI_KEY, deepgram_key=DEEPGRAM_KEY, listen_idle_timeout=listen_idle_timeout
        ).start()
        gw_env = gateway_env(self.sims.openai, self.sims.deepgram, VOXGATE_GRACE="1", **env)
        gw = start_gateway("--demo-page", *args, env=gw_env)
        self.gateways.append(gw)
        return gw

    @property
    def gw(self) -> Gateway:
        return self.gateways[-1]

    def sessions(self) -> int:
        """Live sessions the gateway counts, over both providers."""
        return sum(s["sessions"] for s in self.gw.ready()["services"].values())


@dataclass
class Browser:
    """One Chromium per test (fresh --user-data-dir); `page(url_path)` opens a tab."""

    playwright: Any
    tmp: Path
    stack: Stack
    contexts: list[Any] = field(default_factory=list)

    def open(self, *, speech_ms: int = 800, lead_ms: int = 600) -> Any:
        wav = write_mic_wav(self.tmp / f"mic-{len(self.contexts)}.wav", lead_ms=lead_ms, speech_ms=speech_ms)
        context = launch(self.playwright, self.tmp / f"profile-{len(self.contexts)}", wav)
        self.contexts.append(context)
        return context

    def page(self, target: str, context: Any = None, **mic: int) -> Any:
        context = context or self.open(**mic)
        page = context.pages[0] if context.pages and context.pages[0].url == "about:blank" else context.new_page()
        page.goto(self.stack.gw.url(target, "http"))
        return page
