"""What adversarial runs found (issue 16): a crash-looping provider, sockets handed to a dying
worker, floods of idle connections, an oversized message beside a live session, a client that
never reads. Each test drives the real gateway and checks what clients see."""

from __future__ import annotations

import json
import os
import re
import signal
import struct

import pytest
import trio

from tests.support.deepgram_helpers import RawUpstream
from tests.support.gateway import kill_if_alive, upstream_env
from tests.support.probes import (
    LIMIT,
    LISTEN,
    echo_round_trip,
    echo_url,
    fd_count,
    http_get,
    ready,
    rss_mb,
    worker_pid,
)
from tests.support.rawws import OP_BIN, OP_CLOSE, OP_TEXT, RawClient, expect_close


async def ready_ids(gw, provider: str) -> set[int]:
    return {w["pid"] for w in (await ready(gw))["services"][provider]["workers"] if w["state"] == "ready"}


async def test_crash_looping_provider_leaves_the_other_in_service(gateway_factory, echo):
    gw = await gateway_factory("--worker-wait", "0.2", env=upstream_env(echo_url(echo), echo_url(echo)))
    deepgram_pid = await worker_pid(gw, "deepgram")
    client = await RawClient.connect(gw.port, LISTEN)
    assert client.status == 101
    sent = received = 0
    seen_degraded = seen_openai_503 = False
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
            seen_degraded |= b'"not_ready":["openai"]' in body
            # The strict per-provider probes answer for their provider alone.
            status, body = await http_get(gw.port, "/readyz/openai")
            assert (status == 503) == (b'"not_ready":["openai"]' in body), body
            seen_openai_503 |= status == 503
            assert (await http_get(gw.port, "/readyz/deepgram"))[0] == 200
            await trio.sleep(0.01)
        assert seen_degraded and seen_openai_503
        metrics = (await http_get(gw.port, "/metrics"))[1].decode()
        restarts = re.search(r'voxgate_worker_restarts_total\{provider="openai"\} (\d+)', metrics)
        assert restarts and int(restarts.group(1)) >= 4, metrics
        await client.send_frame(OP_CLOSE, struct.pack(">H", 1000))
    assert await worker_pid(gw, "deepgram") == deepgram_pid
    # Only when no provider can serve does the instance report 503.
    assert (await http_get(gw.port, "/readyz/nope"))[0] == 404


async def test_readyz_is_503_when_no_provider_can_serve(gateway_factory, echo):
    gw = await gateway_factory("--worker-wait", "0.2", env=upstream_env(echo_url(echo), echo_url(echo)))
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
        "--log-level", "debug", "--worker-wait", "10", env=upstream_env(echo_url(echo), echo_url(echo))
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


# --- an over-size message beside a live session (issue 16 §6, §7) ---------------------------

BIG = 50 << 20
CHUNK = 1 << 20


def read_bytes(pid: int) -> int:
    """Bytes the process has read with read-like system calls (sockets included)."""
    with open(f"/proc/{pid}/io") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("rchar:"))


