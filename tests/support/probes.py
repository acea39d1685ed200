"""Probes on a running gateway for the stress tests: /readyz and worker pids read without
blocking the trio loop, a worker's memory and open descriptors from /proc, and an echo round
trip that proves a passthrough session still works."""

from __future__ import annotations

import json
import os

import trio

from tests.support.gateway import Gateway
from tests.support.rawws import OP_CLOSE, OP_TEXT, RawClient, close_code
from tests.support.slow_upstream import SlowUpstream

LISTEN = "/deepgram-proxy/v1/listen"
LIMIT = 65536  # --max-message-bytes for the frame tests


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a plain GET, without blocking the test's trio loop."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = bytearray()
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            data += chunk
    await stream.aclose()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def ready(gw: Gateway) -> dict:
    status, body = await http_get(gw.port, "/readyz")
    data = json.loads(body)
    data["_status"] = status
    return data


async def worker_pid(gw: Gateway, provider: str) -> int:
    [worker] = (await ready(gw))["services"][provider]["workers"]
    assert worker["state"] == "ready"
    gw.worker_pids.add(worker["pid"])
    return worker["pid"]


async def echo_round_trip(gw: Gateway, path: str = LISTEN, n: int = 3) -> None:
    """A fresh passthrough session echoes `n` text messages, then closes 1000."""
    client = await RawClient.connect(gw.port, path)
    assert client.status == 101
    with trio.fail_after(5):
        for i in range(n):
            await client.send_frame(OP_TEXT, f"ping {i}".encode())
            assert await client.recv_message() == (OP_TEXT, f"ping {i}".encode())
        op, payload = await client.close(1000)
        assert (op, close_code(payload)) == (OP_CLOSE, 1000)
    await client.aclose()


def echo_url(up: SlowUpstream) -> str:
    return f"ws://127.0.0.1:{up.port}"
