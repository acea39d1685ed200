"""What adversarial runs found (issue 16): a crash-looping provider, sockets handed to a dying
worker, floods of idle connections, an oversized message beside a live session, a client that
never reads. Each test drives the real gateway and checks what clients see."""

from __future__ import annotations

import os
import re
import signal
import struct

import trio

from tests.stress.test_hostile import (
    LISTEN,
    echo_round_trip,
    echo_url,
    env_for,
    http_get,
    ready,
    worker_pid,
)
from tests.support.gateway import kill_if_alive
from tests.support.rawws import OP_BIN, OP_CLOSE, RawClient


async def ready_ids(gw, provider: str) -> set[int]:
    return {w["pid"] for w in (await ready(gw))["services"][provider]["workers"] if w["state"] == "ready"}


async def test_crash_looping_provider_leaves_the_other_in_service(gateway_factory, echo):
    gw = await gateway_factory("--worker-wait", "0.2", env=env_for(echo_url(echo), echo_url(echo)))
    deepgram_pid = await worker_pid(gw, "deepgram")
    client = await RawClient.connect(gw.port, LISTEN)
    assert client.status == 101
    sent = received = 0
    seen_degraded = False
    killed: set[int] = set()
    with trio.fail_after(30):
        while len(killed) < 5:  # restart delays 0.1, 0.2, 0.4, 0.8 s: a crash loop
            for pid in await ready_ids(gw, "openai"):
                if pid not in killed:
                    killed.add(pid)
                    os.kill(pid, signal.SIGKILL)
            # The Deepgram session keeps streaming through all of it.
            await client.send_frame(OP_BIN, struct.pack(">I", sent) + bytes(956))
            sent += 1
            op, payload = await client.recv_message()
            assert (op, struct.unpack(">I", payload[:4])[0]) == (OP_BIN, received)
            received += 1
            status, body = await http_get(gw.port, "/readyz")
            assert status == 200, body  # one provider down never pulls the instance
            if b'"not_ready":["openai"]' in body:
                seen_degraded = True
                assert (await http_get(gw.port, "/readyz/openai"))[0] == 503
                assert (await http_get(gw.port, "/readyz/deepgram"))[0] == 200
            await trio.sleep(0.01)
        assert seen_degraded
        metrics = (await http_get(gw.port, "/metrics"))[1].decode()
        restarts = re.search(r'voxgate_worker_restarts_total\{provider="openai"\} (\d+)', metrics)
        assert restarts and int(restarts.group(1)) >= 4, metrics
        await client.send_frame(OP_CLOSE, struct.pack(">H", 1000))
    assert await worker_pid(gw, "deepgram") == deepgram_pid
    # Only when no provider can serve does the instance report 503.
    assert (await http_get(gw.port, "/readyz/nope"))[0] == 404


async def test_readyz_is_503_when_no_provider_can_serve(gateway_factory, echo):
    gw = await gateway_factory("--worker-wait", "0.2", env=env_for(echo_url(echo), echo_url(echo)))
    killed: set[int] = set()
    with trio.fail_after(30):
        while True:
            for provider in ("openai", "deepgram"):
                for pid in await ready_ids(gw, provider):
                    if pid not in killed:
                        killed.add(pid)
                        os.kill(pid, signal.SIGKILL)
            data = await ready(gw)
            if not any(s["ready"] for s in data["services"].values()):
                break
            await trio.sleep(0.005)
    assert data["_status"] == 503 and sorted(data["not_ready"]) == ["deepgram", "openai"]


async def test_a_socket_handed_to_a_dying_worker_is_answered(gateway_factory, echo):
    """The worker is stopped, a connection is handed to it (its fd waits in the control
    channel), then it is killed: the supervisor still holds the socket and hands it to the
    restarted worker; before, the client saw its connection closed without a response."""
    gw = await gateway_factory(
        "--log-level", "debug", "--worker-wait", "10", env=env_for(echo_url(echo), echo_url(echo))
    )
    pid = await worker_pid(gw, "deepgram")
    os.kill(pid, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            result: list[RawClient] = []

            async def connect() -> None:
                result.append(await RawClient.connect(gw.port, LISTEN))

            nursery.start_soon(connect)
            with trio.fail_after(5):
                while "handing off" not in gw.output:
                    await trio.sleep(0.01)
            os.kill(pid, signal.SIGKILL)
    finally:
        kill_if_alive(pid)
    [client] = result
    assert client.status == 101  # answered by the restarted worker
    with trio.fail_after(5):
        await client.send_frame(OP_BIN, b"after the crash")
        assert await client.recv_message() == (OP_BIN, b"after the crash")
    await client.aclose()
    assert "hand-off failed, retrying" in gw.output
    await echo_round_trip(gw)
