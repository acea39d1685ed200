"""The supervisor (issue 2 §4, §6, §7): plain HTTP, head limits, hand-off, restarts,
isolation between providers, shutdown. The real gateway runs as a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
import trio
import trio_websocket as tws

from tests.support.gateway import base_env, echo_env, pid_alive
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY
from tests.support.rawws import RawClient


async def raw_http(port: int, data: bytes, *, close_after: bool = False) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    out = bytearray()
    with trio.fail_after(15):
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            out += chunk
    await stream.aclose()
    return bytes(out)


async def test_plain_http_routes(gateway_factory):
    gw = await gateway_factory(env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    for path in ("/healthz", "/health"):
        status, headers, body = gw.http(path)
        assert status == 200 and json.loads(body) == {"status": "ok"}
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    for path in ("/readyz", "/ready"):
        status, _, body = gw.http(path)
        data = json.loads(body)
        assert status == 200 and data["ready"] is True and data["port"] == gw.port and data["https"] is False
    assert gw.http("/nope")[0] == 404
    assert gw.http("/")[0] == 404
    assert gw.http("/openai")[0] == 426  # plain GET on a WebSocket path
    assert gw.http("/healthz", method="POST", body=b"x")[0] == 404


async def test_head_limits_and_bad_requests(gateway_factory):
    gw = await gateway_factory("--head-timeout", "0.5", env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    assert (await raw_http(gw.port, big)).startswith(b"HTTP/1.1 431 ")
    slow = await raw_http(gw.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    assert slow.startswith(b"HTTP/1.1 408 ")
    assert (await raw_http(gw.port, b"\x16\x03\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
    client = await RawClient.connect(gw.port, "/not-a-route")
    assert client.status == 404
    await client.aclose()
    assert gw.http("/healthz")[0] == 200


async def test_client_disconnecting_mid_handoff_hurts_nobody(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo))
    for _ in range(20):
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        from tests.support.rawws import upgrade_request

        await stream.send_all(upgrade_request("/deepgram-proxy"))
        await stream.aclose()
    async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws:
        await ws.send_message("still here")
        with trio.fail_after(5):
            assert await ws.get_message() == "still here"
    assert gw.ready()["_status"] == 200


async def stream_frames(url: str, count: int, interval: float, results: dict, started: trio.Event) -> None:
    async with tws.open_websocket_url(url) as ws:
        for i in range(count):
            await ws.send_message(f"frame-{i}")
            if i == 5:
                started.set()
            results.setdefault("echo", []).append(await ws.get_message())
            await trio.sleep(interval)


async def test_killed_worker_respawns_and_other_provider_loses_nothing(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo))
    [openai_worker] = gw.workers("openai")
    results: dict = {}
    started = trio.Event()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream_frames, gw.url("/deepgram-proxy"), 150, 0.01, results, started)
            await started.wait()
            os.kill(openai_worker["pid"], signal.SIGKILL)
            # the killed provider is back within a couple of seconds
            deadline = trio.current_time() + 5
            while trio.current_time() < deadline:
                workers = await trio.to_thread.run_sync(gw.workers, "openai")
                if workers and workers[0]["pid"] != openai_worker["pid"] and workers[0]["state"] == "ready":
                    break
                await trio.sleep(0.05)
            else:
                raise AssertionError("openai worker not respawned")
            async with tws.open_websocket_url(gw.url("/openai/v1/realtime")) as ws:
                await ws.send_message("after restart")
                assert await ws.get_message() == "after restart"
    assert results["echo"] == [f"frame-{i}" for i in range(150)]
    assert re.search(r"worker exited provider=openai .*status=SIGKILL", gw.output)
    gw.remember_workers(gw.ready())


async def test_crash_loop_backs_off_and_never_gives_up(gateway_factory):
    gw = await gateway_factory(env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    killed = set()
    with trio.fail_after(20):
        while len(killed) < 5:
            workers = await trio.to_thread.run_sync(gw.workers, "openai")
            for worker in workers:
                if worker["pid"] not in killed:
                    killed.add(worker["pid"])
                    os.kill(worker["pid"], signal.SIGKILL)
            await trio.sleep(0.01)
    delays = [float(d) for d in re.findall(r"worker restarting provider=openai .*delay=([\d.]+)s", gw.output)]
    assert len(delays) >= 4
    assert delays[:4] == sorted(delays[:4]) and delays[3] >= delays[0] * 4  # doubling
    # while it restarts, a new session waits briefly, then gets a worker or a 503 + Retry-After
    await trio.to_thread.run_sync(gw.wait_ready)
    assert gw.ready()["services"]["openai"]["restarts"] >= 5
    assert gw.proc.poll() is None


async def test_hung_worker_is_killed_and_respawned(gateway_factory):
    gw = await gateway_factory("--worker-timeout", "1", env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    [worker] = gw.workers("openai")
    os.kill(worker["pid"], signal.SIGSTOP)
    try:
        with trio.fail_after(10):
            while True:
                workers = await trio.to_thread.run_sync(gw.workers, "openai")
                if workers and workers[0]["pid"] != worker["pid"] and workers[0]["state"] == "ready":
                    break
                await trio.sleep(0.1)
        assert "worker hung, killing" in gw.output
        assert not pid_alive(worker["pid"])
    finally:
        if pid_alive(worker["pid"]):
            os.kill(worker["pid"], signal.SIGKILL)


async def test_no_worker_ready_means_503_with_retry_after(gateway_factory):
    gw = await gateway_factory("--worker-wait", "0.3", env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    killed: set[int] = set()
    with trio.fail_after(20):
        while len(killed) < 5:  # restart delays 0.1, 0.2, 0.4, 0.8, then 1.6 s
            for worker in await trio.to_thread.run_sync(gw.workers, "openai"):
                if worker["pid"] not in killed and worker["state"] == "ready":
                    killed.add(worker["pid"])
                    os.kill(worker["pid"], signal.SIGKILL)
            await trio.sleep(0.01)
        while gw.ready()["services"]["openai"]["ready"]:
            await trio.sleep(0.01)
        client = await RawClient.connect(gw.port, "/openai/v1/realtime")
        assert client.status == 503
        assert client.header("Retry-After")
        assert b"worker_unavailable" in await client.body()
        await client.aclose()
        assert gw.ready()["_status"] == 503
        await trio.to_thread.run_sync(gw.wait_ready)


async def test_sigterm_drains_then_1001_and_exit_0(gateway_factory, echo):
    gw = await gateway_factory("--grace", "1", env=echo_env(echo))
    pids = {w["pid"] for w in gw.workers("deepgram") + gw.workers("openai")}
    async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws:
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        gw.signal(signal.SIGTERM)
        with trio.fail_after(3):
            while gw.http("/readyz")[0] != 503 if gw.proc.poll() is None else False:
                await trio.sleep(0.02)
        # the session keeps working during the grace period
        await ws.send_message("during grace")
        assert await ws.get_message() == "during grace"
        with trio.fail_after(6):
            # agent service: an Error first (P17), then the 1001 close
            error = json.loads(await ws.get_message())
            assert error["type"] == "Error" and error["code"] == "shutting_down"
            with pytest.raises(tws.ConnectionClosed) as info:
                await ws.get_message()
        assert info.value.reason.code == 1001
    code = await trio.to_thread.run_sync(gw.proc.wait, 10)
    assert code == 0
    assert not any(pid_alive(pid) for pid in pids)


async def test_sigkill_of_supervisor_takes_workers_down(gateway_factory):
    gw = await gateway_factory(env=base_env(OPENAI_API_KEY=OPENAI_KEY, DEEPGRAM_API_KEY=DEEPGRAM_KEY))
    pids = [w["pid"] for w in gw.workers("deepgram") + gw.workers("openai")]
    gw.proc.kill()
    await trio.to_thread.run_sync(gw.proc.wait, 5)
    with trio.fail_after(5):
        while any(pid_alive(pid) for pid in pids):
            await trio.sleep(0.05)


async def test_second_sigint_exits_at_once(gateway_factory, echo):
    gw = await gateway_factory("--grace", "30", env=echo_env(echo))
    async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws:
        await ws.send_message("x")
        await ws.get_message()
        gw.signal(signal.SIGINT)
        await trio.sleep(0.2)
        gw.signal(signal.SIGINT)
        code = await trio.to_thread.run_sync(gw.proc.wait, 5)
    assert code == 0


async def test_sighup_rolls_workers_without_dropping_sessions(gateway_factory, echo):
    gw = await gateway_factory("--grace", "5", env=echo_env(echo))
    [old] = gw.workers("deepgram")
    async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws:
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        gw.signal(signal.SIGHUP)
        with trio.fail_after(10):
            while True:
                workers = await trio.to_thread.run_sync(gw.workers, "deepgram")
                ready = [w for w in workers if w["state"] == "ready"]
                if ready and ready[0]["pid"] != old["pid"]:
                    break
                await trio.sleep(0.05)
        states = {w["pid"]: w["state"] for w in workers}
        assert states[old["pid"]] == "draining"  # still alive, finishing its session
        assert gw.ready()["_status"] == 200
        # the old session keeps working on the old worker; a new session lands on the new one
        await ws.send_message("during roll")
        assert await ws.get_message() == "during roll"
        async with tws.open_websocket_url(gw.url("/deepgram-proxy")) as ws2:
            await ws2.send_message("new")
            assert await ws2.get_message() == "new"
            sessions = {w["pid"]: w["sessions"] for w in await trio.to_thread.run_sync(gw.workers, "deepgram")}
            assert sessions[old["pid"]] == 1 and sessions[ready[0]["pid"]] == 1
    with trio.fail_after(10):  # the old worker exits once its session is over
        while pid_alive(old["pid"]):
            await trio.sleep(0.05)
    gw.remember_workers(gw.ready())


async def test_workers_outlive_the_spawning_thread(gateway_factory, echo):
    """Regression: a parent-death signal tied to trio's spawner thread (retired after 10 s
    idle) killed every worker 10 s after start. Workers must live on; the wait is the test."""
    gw = await gateway_factory(env=echo_env(echo))
    pids = {w["pid"] for w in gw.workers("deepgram") + gw.workers("openai")}
    await trio.sleep(11.5)
    assert {w["pid"] for w in gw.workers("deepgram") + gw.workers("openai")} == pids
    assert "worker exited" not in gw.output
