"""Fixtures for the real-browser tests: simulators in a thread, the real gateway serving the
page, and Chromium with a fake microphone. Never skipped: a missing Chromium is installed
(.ci/install-chromium) or the tests fail saying why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Browser, Stack, ensure_chromium


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    ensure_chromium()
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    st = Stack(tmp_path)
    yield st
    for gw in st.gateways:
        gw.stop()
    if st.sims is not None:
        st.sims.stop()


@pytest.fixture
def browser(playwright: Any, tmp_path: Path, stack: Stack) -> Iterator[Browser]:
    b = Browser(playwright, tmp_path, stack)
    yield b
    for context in b.contexts:
        context.close()
