"""`voxgate demo` as a newcomer runs it: no keys, no network, every path, a clear verdict,
and nothing left running afterwards."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest
import trio
from trio_websocket import open_websocket_url

from tests.support.gateway import base_env, pid_alive
from voxgate import demo as demo_module
from voxgate import demo_script

DEMO_TIMEOUT = 90.0


def demo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "voxgate", "demo", *args]


def gateway_pid(output: str) -> int:
    match = re.search(r"gateway pid (\d+)", output)
    assert match, output
    return int(match.group(1))


def test_demo_plays_every_path_and_exits_zero():
    proc = subprocess.run(
        demo_command(), env=base_env(), capture_output=True, text=True, timeout=DEMO_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    lines = out.strip().splitlines()
    assert lines[-1] == "demo: all 7 paths worked"
    total = len(demo_module.STEPS)
    assert total == 7
    for index, step in enumerate(demo_module.STEPS, 1):
        assert re.search(rf"^ok +{index}/{total} {re.escape(step.name)} +{re.escape(step.path)} ", out, re.M), out
    # What each path said, as the transcript shows it (path column, then the event).
    expected = [
        r"/openai +assistant: You said: Hello, voxgate!",
        r"/openai +<- UserStartedSpeaking",
        r"/openai +<- Transcript: audio of 0\.4 seconds",
        r"/openai +assistant: You said: audio of 0\.4 seconds",
        r"/openai +<- FunctionCallRequest: get_weather\(",
        r"/openai +-> FunctionCallResponse: Sunny and 21 degrees in Paris",
        r"/openai +assistant: The function returned: Sunny and 21 degrees in Paris",
        r"/deepgram-proxy +assistant: You said: Hello, Deepgram!",
        r"/deepgram-proxy/v1/listen +<- Results \(final\): tone 0\.4 seconds",
        r"/deepgram-proxy/v1/speak +<- Flushed",
        r"/openai/v1/realtime +<- response\.done; assistant: You said: Hello, Realtime!",
    ]
    for pattern in expected:
        assert re.search(r"^\[ *\d+\.\d ms\] " + pattern, out, re.M), f"{pattern!r} not in:\n{out}"
    assert out.count("<- audio: ") >= 5  # translator x3, agent, speak replies carried audio
    assert not pid_alive(gateway_pid(out))


async def test_a_failing_path_is_reported_bounded_and_exits_one(monkeypatch):
    """One path whose expected reply never comes: that step times out, the others still
    run, the verdict counts it, the exit code is 1 and gateway and workers are stopped.
    Quiet mode: only the per-path results and the verdict."""

    async def never_answered(conv):
        await conv.expect_type("Welcome")
        await conv.expect_type("NoSuchMessage")

    broken = demo_script.Step("never answered", "/openai", "", never_answered, demo_script._describe_agent)
    speak = next(s for s in demo_module.STEPS if s.name == "deepgram speak")
    monkeypatch.setattr(demo_module, "STEPS", (broken, speak))
    monkeypatch.setattr(demo_module, "STEP_TIMEOUT", 1.0)
    started = []
    real_start = demo_module.start_gateway_async

    async def recording_start(env, **kwargs):
        gw = await real_start(env, **kwargs)
        started.append(gw)
        return gw

    monkeypatch.setattr(demo_module, "start_gateway_async", recording_start)
    lines: list[str] = []
    printer = demo_module.Printer(quiet=True, write=lines.append)
    with trio.fail_after(30):
        code = await demo_module.run_demo(demo_module.DemoOptions(), printer)
    assert code == 1
    assert len(lines) == 4, lines
    assert re.match(r"FAIL +1/2 never answered +/openai +timed out after 1 s waiting for NoSuchMessage$", lines[0])
    assert re.match(r"ok +2/2 deepgram speak +/deepgram-proxy/v1/speak +\d+\.\d ms$", lines[1])
    assert lines[2:] == ["", "demo: 1 of 2 paths failed"]
    (gw,) = started
    assert not gw.running()
    assert gw.worker_pids and not any(pid_alive(pid) for pid in gw.worker_pids)


async def test_keep_running_serves_until_sigterm():
    proc = await trio.lowlevel.open_process(
        demo_command("--keep-running"), env=base_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    output = b""
    try:
        with trio.fail_after(DEMO_TIMEOUT):
            while b"Ctrl-C to stop" not in output:
                chunk = await proc.stdout.receive_some(65536)
                assert chunk, f"demo exited early:\n{output.decode()}"
                output += chunk
        text = output.decode()
        assert "demo: all 7 paths worked" in text
        url = re.search(r"^\s+(ws://127\.0\.0\.1:\d+/openai)\s", text, re.M)
        assert url, text
        page = re.search(r"^\s+(http://127\.0\.0\.1:\d+/)\s+browser page", text, re.M)
        assert page, text
        html = await trio.to_thread.run_sync(lambda: urllib.request.urlopen(page.group(1), timeout=5).read())
        assert b'src="/demo/app.js"' in html  # the page the demo printed is served
        gw_pid = gateway_pid(text)

        # The printed URL works: a Voice Agent client is greeted by the translator.
        with trio.fail_after(10):
            async with open_websocket_url(url.group(1), disconnect_timeout=2) as ws:
                welcome = await ws.get_message()
        assert '"Welcome"' in welcome

        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            while chunk := await proc.stdout.receive_some(65536):
                output += chunk
            code = await proc.wait()
        assert code == 0, output.decode()
        assert "demo: stopped (SIGTERM)" in output.decode()
        assert not pid_alive(gw_pid)
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()


@pytest.mark.parametrize("frames_ms", [(400, 400)])
def test_mic_frames_are_20ms_pcm16_at_16khz(frames_ms):
    tone_ms, silence_ms = frames_ms
    frames = demo_script.mic_frames(tone_ms, silence_ms)
    assert len(frames) == (tone_ms + silence_ms) // demo_script.FRAME_MS
    assert {len(f) for f in frames} == {2 * 16000 * demo_script.FRAME_MS // 1000}
    assert any(frames[0]) and not any(frames[-1])


async def test_gateway_that_cannot_start_fails_the_demo_cleanly():
    """--port already taken: one clear line, exit 1, no traceback, nothing left running."""
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        lines: list[str] = []
        with trio.fail_after(30):
            code = await demo_module.run_demo(
                demo_module.DemoOptions(port=port), demo_module.Printer(quiet=True, write=lines.append)
            )
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith("demo: the gateway did not start: ")
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]


def test_launcher_reports_why_the_gateway_did_not_start():
    from voxgate.launcher import LaunchError, clean_env, start_gateway

    with pytest.raises(LaunchError) as err:
        start_gateway(clean_env(), timeout=20)
    assert "exited with code 1" in str(err.value)
    assert "At least one of DEEPGRAM_API_KEY or OPENAI_API_KEY is required" in str(err.value)


def test_on_a_terminal_every_line_is_printed_once():
    """Issue 14 item 8: on a terminal (stdin, stdout and stderr a pty) the summary and the
    per-path results appear exactly once."""
    import os
    import pty
    import select
    import time

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        demo_command("--quiet"), env=base_env(), stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    out = bytearray()
    deadline = time.monotonic() + DEMO_TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=10) == 0, out.decode(errors="replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [line for line in out.decode().replace("\r", "").splitlines() if line.strip()]
    assert lines.count("demo: all 7 paths worked") == 1, lines
    assert len(lines) == len(set(lines)) == len(demo_module.STEPS) + 1, lines
