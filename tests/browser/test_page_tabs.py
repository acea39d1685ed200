"""Two tabs with one client token limited to one session (`--token-max-sessions 1`)."""

from __future__ import annotations

from tests.support.browser import wait_for, wait_line, wait_state

TOKEN = "two-tabs-token-0123456789abcdef"


def _start(stack, policy: str):
    stack.start("--client-token", TOKEN, "--token-max-sessions", "1", "--on-session-limit", policy)


def test_second_tab_is_refused_and_shows_why(stack, browser):
    _start(stack, "reject")
    context = browser.open()
    first = browser.page(f"/?path=/openai&autoconnect=1&mic=0&say=one&token={TOKEN}", context)
    wait_line(first, "assistant", "You said: one")
    second = browser.page(f"/?path=/openai&autoconnect=1&mic=0&say=two&token={TOKEN}", context)
    closed = wait_for(
        lambda: "HTTP 429" in (s := wait_state(second, "closed"))["reason"] and s, "the refusal's reason on the page"
    )
    assert "max_sessions" in closed["reason"]
    assert len(stack.sims.records("openai")) == 1  # the refused tab never reached the upstream
    # the first tab is untouched
    first.fill("#message", "still one")
    first.click("#send")
    wait_line(first, "assistant", "You said: still one")
    assert stack.sessions() == 1


def test_second_tab_replaces_the_first(stack, browser):
    _start(stack, "replace-oldest")
    context = browser.open()
    first = browser.page(f"/?path=/deepgram-proxy&autoconnect=1&mic=0&say=one&token={TOKEN}", context)
    wait_line(first, "assistant", "You said: one")
    (old,) = stack.sims.records("deepgram")
    second = browser.page(f"/?path=/deepgram-proxy&autoconnect=1&mic=0&say=two&token={TOKEN}", context)
    wait_line(second, "assistant", "You said: two")
    closed = wait_state(first, "closed")
    assert (closed["code"], closed["reason"]) == ("1008", "replaced")
    wait_for(old.closed.is_set, "the replaced session's upstream to close")
    wait_for(lambda: stack.sessions() == 1, "one live gateway session")
