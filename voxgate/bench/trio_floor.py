"""The CPU floor of a trio relay hop: one echo task, one blocking client, loopback TCP.

    python -m voxgate.bench.trio_floor [--messages 20000]

Prints the server's CPU per message for two server loops: the high-level
`receive_some` + `send_all` (what trio streams do) and `wait_readable` + `os.read` +
`os.write` (no speculative read, no send scheduling). PROFILE.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from voxgate.bench.procs import cpu_seconds

SERVER = r"""
import os, sys, trio

async def handle(stream):
    if sys.argv[1] == "stream":
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            await stream.send_all(data)
    fd = stream.socket.fileno()
    while True:
        await trio.lowlevel.wait_readable(stream.socket)
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            continue
        if not data:
            return
        os.write(fd, data)

async def main():
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)

trio.run(main)
"""


def measure(mode: str, messages: int, size: int = 966) -> tuple[float, float]:
    """(server CPU µs per message, round trip µs) for one server loop."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, mode], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())  # type: ignore[union-attr]
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = os.urandom(size)
            cpu0 = cpu_seconds(server.pid) or 0.0
            start = time.perf_counter()
            for _ in range(messages):
                sock.sendall(payload)
                got = 0
                while got < size:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise RuntimeError("server closed")
                    got += len(chunk)
            elapsed = time.perf_counter() - start
            cpu1 = cpu_seconds(server.pid) or 0.0
        return (cpu1 - cpu0) / messages * 1e6, elapsed / messages * 1e6
    finally:
        server.kill()
        server.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args(argv)
    for mode, label in (("stream", "receive_some + send_all"), ("raw", "wait_readable + os.read + os.write")):
        cpu, rtt = measure(mode, args.messages)
        print(f"{label:40s} server CPU {cpu:6.1f} us/message, round trip {rtt:6.1f} us")


if __name__ == "__main__":
    main()
