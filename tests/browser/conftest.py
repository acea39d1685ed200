"""Fixtures for the real-browser tests: simulators in a thread, the real gateway serving the
page, and Chromium with a fake microphone. Never skipped: a missing Chromium is installed
(.ci/install-chromium) or the tests fail saying why."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Simulators, ensure_chromium, launch, write_mic_wav
from tests.support.gateway import Gateway, base_env, start_gateway
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    yield pw
    pw.stop()


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
        gw_env = base_env(
            OPENAI_API_KEY=OPENAI_KEY,
            OPENAI_REALTIME_URL=f"ws://127.0.0.1:{self.sims.openai.port}/v1/realtime",
            DEEPGRAM_API_KEY=DEEPGRAM_KEY,
            DEEPGRAM_AGENT_URL=f"ws://127.0.0.1:{self.sims.deepgram.port}",
            DEEPGRAM_API_URL=f"ws://127.0.0.1:{self.sims.deepgram.port}",
            VOXGATE_GRACE="1",
            **env,
        )
        gw = start_gateway("--demo-page", *args, env=gw_env)
        self.gateways.append(gw)
        return gw

    @property
    def gw(self) -> Gateway:
        return self.gateways[-1]

    def sessions(self) -> int:
        """Live sessions the gateway counts, over both providers."""
        return sum(s["sessions"] for s in self.gw.ready()["services"].values())


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    st = Stack(tmp_path)
    yield st
    for gw in st.gateways:
        gw.stop()
    if st.sims is not None:
        st.sims.stop()


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


@pytest.fixture
def browser(playwright: Any, tmp_path: Path, stack: Stack) -> Iterator[Browser]:
    b = Browser(playwright, tmp_path, stack)
    yield b
    for context in b.contexts:
        context.close()
