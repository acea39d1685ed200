"""The page's refusal memory: per client IP, the latest only, bounded in age and entries."""

from __future__ import annotations

from voxgate.supervisor.page import REFUSAL_KEEP, REFUSAL_TTL, Refusals, load_page


def test_latest_refusal_per_ip_expires():
    r = Refusals()
    r.note("10.0.0.1", 401, {"error": "token_missing", "message": "A client token is required"}, now=100.0)
    r.note("10.0.0.1", 429, {"error": "budget", "message": "used up"}, now=101.0)
    assert r.recent("10.0.0.1", now=102.0) == {"status": 429, "error": "budget", "message": "used up"}
    assert r.recent("10.0.0.2", now=102.0) == {}
    assert r.recent("10.0.0.1", now=101.0 + REFUSAL_TTL + 0.1) == {}


def test_memory_is_bounded():
    r = Refusals()
    for i in range(REFUSAL_KEEP + 10):
        r.note(f"ip{i}", 429, {"error": "x", "message": ""}, now=1.0)
    assert r.recent("ip0", now=1.0) == {}
    assert r.recent(f"ip{REFUSAL_KEEP + 9}", now=1.0)["status"] == 429


def test_page_files_ship_in_the_package():
    page = load_page()
    assert set(page) == {"/", "/demo/app.js", "/demo/protocol.js", "/demo/pcm-worklet.js", "/demo/style.css"}
    html = page["/"][0].decode()
    assert 'src="/demo/app.js"' in html and "http" not in html.split("<body>")[0].replace("http-equiv", "")
