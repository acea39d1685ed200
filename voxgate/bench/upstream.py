"""The benchmark upstream: a recording echo server and an OpenAI-Realtime-like server on one
port, on the raw epoll loop so it stays cheap under load.

- any path except `/v1/realtime...`: echo, binary -> binary, text -> text, frame for frame.
  `?greet=1` makes it send a `{"type":"Welcome"}` text frame right after the 101 (what a
  Deepgram agent does), which is how the setup scenario times the first upstream byte.
- `/v1/realtime...`: `session.created` on open, `session.updated` for each `session.update`,
  and each `input_audio_buffer.append` answered by a `response.output_audio.delta` carrying
  the same base64 audio (so a translator session gets its own audio back as binary). Other
  events are ignored.
- a plain `GET /stats` answers JSON counters and the first recorded requests (path, query,
  header names, the Authorization scheme; never a credential value).

Run: `python -m voxgate.bench.upstream [--port 0]`; it prints `... listening on HOST:PORT (pid N)`.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

import orjson

from voxgate.bench.evloop import EPOLLERR_HUP, EPOLLIN, EPOLLOUT, RECV_SIZE, Loop
from voxgate.bench.wire import (
    HEAD_END,
    MAX_HEAD,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    accept_token,
    frame_header,
    parse_frame,
    server_frame,
    xor_mask,
)

MAX_RECORDS = 100
WELCOME = server_frame(OP_TEXT, b'{"type":"Welcome","request_id":"bench"}')
SESSION_CREATED = server_frame(
    OP_TEXT, b'{"type":"session.created","event_id":"evt_created","session":{"type":"realtime"}}'
)
DELTA_HEAD = (
    b'{"type":"response.output_audio.delta","event_id":"evt_d","response_id":"resp_bench",'
    b'"item_id":"item_bench","output_index":0,"content_index":0,"delta":"'
)
AUDIO_KEY = b'"audio":"'


class Upstream:
    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.counters: Counter[str] = Counter()
        self.records: list[dict] = []
        self.headers_cache: dict[tuple[int, int], bytes] = {}

    def listen(self, host: str, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4096)
        sock.setblocking(False)
        self.listener = sock
        self.loop.register(sock.fileno(), self, EPOLLIN)
        return sock.getsockname()[1]

    def on_event(self, ev: int) -> None:
        for _ in range(64):
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError:
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.counters["tcp_accepted"] += 1
            ServerConn(self, conn)

    def header(self, op: int, n: int) -> bytes:
        key = (op, n)
        head = self.headers_cache.get(key)
        if head is None:
            head = frame_header(op, n, masked=False)
            if len(self.headers_cache) < 4096:
                self.headers_cache[key] = head
        return head

    def stats_body(self) -> bytes:
        return orjson.dumps({"counters": dict(self.counters), "requests": self.records})


class ServerConn:
    def __init__(self, up: Upstream, sock: socket.socket) -> None:
        self.up = up
        self.sock = sock
        self.fd = sock.fileno()
        self.rbuf = b""
        self.out = bytearray()
        self.open = False
        self.closed = False
        self.realtime = False
        self.frag: bytearray | None = None
        self.frag_op = 0
        up.loop.register(self.fd, self, EPOLLIN)

    def on_event(self, ev: int) -> None:
        if ev & EPOLLOUT and self.out:
            self._flush()
        if ev & (EPOLLIN | EPOLLERR_HUP) and not self.closed:
            self._read()

    def shut(self) -> None:
        if not self.closed:
            self.closed = True
            self.up.loop.unregister(self.fd)
            try:
                self.sock.close()
            except OSError:
                pass
            self.up.counters["closed"] += 1

    def send(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.shut()
            return
        if sent < len(data):
            self.out += memoryview(data)[sent:]
            self.up.loop.modify(self.fd, EPOLLIN | EPOLLOUT)

    def _flush(self) -> None:
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.shut()
            return
        del self.out[:sent]
        if not self.out:
            self.up.loop.modify(self.fd, EPOLLIN)

    def _read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except BlockingIOError:
            return
        except OSError:
            self.shut()
            return
        if not data:
            self.up.counters["eof"] += 1
            self.shut()
            return
        if self.rbuf:
            data = self.rbuf + data
            self.rbuf = b""
        if not self.open:
            end = data.find(HEAD_END)
            if end < 0:
                if len(data) > MAX_HEAD:
                    self.shut()
                else:
                    self.rbuf = data
                return
            if not self._handshake(data[:end]):
                return
            data = data[end + 4 :]
        self._frames(data)

    def _handshake(self, head: bytes) -> bool:
        up = self.up
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        target = parts[1] if len(parts) > 1 else "/"
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        url = urlsplit(target)
        if "websocket" not in headers.get("upgrade", "").lower():
            if url.path == "/stats":
                body = up.stats_body()
                self.send(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
            else:
                self.send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.shut()
            return False
        self.realtime = url.path.startswith("/v1/realtime")
        query = parse_qsl(url.query, keep_blank_values=True)
        up.counters["sessions_realtime" if self.realtime else "sessions_echo"] += 1
        if len(up.records) < MAX_RECORDS:
            auth = headers.get("authorization", "")
            up.records.append({
                "path": url.path,
                "query": [k for k, _ in query],
                "header_names": sorted(headers),
                "auth_scheme": auth.split(" ", 1)[0] if auth else None,
            })
        key = headers.get("sec-websocket-key", "").encode()
        reply = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept_token(key) + b"\r\n\r\n")
        if self.realtime:
            reply += SESSION_CREATED
        elif ("greet", "1") in query:
            reply += WELCOME
        self.open = True
        self.send(reply)
        return not self.closed

    def _frames(self, buf: bytes) -> None:
        pos = 0
        n = len(buf)
        out: list[bytes] = []
        up = self.up
        frames = 0
        nbytes = 0
        while pos < n:
            got = parse_frame(buf, pos)
            if got is None:
                break
            op, fin, key, start, end = got
            pos = end
            if key is None:
                self.shut()
                return
            payload = xor_mask(buf[start:end], key)
            if op >= 8:
                if op == OP_PING:
                    out.append(server_frame(OP_PONG, payload))
                elif op == OP_CLOSE:
                    out.append(server_frame(OP_CLOSE, payload[:2]))
                    self.send(b"".join(out))
                    up.counters["close_frames"] += 1
                    self.shut()
                    return
                continue
            frames += 1
            nbytes += end - start
            if not self.realtime:
                out.append(up.header(op, end - start) if fin else frame_header(op, end - start, masked=False, fin=False))
                out.append(payload)
                continue
            if not fin or op == OP_CONT or self.frag is not None:
                if op != OP_CONT:
                    self.frag, self.frag_op = bytearray(), op
                if self.frag is None:
                    continue
                self.frag += payload
                if not fin:
                    continue
                payload, op = bytes(self.frag), self.frag_op
                self.frag = None
            if op == OP_TEXT:
                reply = self._realtime_event(payload)
                if reply is not None:
                    out.append(up.header(OP_TEXT, len(reply)))
                    out.append(reply)
        if pos < n:
            self.rbuf = buf[pos:]
        up.counters["frames_in"] += frames
        up.counters["bytes_in"] += nbytes
        if out:
            self.send(b"".join(out))

    def _realtime_event(self, payload: bytes) -> bytes | None:
        head = payload[:96]
        if b'"input_audio_buffer.append"' in head:
            i = payload.find(AUDIO_KEY)
            if i < 0:
                return None
            i += len(AUDIO_KEY)
            j = payload.find(b'"', i)
            self.up.counters["appends"] += 1
            return DELTA_HEAD + payload[i:j] + b'"}'
        if b'"session.update"' in head:
            try:
                event_id = orjson.loads(payload).get("event_id")
            except orjson.JSONDecodeError:
                event_id = None
            self.up.counters["session_updates"] += 1
            return orjson.dumps({"type": "session.updated", "event_id": "evt_u",
                                 "session": {"type": "realtime", "bench_reply_to": event_id}})
        self.up.counters["ignored_events"] += 1
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    loop = Loop()
    up = Upstream(loop)
    port = up.listen(args.host, args.port)
    print(f"bench upstream listening on {args.host}:{port} (pid {os.getpid()})", flush=True)
    try:
        loop.run(until_ns=1 << 62)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