def big_message(fragmented: bool):
    """50 MiB as one binary frame announced in its header, or as 1 MiB fragments; masked
    with a zero key, so the payload is plain zeros. Yields what to write, in order."""
    if not fragmented:
        yield bytes([0x82, 0x80 | 127]) + struct.pack(">Q", BIG) + bytes(4)
        for _ in range(BIG // CHUNK):
            yield bytes(CHUNK)
        return
    for i in range(BIG // CHUNK):
        op = 0x02 if i == 0 else 0x00
        fin = 0x80 if i == BIG // CHUNK - 1 else 0
        yield bytes([fin | op, 0x80 | 127]) + struct.pack(">Q", CHUNK) + bytes(4) + bytes(CHUNK)


async def send_until_refused(client: RawClient, fragmented: bool) -> int:
    sent = 0
    try:
        for part in big_message(fragmented):
            await client.send(part)
            sent += len(part)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    return sent


async def neighbour_round_trips(gw, count: int) -> None:
    """Another session on the openai worker (the raw relay) answers every request."""
    client = await RawClient.connect(gw.port, "/openai/v1/realtime?model=gpt-realtime")
    assert client.status == 101
    op, payload = await client.recv_message()
    assert json.loads(payload)["type"] == "session.created"
    for _ in range(count):
        await client.send_frame(OP_TEXT, b'{"type":"session.update","session":{"type":"realtime"}}')
        op, payload = await client.recv_message()
        assert json.loads(payload)["type"] == "session.updated", payload
    await client.send_frame(OP_CLOSE, struct.pack(">H", 1000))
    await client.aclose()


@pytest.mark.parametrize("fragmented", [False, True], ids=["one-frame", "fragments"])
@pytest.mark.parametrize("path", ["/openai", "/openai/v1/realtime?model=gpt-realtime"], ids=["translator", "splice"])
async def test_a_50_mib_message_is_refused_from_its_header(gateway_factory, openai_sim, fragmented, path):
    url = f"ws://127.0.0.1:{openai_sim.port}/v1/realtime"
    gw = await gateway_factory("--max-message-bytes", str(LIMIT), env=upstream_env(url, url))
    pid = await worker_pid(gw, "openai")
    client = await RawClient.connect(gw.port, path)
    with trio.fail_after(5):
        op, payload = await client.recv_message()
    assert json.loads(payload)["type"] in ("Welcome", "session.created")
    before = read_bytes(pid)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            sent: list[int] = []

            async def send() -> None:
                sent.append(await send_until_refused(client, fragmented))

            nursery.start_soon(send)
            nursery.start_soon(neighbour_round_trips, gw, 50)
            messages = await expect_close(client, 1009, "50 MiB")
            # The sender goes on until the gateway closes the connection.
    codes = [json.loads(m).get("code") or json.loads(m)["error"]["code"] for m in messages]
    assert codes == ["message_too_large"]
    # The worker stopped reading at the header that took the message past the limit: it
    # read at most what was already in flight, never the 50 MiB.
    assert read_bytes(pid) - before < 8 << 20, (read_bytes(pid) - before, sent)
    assert await worker_pid(gw, "openai") == pid


# --- sizes from the adversarial runs ---------------------------------------------------------


async def test_a_thousand_idle_connections_get_408_and_every_fd_comes_back(gateway_factory, echo):
    gw = await gateway_factory("--head-timeout", "1", env=upstream_env(echo_url(echo), echo_url(echo)))
    fds = fd_count(gw.pid)
    answers: list[bytes] = []

    async def idle() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        data = bytearray()
        try:
            while chunk := await stream.receive_some(4096):
                data += chunk
        except trio.BrokenResourceError:
            pass
        answers.append(bytes(data))
        await stream.aclose()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(idle)
                if i % 100 == 99:
                    await trio.sleep(0)  # let the listener keep up with the connects
            await echo_round_trip(gw, n=20)  # a real session meanwhile
    assert len(answers) == 1000
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    with trio.fail_after(5):
        while fd_count(gw.pid) > fds + 3:
            await trio.sleep(0.05)
    await echo_round_trip(gw)


async def test_a_client_that_never_reads_keeps_worker_memory_bounded(gateway_factory, nursery):
    """The upstream streams audio as fast as it can to a client that never reads: the worker
    stops reading the upstream (backpressure) instead of buffering it."""
    up = RawUpstream()
    port = await nursery.start(up.serve)
    gw = await gateway_factory(env=upstream_env(f"ws://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"))
    pid = await worker_pid(gw, "deepgram")
    client = await RawClient.connect(gw.port, "/deepgram-proxy/v1/speak")
    assert client.status == 101
    conn = await up.wait_conn(0)
    before = rss_mb(pid)
    sent = 0
    chunk = bytes(64 << 10)
    with trio.move_on_after(3):  # the upstream blocks once every buffer on the way is full
        while sent < 200 << 20:
            await conn.send(OP_BIN, chunk)
            sent += len(chunk)
    growth = rss_mb(pid) - before
    assert sent < 32 << 20, sent >> 20  # backpressure reached the upstream
    assert growth < 32, growth
    await client.aclose()
    with trio.fail_after(10):
        await conn.closed.wait()
    assert await worker_pid(gw, "deepgram") == pid
