"""The splice's CPU per relayed message, with nothing else in the way: no supervisor, no
handshakes, one driver process that plays N clients and their upstreams in lock step.

    python -m voxgate.bench.splice_floor [--messages 40000] [--sessions 1 50] [--tree DIR]

The gateway process runs `run_splice` on the data plane for every accepted connection; the
driver sends one 960-byte masked binary frame per session, echoes each as the upstream, and
reads the echoes (every frame crosses the gateway twice). Prints the gateway's CPU per relayed
message. `--tree DIR` measures another checkout's splice (the gateway process imports
`voxgate` from DIR; for example `git archive 7b57ac5 | tar -x -C /tmp/old`). Steadier than `voxgate bench` on a shared
machine, because only the gateway's own CPU counts.
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys

from voxgate.bench.procs import cpu_seconds

GATEWAY = r"""
import sys, trio
from voxgate.workers.splice import SplicePolicy, SpliceStats, run_splice

async def main(up_port):
    async def connect():
        return await trio.open_tcp_stream("127.0.0.1", up_port), b""

    async def handle(stream):
        await run_splice(stream, b"", connect, SplicePolicy(), SpliceStats())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(handle, listeners)

trio.run(main, int(sys.argv[1]))
"""
SIZE = 960


def _recv_exactly(sock: socket.socket, n: int) -> None:
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise RuntimeError("gateway closed")
        n -= len(chunk)


def measure(messages: int, sessions: int, tree: str | None = None) -> float:
    """Gateway CPU µs per relayed message (a round trip relays two)."""
    upstream = socket.create_server(("127.0.0.1", 0), backlog=sessions + 8)
    env = dict(os.environ, PYTHONPATH=tree) if tree else None  # and cwd: `-c` puts the cwd first
    gateway = subprocess.Popen([sys.executable, "-c", GATEWAY, str(upstream.getsockname()[1])],
                               stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    pairs: list[tuple[socket.socket, socket.socket]] = []
    try:
        port = int(gateway.stdout.readline())  # type: ignore[union-attr]
        for _ in range(sessions):
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            client.sendall(b"\x82\x80\x00\x00\x00\x00")  # an empty frame: the gateway connects upstream
            up, _ = upstream.accept()
            up.settimeout(10)
            _recv_exactly(up, 6)
            for sock in (client, up):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((client, up))
        payload = os.urandom(SIZE)
        client_frame = b"\x82\xfe" + struct.pack(">H", SIZE) + b"\x00\x00\x00\x00" + payload
        server_frame = b"\x82\x7e" + struct.pack(">H", SIZE) + payload
        rounds = max(1, messages // sessions)
        cpu0 = cpu_seconds(gateway.pid) or 0.0
        for _ in range(rounds):
            for client, _up in pairs:
                client.sendall(client_frame)
            for _client, up in pairs:
                _recv_exactly(up, 8 + SIZE)
                up.sendall(server_frame)
            for client, _up in pairs:
                _recv_exactly(client, 4 + SIZE)
        cpu1 = cpu_seconds(gateway.pid) or 0.0
        return (cpu1 - cpu0) * 1e6 / (2 * rounds * sessions)
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
        upstream.close()
        gateway.kill()
        gateway.wait(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=40000, help="round trips per measurement")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 50])
    parser.add_argument("--tree", default=None, help="import the gateway's voxgate from this directory")
    args = parser.parse_args(argv)
    for sessions in args.sessions:
        cpu = measure(args.messages, sessions, args.tree)
        print(f"{sessions:4d} sessions: gateway CPU {cpu:5.1f} us per relayed message")


if __name__ == "__main__":
    main()
