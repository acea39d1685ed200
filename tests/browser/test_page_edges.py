"""The edge cases browsers create: refresh, rapid connect/disconnect, background, silence,
the network dropping."""

from __future__ import annotations

import time

from tests.support.browser import (
    page_state,
    set_hidden,
    wait_for,
    wait_line,
    wait_state,
)


def test_refresh_closes_the_old_session_and_the_new_one_works(stack, browser):
    stack.start()
    page = browser.page("/?path=/openai&autoconnect=1&mic=0&say=first")
    wait_line(page, "assistant", "You said: first")
    (old,) = stack.sims.records("openai")
    assert stack.sessions() == 1

    page.reload()
    # within 2 s the old session is over at the gateway and at the upstream
    wait_for(lambda: old.closed.is_set() and "session closed" in stack.gw.output,
             "the old session to close at the gateway and upstream", timeout=2.0)
    assert old.close_code == 1000
    # the reloaded page said it again, on a new session, and only that one is live
    wait_line(page, "assistant", "You said: first")
    assert len(stack.sims.records("openai")) == 2
    wait_for(lambda: stack.sessions() == 1, "one live gateway session")


def test_fifty_rapid_connect_disconnect_cycles_leave_nothing_behind(stack, browser):
    stack.start()
    page = browser.page("/?path=/openai&mic=0")
    for _ in range(50):
        page.click("#connect")
        page.click("#disconnect")
    assert page_state(page)["state"] == "closed"
    wait_for(lambda: stack.sessions() == 0, "no gateway session left", timeout=10)
    wait_for(lambda: not stack.sims.open_upstreams(), "no upstream connection left", timeout=10)
    assert stack.sims.records("openai"), "the cycles never reached the upstream"
    # and the page still works afterwards
    page.click("#connect")
    wait_state(page, "connected")
    wait_for(lambda: not page.is_disabled("#message"), "the typed box to open")
    page.fill("#message", "still here")
    page.click("#send")
    wait_line(page, "assistant", "You said: still here")


def test_offline_and_back_the_page_shows_the_close_and_reconnects(stack, browser):
    stack.start()
    context = browser.open()
    page = browser.page("/?path=/openai&autoconnect=1&mic=0", context)
    wait_state(page, "connected")
    # the page is connected at the gateway's Welcome; its upstream opens just after
    wait_for(lambda: len(stack.sims.records("openai")) == 1, "the first session's upstream")
    context.set_offline(True)
    closed = wait_state(page, "closed", timeout=10)
    assert closed["code"] == "1006" and closed["reason"] == "network offline"
    context.set_offline(False)
    wait_state(page, "connected", timeout=15)
    page.fill("#message", "back online")
    page.click("#send")
    wait_line(page, "assistant", "You said: back online")
    # the dropped session did not linger: one session at the gateway, the old upstream closed
    old, new = stack.sims.records("openai")
    wait_for(old.closed.is_set, "the dropped session's upstream to close")
    assert not new.closed.is_set()
    wait_for(lambda: stack.sessions() == 1, "one live gateway session")


HIDDEN_S = 5.0  # 2.5x the configured timeouts: long enough for every close to happen
BACKGROUND_S = 30.0  # a phone in a pocket (issue 13): 15x the idle timeout, kept by KeepAlive
IDLE_S = "2"


def _stays_connected(page, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert page_state(page)["state"] == "connected", page_state(page)
        time.sleep(0.1)


def test_backgrounded_page_stays_alive_through_keepalive(stack, browser):
    """Hidden like a phone in a pocket: the page stops sending microphone audio (as mobile
    browsers do) and KeepAlive keeps the session past the gateway's idle timeout."""
    stack.start("--idle-timeout", IDLE_S)
    page = browser.page("/?path=/deepgram-proxy&autoconnect=1&background=pause&keepalive=0.5&say=before")
    wait_line(page, "assistant", "You said: before")
    (record,) = stack.sims.records("deepgram", "/v1/agent/converse")
    set_hidden(page, True)
    time.sleep(0.3)  # frames already in flight when the page went hidden
    frames_when_hidden = len([f for f in record.received if f.kind == "binary"])
    _stays_connected(page, BACKGROUND_S)
    assert len([f for f in record.received if f.kind == "binary"]) == frames_when_hidden
    assert sum(m.get("type") == "KeepAlive" for m in record.received_json()) >= 30
    assert not record.closed.is_set()
    set_hidden(page, False)
    page.fill("#message", "after")
    page.click("#send")
    wait_line(page, "assistant", "You said: after")


def test_backgrounded_page_without_keepalive_shows_the_gateway_close(stack, browser):
    stack.start("--idle-timeout", IDLE_S)
    page = browser.page("/?path=/openai&autoconnect=1&background=pause&keepalive=0")
    wait_state(page, "connected")
    set_hidden(page, True)
    closed = wait_state(page, "closed", timeout=HIDDEN_S)
    assert (closed["code"], closed["reason"]) == ("1000", "idle_timeout")
    (record,) = stack.sims.records("openai")
    wait_for(record.closed.is_set, "the upstream connection to close")


def test_long_silence_on_listen_stays_alive_through_keepalive(stack, browser):
    """A silent microphone with gate=1 sends nothing; KeepAlive keeps the transcription open
    past Deepgram's no-audio timeout (NET-0001, 2 s in this simulator)."""
    stack.start(listen_idle_timeout=2.0)
    page = browser.page("/?path=/deepgram-proxy/v1/listen&autoconnect=1&gate=1&keepalive=0.5", speech_ms=0)
    wait_state(page, "connected")
    _stays_connected(page, HIDDEN_S)
    (record,) = stack.sims.records("deepgram", "/v1/listen")
    assert not record.closed.is_set()
    assert not [f for f in record.received if f.kind == "binary"]
    assert sum(m.get("type") == "KeepAlive" for m in record.received_json()) >= 4


def test_long_silence_on_listen_without_keepalive_shows_why_it_closed(stack, browser):
    stack.start(listen_idle_timeout=2.0)
    page = browser.page("/?path=/deepgram-proxy/v1/listen&autoconnect=1&gate=1&keepalive=0", speech_ms=0)
    wait_state(page, "connected")
    closed = wait_state(page, "closed", timeout=HIDDEN_S)
    assert closed["code"] == "1011" and "NET-0001" in closed["reason"], closed
