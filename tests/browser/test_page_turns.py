"""A person talking through the page: a spoken and a typed turn on each path, in Chromium."""

from __future__ import annotations

import re

import pytest

from tests.support.browser import counter, lines, wait_for, wait_line, wait_state

# The simulators' replies at 24 kHz: OpenAI 300 ms, the Deepgram agent 600 ms.
REPLY_SAMPLES = {"/openai": 7200, "/deepgram-proxy": 14400}


@pytest.mark.parametrize(("path", "rate"), [("/openai", 16000), ("/deepgram-proxy", 24000)])
def test_spoken_and_typed_turn_on_an_agent_path(stack, browser, path, rate):
    reply = REPLY_SAMPLES[path]
    stack.start()
    page = browser.page(f"/?path={path}&autoconnect=1&rate={rate}")
    wait_state(page, "connected")

    # Spoken: the fake microphone plays 800 ms of tone after 600 ms of silence.
    heard = wait_line(page, "user", "audio of ")
    assert 0.6 <= float(re.search(r"audio of ([\d.]+) seconds", heard).group(1)) <= 1.0
    wait_line(page, "assistant", f"You said: {heard}")
    wait_for(lambda: counter(page, "played") == reply, "the spoken reply's audio to play")
    assert int(page.get_attribute("#latency", "data-ms")) >= 0

    # Typed: InjectUserMessage through the form.
    page.fill("#message", "Hello from Chromium")
    page.click("#send")
    wait_line(page, "assistant", "You said: Hello from Chromium")
    wait_for(lambda: counter(page, "played") == 2 * reply, "the typed reply's audio to play")
    assert lines(page, "user")[-1] == "Hello from Chromium"
    assert counter(page, "received") == 2 * reply
    assert page.get_attribute("#played", "data-runs") == "2"  # each reply played without a gap

    # What the upstream saw: microphone PCM16 at the declared rate, then the typed text.
    if path == "/openai":
        (record,) = stack.sims.records("openai")
        sent = record.received_json()
        assert any(e["type"] == "input_audio_buffer.append" for e in sent)
        texts = [c.get("text") for e in sent if e["type"] == "conversation.item.create"
                 for c in e["item"].get("content", [])]
        assert "Hello from Chromium" in texts
    else:
        (record,) = stack.sims.records("deepgram", "/v1/agent/converse")
        settings = record.received_json()[0]
        assert settings["type"] == "Settings"
        assert settings["audio"]["input"] == {"encoding": "linear16", "sample_rate": rate}
        sizes = {len(f.data) for f in record.received if f.kind == "binary"}
        assert sizes == {2 * rate // 50}  # 20 ms frames of PCM16 at the declared rate
        assert {"type": "InjectUserMessage", "content": "Hello from Chromium"} in record.received_json()


def test_spoken_turn_on_the_listen_path(stack, browser):
    """Transcription has no agent: the spoken turn shows the transcript, the typed box stays off."""
    stack.start()
    page = browser.page("/?path=/deepgram-proxy/v1/listen&autoconnect=1")
    wait_state(page, "connected")
    heard = wait_line(page, "user", "tone ")
    assert 0.6 <= float(re.search(r"tone ([\d.]+) seconds", heard).group(1)) <= 1.0
    assert page.is_disabled("#message") and page.is_disabled("#send")
    (record,) = stack.sims.records("deepgram", "/v1/listen")
    assert record.query_value("sample_rate") == "16000" and record.query_value("encoding") == "linear16"
    assert {len(f.data) for f in record.received if f.kind == "binary"} == {640}


def test_client_token_from_the_page(stack, browser):
    """With --client-token the page's token field admits the session; without it the page
    shows the refusal. The token never reaches the upstream."""
    token = "page-token-0123456789abcdef"
    stack.start("--client-token", token)
    refused = browser.page("/?path=/deepgram-proxy&autoconnect=1&mic=0")
    closed = wait_for(lambda: "HTTP 401" in (s := wait_state(refused, "closed"))["reason"] and s,
                      "the refusal's reason on the page")
    assert "token_missing" in closed["reason"]
    assert stack.sims.records("deepgram") == []

    page = browser.page(f"/?path=/deepgram-proxy&autoconnect=1&mic=0&say=hi&token={token}")
    wait_line(page, "assistant", "You said: hi")
    (record,) = stack.sims.records("deepgram")
    seen = repr((record.path, record.query, record.headers, record.subprotocols))
    assert token not in seen
    assert token not in stack.gw.output
