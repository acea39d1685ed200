"""The page as served: only its files, with content types and security headers; off by
default in `serve`; the README's screenshot comes from here."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.support.browser import ROOT, counter, wait_for, wait_line, wait_state
from tests.support.gateway import base_env, start_gateway

SCREENSHOT = ROOT / "docs" / "page.png"


def test_page_files_have_types_and_security_headers(stack):
    gw = stack.start()
    expected = {
        "/": "text/html; charset=utf-8",
        "/demo/app.js": "text/javascript; charset=utf-8",
        "/demo/protocol.js": "text/javascript; charset=utf-8",
        "/demo/pcm-worklet.js": "text/javascript; charset=utf-8",
        "/demo/style.css": "text/css; charset=utf-8",
    }
    for path, content_type in expected.items():
        status, headers, body = gw.http(path)
        assert status == 200 and body, path
        assert headers["Content-Type"] == content_type
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "connect-src 'self'" in headers["Content-Security-Policy"]
    # nothing else of the package is reachable
    for path in ("/demo/", "/demo/../config.py", "/index.html", "/demo/index.html", "/web/app.js"):
        assert gw.http(path)[0] == 404, path
    assert gw.http("/", method="POST")[0] == 404
    # why this client's last upgrade was refused (none yet)
    status, headers, body = gw.http("/demo/refusal")
    assert (status, body) == (200, b"{}") and headers["Content-Type"].startswith("application/json")


def test_page_is_off_by_default_in_serve():
    gw = start_gateway(env=base_env(OPENAI_API_KEY="sk-test-page-off-0123456789"), wait_ready=False)
    try:
        assert gw.http("/")[0] == 404
        assert gw.http("/demo/refusal")[0] == 404
        assert "page http" not in gw.output
    finally:
        gw.stop()


def test_startup_prints_the_page_url(stack):
    gw = stack.start()
    gw.wait_for_output(rf"page http://127\.0\.0\.1:{gw.port}/ ")


def test_screenshot_of_a_conversation(stack, browser):
    """docs/page.png in the README: a spoken and a typed turn on /openai
    (VOXGATE_UPDATE_SCREENSHOT=1 writes it; otherwise the run leaves the checkout alone)."""
    stack.start()
    page = browser.page("/?path=/openai&autoconnect=1")
    wait_line(page, "assistant", "You said: audio of")
    page.fill("#message", "What can I build with voxgate?")
    page.click("#send")
    wait_line(page, "assistant", "You said: What can I build with voxgate?")
    wait_for(lambda: counter(page, "played") >= 2 * 7200, "both replies to play")
    wait_state(page, "connected")
    page.set_viewport_size({"width": 900, "height": 600})
    shot = Path(stack.tmp) / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("VOXGATE_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
    assert SCREENSHOT.is_file(), "run once with VOXGATE_UPDATE_SCREENSHOT=1 and commit docs/page.png"
