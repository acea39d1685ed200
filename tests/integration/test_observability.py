"""Logs and metrics (issue 6 §2, §3): one line per session event with session and trace
ids, JSON logs on request, Prometheus metrics that move while sessions run."""

from __future__ import annotations

import json
import re

import trio
import trio_websocket as tws

from tests.support.gateway import astop, base_env, echo_env, run_cli
from tests.support.keys import OPENAI_KEY
from tests.support.rawws import RawClient


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def scrape(gw) -> str:
    status, headers, body = await trio.to_thread.run_sync(gw.http, "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    return body.decode()


async def test_metrics_move_during_a_session(gateway_factory, echo):
    gw = await gateway_factory("--allowed-origin", "https://ok.example", env=echo_env(echo))
    before = await scrape(gw)
    assert metric(before, "voxgate_workers", provider="deepgram", state="ready") == 1
    async with tws.open_websocket_url(gw.url("/deepgram-proxy?traceId=trace-42"),
                                      extra_headers=[(b"Origin", b"https://ok.example")]) as ws:
        for _ in range(10):
            await ws.send_message(b"x" * 100)
            assert await ws.get_message() == b"x" * 100
        during = await scrape(gw)
        assert metric(during, "voxgate_sessions_active", provider="deepgram", route="agent") == 1
        assert metric(during, "voxgate_sessions_total", provider="deepgram", route="agent") == 1
        with trio.fail_after(5):  # frame counts arrive with the next heartbeat (1 s)
            while metric(during, "voxgate_frames_total", provider="deepgram", direction="up") < 10:
                await trio.sleep(0.2)
                during = await scrape(gw)
        assert metric(during, "voxgate_bytes_total", provider="deepgram", direction="down") >= 1000
        assert metric(during, "voxgate_upstream_connect_seconds_count", provider="deepgram") >= 1
    rejected = await RawClient.connect(gw.port, "/deepgram-proxy", headers=[("Origin", "https://evil.example")])
    assert rejected.status == 403
    await rejected.aclose()
    with trio.fail_after(5):
        while True:
            after = await scrape(gw)
            if metric(after, "voxgate_closes_total", provider="deepgram", code="1000") >= 1:
                break
            await trio.sleep(0.2)
    assert metric(after, "voxgate_sessions_active", provider="deepgram") == 0
    assert metric(after, "voxgate_admission_rejections_total", reason="origin") == 1
    # session lines carry the session id and the client's trace id; no payloads
    accepted = re.search(r"session accepted sid=(\w+) trace=trace-42", gw.output)
    assert accepted
    closed = re.search(rf"session closed sid={accepted.group(1)} trace=trace-42 .*frames_up=10", gw.output)
    assert closed and "xxxxxxxx" not in gw.output


async def test_json_logs_and_trace_header(gateway_factory, echo):
    gw = await gateway_factory("--log-format", "json", env=echo_env(echo))
    async with tws.open_websocket_url(gw.url("/openai/v1/realtime"), extra_headers=[(b"X-Trace-Id", b"hdr-trace")]) as ws:
        await ws.send_message("hi")
        await ws.get_message()
    with trio.fail_after(5):
        while "session closed" not in gw.output:
            await trio.sleep(0.05)
    events = [json.loads(line) for line in gw.stderr if line.startswith("{")]
    closed = [e for e in events if e["event"] == "session closed"]
    assert closed and closed[0]["trace"] == "hdr-trace" and closed[0]["proc"] == "worker.openai"
    assert closed[0]["frames_up"] == 1 and "duration" in closed[0]


def json_objects(lines: list[str]) -> list[dict]:
    """Every non-blank line as a JSON object (fails on the first line that is not one)."""
    out = []
    for line in "".join(lines).splitlines():
        if line.strip():
            obj = json.loads(line)
            assert isinstance(obj, dict), line
            out.append(obj)
    return out


async def test_json_mode_every_line_on_both_streams_is_a_json_object(gateway_factory, echo):
    """Issue 14 item 5: startup notes, endpoints and the listening line are JSON too."""
    env = echo_env(echo)
    env.pop("DEEPGRAM_API_KEY", None)
    gw = await gateway_factory("--log-format", "json", env=env)
    async with tws.open_websocket_url(gw.url("/openai/v1/realtime")) as ws:
        await ws.send_message("hi")
        await ws.get_message()
    with trio.fail_after(5):
        while "session closed" not in gw.output:
            await trio.sleep(0.05)
    assert await astop(gw) == 0
    out, err = json_objects(gw.stdout), json_objects(gw.stderr)
    assert [e["event"] for e in out if e["event"] != "endpoint"] == ["note", "note", "listening"]
    endpoints = {e["url"].rsplit(":", 1)[1]: e for e in out if e["event"] == "endpoint"}
    assert endpoints[f"{gw.port}/openai"]["state"] == "live"
    flux = endpoints[f"{gw.port}/deepgram-proxy/v2/listen"]
    assert flux["state"] == "off" and flux["reason"] == "DEEPGRAM_API_KEY not set"
    assert flux["description"].startswith("Deepgram Flux")
    listening = out[-1]
    assert listening["port"] == gw.port and listening["pid"] == gw.pid and listening["level"] == "info"
    assert {"session closed", "stopped"} <= {e["event"] for e in err}
    # Item 8: a clean shutdown is routine: the drained worker's exit 0 is not a warning.
    exits = [e for e in err if e["event"] == "worker exited"]
    assert exits and all(e["level"] == "info" and e["status"] == "exit 0" for e in exits)
    assert [e for e in err if e["level"] != "info"] == []


def test_json_mode_errors_are_json():
    env = base_env(OPENAI_API_KEY=OPENAI_KEY)
    for args in (("--port", "70000"), ("--log-format=json", "--proxy-path", "nope")):
        result = run_cli("serve", "--log-format", "json", *args, env=env)
        assert result.returncode == 2 and result.stdout == ""
        [error] = json_objects([result.stderr])
        assert error["level"] == "error" and ("--port" in error["message"] or "nope" in error["message"])
