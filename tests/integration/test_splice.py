"""The frame-splice engine between real peers on 127.0.0.1: what each peer sees on the wire."""

from __future__ import annotations

import json
import os

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url, serve_websocket

from tests.support.splice import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawPeer,
    client_handshake,
    close_payload,
    encode_frame,
    start_env,
)
from voxgate.workers.splice import SplicePolicy

T = 5  # every test body is bounded by this many seconds


async def manual(nursery, **kw):
    """Env whose upstream the test drives by hand; returns (env, client peer, upstream peer)."""
    env = await start_env(nursery, upstream_handler=None, **kw)
    client = await env.raw_client()
    upstream = await env.next_upstream()
    return env, client, upstream


async def finish(env, client=None, upstream=None):
    """Wait for the session to end and for both TCP legs to be closed by the gateway."""
    s = await env.session()
    for peer in (client, upstream):
        if peer is not None:
            await peer.wait_eof()
            await peer.aclose()  # what a peer does once the gateway has closed its side
    await s.done.wait()
    assert s.error is None
    return s.stats


# ---------------------------------------------------------------- data frames


async def test_text_and_binary_preserved_both_ways(nursery):
    with trio.fail_after(T):
        env = await start_env(nursery)
        async with open_websocket_url(env.url) as ws:
            await ws.send_message("héllo €")
            assert await ws.get_message() == "héllo €"
            # P12: JSON in a binary frame stays binary
            await ws.send_message(b'{"type":"FunctionCallRequest"}')
            assert await ws.get_message() == b'{"type":"FunctionCallRequest"}'
            await ws.send_message(bytes(range(256)))
            assert await ws.get_message() == bytes(range(256))
        stats = (await env.session()).stats
        await (await env.session()).done.wait()
    up = env.upstream_peers[0].received
    assert [(f.opcode, f.payload) for f in up[:3]] == [
        (OP_TEXT, "héllo €".encode()),
        (OP_BINARY, b'{"type":"FunctionCallRequest"}'),
        (OP_BINARY, bytes(range(256))),
    ]
    assert stats.frames_up == 3 and stats.frames_down == 3
    assert stats.bytes_up == stats.bytes_down == len("héllo €".encode()) + 30 + 256
    assert stats.end_reason == "client_closed" and stats.client_close_code == 1000
    assert stats.upstream_connect_seconds is not None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 640, 960, 65535, 65536, 200_003])
async def test_payload_sizes_and_masking(nursery, size):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
        await client.send(OP_BINARY, payload)
        f = await upstream.recv_data()
        assert (f.fin, f.opcode, f.payload) == (True, OP_BINARY, payload)
        assert f.mask is not None and f.mask != RawPeer.CLIENT_KEY
        text = b"a" * size
        await upstream.send(OP_TEXT, text)
        g = await client.recv_data()
        assert (g.fin, g.opcode, g.payload, g.mask) == (True, OP_TEXT, text, None)


@pytest.mark.parametrize("size", [0, 125, 65536, 300_000])
async def test_non_socket_streams_use_the_generic_path(nursery, size):
    """Streams that are not plain sockets (TLS upstream, wrappers) go through send_all."""
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, wrap_streams=True)
        payload = os.urandom(size)
        nursery.start_soon(client.send, OP_BINARY, payload)
        f = await upstream.recv_data()
        assert f.payload == payload and f.mask != RawPeer.CLIENT_KEY
        nursery.start_soon(upstream.send, OP_BINARY, payload)
        assert (await client.recv_data()).payload == payload
        await client.send_raw(encode_frame(OP_TEXT, b"unmasked"))  # protocol error: drain + EOF
        assert await client.recv_close() == (1002, b"protocol error")
        await client.wait_eof()
        await client.aclose()
        assert await upstream.recv_close() == (1000, b"")
        await upstream.send_close(1000)
        stats = await finish(env, upstream=upstream)
    assert stats.end_reason == "protocol_error:client"


async def test_slow_client_backpressure_loses_nothing(nursery):
    """A client that does not read: the gateway stops reading the upstream (kernel buffers
    only), partial writes resume, and every byte arrives in order."""
    # 160 x 64 KiB = 10 MiB: several times what the legs' kernel buffers absorb before the
    # upstream's writes block (2-2.5 MiB seen under load), so the hold-back is what stops it
    frames = [os.urandom(4) * 16384 for _ in range(160)]
    with trio.fail_after(T):
        env = await start_env(nursery, upstream_handler=None)
        client = await env.raw_client(rcvbuf=8192)
        upstream = await env.next_upstream()
        sent = 0

        async def writer():
            nonlocal sent
            for p in frames:
                await upstream.send(OP_BINARY, p)
                sent += 1

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert sent < len(frames)  # the upstream is held back
        for p in frames:
            assert (await client.recv_data()).payload == p


async def test_gateway_mask_keys_are_fresh_per_frame(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await client.send_raw(b"".join(client.frame(OP_TEXT, b"x%d" % i) for i in range(20)))
        frames = [await upstream.recv_data() for _ in range(20)]
    assert [f.payload for f in frames] == [b"x%d" % i for i in range(20)]
    keys = {f.mask for f in frames}
    assert RawPeer.CLIENT_KEY not in keys and len(keys) > 15


async def test_many_frames_in_one_read_and_split_headers(nursery):
    """Frames batched in one TCP write, and frames dribbled one byte at a time, both ways."""
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        wire = b"".join(encode_frame(OP_BINARY, b"%05d" % i * 30) for i in range(50))
        await upstream.send_raw(wire)
        got = [await client.recv_data() for _ in range(50)]
        assert [g.payload for g in got] == [b"%05d" % i * 30 for i in range(50)]
        one = encode_frame(OP_TEXT, b"z" * 300) + encode_frame(OP_PING, b"pp") + encode_frame(OP_TEXT, b"end")
        for i in range(len(one)):
            await upstream.send_raw(one[i : i + 1])
        assert (await client.recv_data()).payload == b"z" * 300
        assert (await client.recv_data()).payload == b"end"  # the ping was not relayed
        pong = await upstream.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"pp") and pong.mask is not None
        cwire = client.frame(OP_BINARY, b"q" * 1000) + client.frame(OP_TEXT, b"w")
        for i in range(0, len(cwire), 7):
            await client.send_raw(cwire[i : i + 7])
        assert (await upstream.recv_data()).payload == b"q" * 1000
        assert (await upstream.recv_data()).payload == b"w"


async def test_fragments_forwarded_as_fragments_with_interleaved_pings(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await client.send(OP_TEXT, b"ab", fin=False)
        await client.send(OP_PING, b"c1")
        await client.send(OP_CONT, b"cd", fin=False)
        await client.send(OP_CONT, b"ef", fin=True)
        seen = [await upstream.recv_frame() for _ in range(4)]
        assert [(f.opcode, f.fin, f.payload) for f in seen] == [
            (OP_TEXT, False, b"ab"),
            (OP_PING, True, b"c1"),
            (OP_CONT, False, b"cd"),
            (OP_CONT, True, b"ef"),
        ]
        pong = await client.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"c1")

        await upstream.send(OP_BINARY, b"12", fin=False)
        await upstream.send(OP_PING, b"u1")
        await upstream.send(OP_CONT, b"34", fin=False)
        await upstream.send(OP_PONG, b"ignored")
        await upstream.send(OP_CONT, b"", fin=True)
        seen = [await client.recv_frame() for _ in range(3)]
        assert [(f.opcode, f.fin, f.payload) for f in seen] == [
            (OP_BINARY, False, b"12"),
            (OP_CONT, False, b"34"),
            (OP_CONT, True, b""),
        ]
        pong = await upstream.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, b"u1")


async def test_pings_with_125_byte_payloads(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        big = bytes(range(125))
        await client.send(OP_PING, big)
        pong = await client.recv_frame()
        assert (pong.opcode, pong.payload, pong.mask) == (OP_PONG, big, None)
        ping = await upstream.recv_frame()
        assert (ping.opcode, ping.payload) == (OP_PING, big) and ping.mask != RawPeer.CLIENT_KEY
        await upstream.send(OP_PONG, big)  # dropped
        await client.send(OP_PONG, b"unsolicited")  # dropped
        await upstream.send(OP_PING, big[::-1])
        pong = await upstream.recv_frame()
        assert (pong.opcode, pong.payload) == (OP_PONG, big[::-1]) and pong.mask is not None
        await client.send(OP_TEXT, b"after")
        assert (await upstream.recv_frame()).payload == b"after"  # the client's pong was dropped
        await upstream.send(OP_TEXT, b"back")
        assert (await client.recv_frame()).payload == b"back"  # no pong and no ping relayed


async def test_library_client_ping(nursery):
    with trio.fail_after(T):
        env = await start_env(nursery)
        async with open_websocket_url(env.url) as ws:
            await ws.ping(b"lib")
            await ws.send_message("ok")
            assert await ws.get_message() == "ok"
    assert [(f.opcode, f.payload) for f in env.upstream_peers[0].received[:2]] == [
        (OP_PING, b"lib"),
        (OP_TEXT, b"ok"),
    ]


# ---------------------------------------------------------------- closes


@pytest.mark.parametrize(
    "code,expected",
    [(1000, 1000), (1001, 1001), (1003, 1003), (1007, 1007), (1008, 1008), (1011, 1011),
     (1014, 1014), (3000, 3000), (4001, 4001), (4999, 4999), (None, 1000)],
)
async def test_client_close_is_mapped_upstream_and_answered(nursery, code, expected):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        reason = b"bye" if code is not None else b""
        await client.send_close(code, reason)
        assert await upstream.recv_close() == (expected, reason)
        assert await client.recv_close() == (code, b"")  # our reply echoes the client's code
        await upstream.send_close(expected)
        stats = await finish(env, client, upstream)
    assert stats.client_close_code == (1005 if code is None else code)
    assert stats.upstream_close_code == expected
    assert stats.end_reason == "client_closed"


@pytest.mark.parametrize(
    "code,expected",
    [(1000, 1000), (1001, 1001), (1002, 1002), (1011, 1011), (1012, 1012), (1013, 1013),
     (3000, 3000), (4001, 4001), (None, 1000)],
)
async def test_upstream_close_is_mapped_to_client_and_answered(nursery, code, expected):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        reason = b"NET-0001 bye" if code is not None else b""
        await upstream.send_close(code, reason)
        # Reasons toward the client are generic; a Deepgram error code is kept (issue 16 §1).
        assert await client.recv_close() == (expected, b"NET-0001" if code is not None else b"")
        assert await upstream.recv_close() == (code, b"")
        await client.send_close(expected)
        stats = await finish(env, client, upstream)
    assert stats.upstream_close_code == (1005 if code is None else code)
    assert stats.sent_client_close_code == expected
    assert stats.client_close_code == expected
    assert stats.end_reason == "upstream_closed"


@pytest.mark.parametrize("payload", [b"\x03", *(close_payload(c) for c in (1005, 1006, 1015, 999, 1004, 2000, 5000))])
async def test_unsendable_upstream_close_gives_client_1011(nursery, payload):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await upstream.send(OP_CLOSE, payload)
        assert (await client.recv_close())[0] == 1011
        assert (await upstream.recv_close())[0] == 1002
        await client.send_close(1011)
        await upstream.aclose()
        stats = await finish(env, client)
    assert stats.end_reason == "protocol_error:upstream"


async def test_close_reasons_are_utf8_and_at_most_123_bytes(nursery):
    # Whatever the upstream's reason (valid, cut inside a character), the client gets a
    # short generic one (issue 16 §1), and a client reason that is not UTF-8 is refused.
    for upstream_reason in ("é".encode() * 61 + b"!", "é".encode() * 61 + "€".encode()[:1]):
        with trio.fail_after(T):
            env, client, upstream = await manual(nursery)
            await upstream.send_close(4001, upstream_reason)
            assert await client.recv_close() == (4001, b"upstream error")
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await client.send_close(4002, b"ok \xff\xfe" + b"x" * 118)  # a reason that is not UTF-8
        assert (await client.recv_close())[0] == 1002  # is a protocol error (RFC 6455 §8.1)
        assert (await upstream.recv_close())[0] == 1000


async def test_long_gateway_reason_cut_on_a_char_boundary(nursery):
    def on_failure(err):
        return [], 1011, "é" * 100  # 200 bytes

    with trio.fail_after(T):
        env = await start_env(nursery, reject_status=500, policy=SplicePolicy(on_upstream_failure=on_failure))
        client = await env.raw_client()
        assert await client.recv_close() == (1011, "é".encode() * 61)


async def test_upstream_tcp_drop_gives_client_1011(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await upstream.send(OP_TEXT, b"last words")
        await upstream.aclose()
        assert (await client.recv_data()).payload == b"last words"
        assert await client.recv_close() == (1011, b"upstream error")
        await client.send_close(1011)
        stats = await finish(env, client)
    assert stats.upstream_close_code is None and stats.end_reason == "upstream_closed"
    assert stats.sent_client_close_code == 1011


async def test_upstream_tcp_drop_mid_frame_closes_client_tcp(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        wire = encode_frame(OP_BINARY, b"x" * 1000)
        await upstream.send_raw(wire[:500])
        await upstream.aclose()
        await client.wait_eof()  # a frame was cut: no close frame possible, just TCP close
        stats = await finish(env)
    assert bytes(client.buf) == wire[:500]
    assert stats.end_reason == "upstream_closed"


async def test_client_tcp_drop_gives_upstream_1000(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await client.send(OP_TEXT, b"hi")
        await client.aclose()
        assert (await upstream.recv_data()).payload == b"hi"
        assert await upstream.recv_close() == (1000, b"")
        await upstream.send_close(1000)
        stats = await finish(env, upstream=upstream)
    assert stats.client_close_code is None and stats.end_reason == "client_closed"


async def test_frames_after_a_close_are_dropped(nursery):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await upstream.send_close(4001, b"done")
        assert await client.recv_close() == (4001, b"upstream error")
        await client.send(OP_TEXT, b"late")  # after the gateway's close: never forwarded
        await client.send_close(4001)
        assert await upstream.recv_close() == (4001, b"")
        await upstream.send(OP_TEXT, b"late too")
        await upstream.aclose()
        await finish(env, client)
    assert [f.opcode for f in env.upstream_peers[0].received] == [OP_CLOSE]
    assert [f.opcode for f in client.received] == [OP_CLOSE]


async def test_library_peers_close_code_passthrough(nursery):
    """trio-websocket on both ends (interop), client closes 4001 and sees the echo."""
    got = {}
    closed = trio.Event()

    async def handler(request):
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as exc:
            got["code"] = exc.reason.code
            closed.set()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)

    async def connect():
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        return stream, await client_handshake(stream, "127.0.0.1")

    with trio.fail_after(T):
        env = await start_env(nursery, connect=connect)
        async with open_websocket_url(env.url) as ws:
            for i in range(20):
                await ws.send_message(f"m{i}" * i)
                assert await ws.get_message() == f"m{i}" * i
            await ws.aclose(4001, "app done")
            assert ws.closed.code == 4001
        await closed.wait()
        await (await env.session()).done.wait()
    assert got["code"] == 4001


# ---------------------------------------------------------------- limits and timers


def limit_frames(code: str) -> list[bytes]:
    return [json.dumps({"type": "Error", "code": code}).encode()]


@pytest.mark.parametrize("fragmented", [False, True])
async def test_message_over_max_gives_1009(nursery, fragmented):
    policy = SplicePolicy(max_message_bytes=1000, on_limit=limit_frames)
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=policy)
        await client.send(OP_BINARY, b"a" * 1000)  # exactly the limit: fine
        assert len((await upstream.recv_data()).payload) == 1000
        if fragmented:
            await client.send(OP_BINARY, b"b" * 600, fin=False)
            assert (await upstream.recv_data()).payload == b"b" * 600
            await client.send(OP_CONT, b"c" * 401)
        else:
            await client.send(OP_BINARY, b"b" * 1001)
        f = await client.recv_frame()
        assert (f.opcode, json.loads(f.payload)) == (OP_TEXT, {"type": "Error", "code": "message_too_large"})
        assert await client.recv_close() == (1009, b"message_too_large")
        assert await upstream.recv_close() == (1000, b"message_too_large")
        await client.wait_eof()
        await client.aclose()
        await upstream.send_close(1000)
        stats = await finish(env, upstream=upstream)
    assert stats.end_reason == "limit:message_too_large" and stats.sent_client_close_code == 1009


async def test_huge_declared_length_is_refused_without_buffering(nursery):
    policy = SplicePolicy(max_message_bytes=1 << 20)
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=policy)
        await client.send_raw(encode_frame(OP_BINARY, b"", mask=RawPeer.CLIENT_KEY, length=1 << 40))
        assert (await client.recv_close())[0] == 1009


async def test_pre_open_queue_keeps_order(nursery):
    gate = trio.Event()
    with trio.fail_after(T):
        env = await start_env(nursery, upstream_handler=None, connect_gate=gate)
        client = await env.raw_client()
        wire = b"".join(client.frame(OP_TEXT, b"q%d" % i) for i in range(30))
        wire += client.frame(OP_BINARY, b"f1", fin=False) + client.frame(OP_PING, b"early")
        wire += client.frame(OP_CONT, b"f2")
        await client.send_raw(wire)
        pong = await client.recv_frame()  # answered before the upstream exists
        assert (pong.opcode, pong.payload) == (OP_PONG, b"early")
        await trio.testing.wait_all_tasks_blocked()
        assert env.upstream_peers == []
        gate.set()
        upstream = await env.next_upstream()
        got = [await upstream.recv_frame() for _ in range(33)]
    assert [f.payload for f in got[:30]] == [b"q%d" % i for i in range(30)]
    assert [(f.opcode, f.fin, f.payload) for f in got[30:]] == [
        (OP_BINARY, False, b"f1"), (OP_PING, True, b"early"), (OP_CONT, True, b"f2")]


async def test_pre_open_queue_is_bounded_by_backpressure(nursery):
    """While the upstream is connecting the gateway buffers at most about max_pending_bytes
    (+ one read), then stops reading the client; nothing is dropped."""
    gate = trio.Event()
    limit = 32 * 1024
    policy = SplicePolicy(max_pending_bytes=limit)
    frame_size = 1024
    total = 1000  # ~1 MiB offered
    sent = 0
    with trio.fail_after(T):
        env = await start_env(nursery, upstream_handler=None, connect_gate=gate, policy=policy,
                              gateway_rcvbuf=8192)
        client = await env.raw_client(sndbuf=8192)

        written = trio.Event()

        async def writer():
            nonlocal sent
            for i in range(total):
                await client.send(OP_BINARY, i.to_bytes(4, "big") * (frame_size // 4))
                sent += 1
            written.set()

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        accepted = sent * (frame_size + 8)
        # measured: ~ limit + one 64 KiB read + the two 8 KiB socket buffers (doubled by Linux)
        assert limit <= accepted <= limit + 64 * 1024 + 128 * 1024, accepted
        assert sent < total
        gate.set()
        upstream = await env.next_upstream()
        for i in range(total):
            f = await upstream.recv_data()
            assert f.payload[:4] == i.to_bytes(4, "big")
        await written.wait()


async def test_client_close_during_connect_cancels_it(nursery):
    cancelled = trio.Event()

    async def connect():
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(T):
        env = await start_env(nursery, connect=connect)
        client = await env.raw_client()
        await client.send(OP_TEXT, b"queued")
        await client.send_close(1000)
        assert await client.recv_close() == (1000, b"")
        await cancelled.wait()
        stats = await finish(env, client)
    assert stats.end_reason == "client_closed" and stats.upstream_connect_seconds is None


async def test_client_drop_during_connect_cancels_it(nursery):
    cancelled = trio.Event()

    async def connect():
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    with trio.fail_after(T):
        env = await start_env(nursery, connect=connect)
        client = await env.raw_client()
        await client.aclose()
        await cancelled.wait()
        stats = await finish(env)
    assert stats.end_reason == "client_closed"


@pytest.mark.parametrize(
    "status,code,reason,kind",
    [(401, 1008, b"upstream auth failed", "rejected"), (403, 1008, b"upstream auth failed", "rejected"),
     (503, 1011, b"upstream unavailable", "rejected")],
)
async def test_upstream_rejected_default_close(nursery, status, code, reason, kind):
    with trio.fail_after(T):
        env = await start_env(nursery, reject_status=status)
        client = await env.raw_client()
        assert await client.recv_close() == (code, reason)
        await client.send_close(code)
        stats = await finish(env, client)
    assert stats.end_reason == f"upstream_failed:{kind}" and stats.sent_client_close_code == code


async def test_upstream_failure_frames_then_close(nursery):
    seen = []

    def on_failure(err):
        seen.append((err.kind, err.status, err.auth))
        code = "upstream_auth_failed" if err.auth else "upstream_unavailable"
        return [json.dumps({"type": "Error", "code": code}).encode()], 1008 if err.auth else 1011, "nope"

    with trio.fail_after(T):
        env = await start_env(nursery, reject_status=401, policy=SplicePolicy(on_upstream_failure=on_failure))
        client = await env.raw_client()
        f = await client.recv_frame()
        assert (f.opcode, json.loads(f.payload)["code"]) == (OP_TEXT, "upstream_auth_failed")
        assert await client.recv_close() == (1008, b"nope")
    assert seen == [("rejected", 401, True)]


async def test_upstream_refused(nursery):
    with trio.fail_after(T):
        env = await start_env(nursery)
        probe = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        env.up_port = probe.socket.getsockname()[1]
        await probe.aclose()  # nothing listens there now
        client = await env.raw_client()
        assert await client.recv_close() == (1011, b"upstream unavailable")
        await client.send_close(1011)
        stats = await finish(env, client)
    assert stats.end_reason == "upstream_failed:refused"


async def test_upstream_connect_timeout(nursery):
    silent = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]  # accepts, never answers
    port = silent.socket.getsockname()[1]
    nursery.start_soon(trio.serve_listeners, lambda s: trio.sleep_forever(), [silent])

    async def connect():
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        return stream, await client_handshake(stream, "127.0.0.1")

    with trio.fail_after(T):
        env = await start_env(nursery, connect=connect, policy=SplicePolicy(connect_timeout=0.2))
        client = await env.raw_client()
        t0 = trio.current_time()
        assert await client.recv_close() == (1011, b"upstream unavailable")
        assert trio.current_time() - t0 < 1.5
        await client.send_close(1011)
        stats = await finish(env, client)
    assert stats.end_reason == "upstream_failed:timeout"


async def test_connect_raising_something_else_is_a_clean_failure(nursery):
    async def connect():
        raise RuntimeError("boom with secret sk-123")

    with trio.fail_after(T):
        env = await start_env(nursery, connect=connect)
        client = await env.raw_client()
        code, reason = await client.recv_close()
        assert code == 1011 and b"sk-" not in reason
    assert (await env.session()).stats.end_reason == "upstream_failed:protocol"


async def test_idle_timeout(nursery):
    policy = SplicePolicy(idle_timeout=0.3, on_limit=limit_frames)
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=policy)
        await client.send(OP_TEXT, b"one")
        t0 = trio.current_time()
        assert (await upstream.recv_data()).payload == b"one"
        await client.send(OP_PING, b"not data")  # pings do not count as activity
        f = await client.recv_frame()
        assert f.opcode == OP_PONG
        f = await client.recv_frame()
        assert json.loads(f.payload)["code"] == "idle_timeout"
        assert await client.recv_close() == (1000, b"idle_timeout")
        assert trio.current_time() - t0 >= 0.25
        assert (await upstream.recv_close()) == (1000, b"idle_timeout")
    assert (await env.session()).stats.end_reason == "limit:idle_timeout"


async def test_session_max_duration(nursery):
    policy = SplicePolicy(max_session_seconds=0.3, idle_timeout=10, on_limit=limit_frames)
    with trio.fail_after(T):
        env = await start_env(nursery, policy=policy)
        client = await env.raw_client()
        t0 = trio.current_time()
        while True:  # keep talking; the cap still ends the session
            await client.send(OP_TEXT, b"ping")
            f = await client.recv_frame()
            if f.opcode != OP_TEXT or f.payload != b"ping":
                break
        assert json.loads(f.payload)["code"] == "session_max_duration"
        assert await client.recv_close() == (1000, b"session_max_duration")
        assert trio.current_time() - t0 >= 0.25


async def test_client_keepalive(nursery):
    ka = b'{"type":"KeepAlive"}'
    policy = SplicePolicy(client_keepalive=(0.1, ka))
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=policy)
        await client.send(OP_TEXT, b"Settings")
        assert (await upstream.recv_data()).payload == b"Settings"
        t0 = trio.current_time()
        for _ in range(2):
            f = await upstream.recv_data()
            assert (f.opcode, f.payload) == (OP_TEXT, ka) and f.mask is not None
        assert trio.current_time() - t0 >= 0.15
        # never inside a fragmented client message
        await client.send(OP_BINARY, b"part", fin=False)
        assert (await upstream.recv_data()).payload == b"part"
        await trio.sleep(0.35)  # several keepalive periods pass (the condition under test)
        await client.send(OP_CONT, b"end")
        f = await upstream.recv_data()
        assert (f.opcode, f.payload) == (OP_CONT, b"end")
        f = await upstream.recv_data()
        assert f.payload == ka
    assert client.received == []  # nothing injected toward the client


async def test_shutdown_sends_limit_frames_then_1001(nursery):
    shutdown = trio.Event()
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, shutdown=shutdown,
                                             policy=SplicePolicy(on_limit=limit_frames))
        await client.send(OP_TEXT, b"x")
        assert (await upstream.recv_data()).payload == b"x"
        shutdown.set()
        f = await client.recv_frame()
        assert json.loads(f.payload)["code"] == "shutting_down"
        assert await client.recv_close() == (1001, b"shutting_down")
        assert await upstream.recv_close() == (1001, b"shutting_down")
        await client.send_close(1001)
        await upstream.send_close(1001)
        stats = await finish(env, client, upstream)
    assert stats.end_reason == "limit:shutting_down" and stats.sent_client_close_code == 1001


async def test_shutdown_inside_a_fragmented_message_injects_nothing(nursery):
    shutdown = trio.Event()
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, shutdown=shutdown,
                                             policy=SplicePolicy(on_limit=limit_frames))
        await upstream.send(OP_TEXT, b"half", fin=False)
        assert (await client.recv_data()).payload == b"half"
        shutdown.set()
        f = await client.recv_frame()
        assert f.opcode == OP_CLOSE and f.close == (1001, b"shutting_down")


async def test_shutdown_during_connect(nursery):
    shutdown = trio.Event()
    with trio.fail_after(T):
        env = await start_env(nursery, connect_gate=trio.Event(), shutdown=shutdown,
                              policy=SplicePolicy(on_limit=limit_frames))
        client = await env.raw_client()
        shutdown.set()
        assert (await client.recv_frame()).opcode == OP_TEXT
        assert await client.recv_close() == (1001, b"shutting_down")
        await client.send_close(1001)
        await finish(env, client)


# ---------------------------------------------------------------- observer


class Observer:
    def __init__(self):
        self.wants_text = True
        self.texts: list[bytes] = []
        self.binaries = 0

    def observe_text(self, payload: bytes) -> list[bytes]:
        self.texts.append(payload)
        msg = json.loads(payload)
        if msg.get("role") == "assistant":
            self.wants_text = False
            return [b'{"type":"AgentAudioDone"}'] if self.binaries else []
        return []

    def observe_binary(self) -> None:
        self.binaries += 1


async def test_observer_injects_at_message_boundary(nursery):
    obs = Observer()
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=SplicePolicy(upstream_observer=obs))
        assistant = b'{"type":"ConversationText","role":"assistant","content":"hi"}'
        wire = encode_frame(OP_TEXT, b'{"type":"Welcome"}') + encode_frame(OP_BINARY, b"\x00" * 10)
        wire += encode_frame(OP_TEXT, assistant[:20], fin=False) + encode_frame(OP_PING, b"p")
        wire += encode_frame(OP_CONT, assistant[20:]) + encode_frame(OP_TEXT, b'{"type":"After"}')
        await upstream.send_raw(wire)
        got = [await client.recv_frame() for _ in range(6)]
        await upstream.send(OP_TEXT, b'{"type":"ConversationText","role":"assistant"}')
        assert (await client.recv_frame()).payload == b'{"type":"ConversationText","role":"assistant"}'
        await upstream.send(OP_TEXT, b'{"type":"X"}')
        assert (await client.recv_frame()).payload == b'{"type":"X"}'  # observer stopped
    assert [(f.opcode, f.payload) for f in got] == [
        (OP_TEXT, b'{"type":"Welcome"}'),
        (OP_BINARY, b"\x00" * 10),
        (OP_TEXT, assistant[:20]),
        (OP_CONT, assistant[20:]),
        (OP_TEXT, b'{"type":"AgentAudioDone"}'),
        (OP_TEXT, b'{"type":"After"}'),
    ]
    assert obs.texts == [b'{"type":"Welcome"}', assistant] and obs.binaries == 1


async def test_observer_sees_a_streamed_large_text_message(nursery):
    obs = Observer()
    big = json.dumps({"type": "ConversationText", "role": "assistant", "content": "y" * 300_000}).encode()
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=SplicePolicy(upstream_observer=obs))
        # written by another task: the client only reads after
        nursery.start_soon(upstream.send_raw, encode_frame(OP_BINARY, b"audio") + encode_frame(OP_TEXT, big))
        assert (await client.recv_data()).payload == b"audio"
        assert (await client.recv_data()).payload == big
        assert (await client.recv_data()).payload == b'{"type":"AgentAudioDone"}'
    assert obs.texts == [big]


async def test_observer_exception_ends_session_cleanly(nursery):
    class Broken:
        wants_text = True

        def observe_text(self, payload):
            raise RuntimeError("bug")

        def observe_binary(self):
            pass

    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=SplicePolicy(upstream_observer=Broken()))
        await upstream.send(OP_TEXT, b"{}")
        assert await client.recv_close() == (1011, b"internal error")
        assert await upstream.recv_close() == (1000, b"")
        await client.send_close(1011)
        await upstream.send_close(1000)
        stats = await finish(env, client, upstream)
    assert stats.end_reason == "error"


# ---------------------------------------------------------------- protocol errors


def _bad_client_frames(peer: RawPeer) -> dict[str, bytes]:
    k = RawPeer.CLIENT_KEY
    return {
        "unmasked": encode_frame(OP_TEXT, b"hi"),
        "rsv1": encode_frame(OP_TEXT, b"hi", rsv=4, mask=k),
        "rsv3": encode_frame(OP_BINARY, b"hi", rsv=1, mask=k),
        "opcode3": encode_frame(3, b"hi", mask=k),
        "opcode11": encode_frame(0xB, b"", mask=k),
        "ping126": encode_frame(OP_PING, b"p" * 126, mask=k),
        "fragmented_ping": encode_frame(OP_PING, b"p", fin=False, mask=k),
        "cont_without_start": encode_frame(OP_CONT, b"x", mask=k),
        "new_msg_in_fragmented": encode_frame(OP_TEXT, b"a", fin=False, mask=k) + encode_frame(OP_BINARY, b"b", mask=k),
        "close_len1": encode_frame(OP_CLOSE, b"\x03", mask=k),
        "close_1005": encode_frame(OP_CLOSE, close_payload(1005), mask=k),
        "close_1006": encode_frame(OP_CLOSE, close_payload(1006), mask=k),
        "close_1015": encode_frame(OP_CLOSE, close_payload(1015), mask=k),
        "close_999": encode_frame(OP_CLOSE, close_payload(999), mask=k),
        "close_2999": encode_frame(OP_CLOSE, close_payload(2999), mask=k),
        "close_5000": encode_frame(OP_CLOSE, close_payload(5000), mask=k),
        "length_msb": encode_frame(OP_BINARY, b"", mask=k, length=1 << 63),
    }


@pytest.mark.parametrize("case", sorted(_bad_client_frames(None)))
async def test_client_protocol_errors_give_1002(nursery, case):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery, policy=SplicePolicy(max_message_bytes=1 << 62))
        await client.send(OP_TEXT, b"fine")
        await client.send_raw(_bad_client_frames(client)[case])
        assert await client.recv_close() == (1002, b"protocol error")
        await client.wait_eof()  # the gateway half-closes after its close frame
        await client.aclose()
        assert (await upstream.recv_data()).payload == b"fine"
        assert await upstream.recv_close() == (1000, b"")
        await upstream.send_close(1000)
        stats = await finish(env, upstream=upstream)
    assert stats.end_reason == "protocol_error:client" and stats.sent_client_close_code == 1002
    if case == "new_msg_in_fragmented":
        assert [f.payload for f in env.upstream_peers[0].received[:2]] == [b"fine", b"a"]


@pytest.mark.parametrize(
    "bad",
    [encode_frame(OP_TEXT, b"hi", mask=b"abcd"), encode_frame(OP_TEXT, b"hi", rsv=4),
     encode_frame(7, b""), encode_frame(OP_CONT, b"x"), encode_frame(OP_PING, b"p" * 126)],
    ids=["masked", "rsv", "opcode7", "cont", "ping126"],
)
async def test_upstream_protocol_errors(nursery, bad):
    with trio.fail_after(T):
        env, client, upstream = await manual(nursery)
        await upstream.send_raw(encode_frame(OP_TEXT, b"ok") + bad)
        assert (await client.recv_data()).payload == b"ok"
        assert await client.recv_close() == (1011, b"upstream error")
        assert await upstream.recv_close() == (1002, b"protocol error")
        await upstream.wait_eof()
        await upstream.aclose()
        await client.send_close(1011)
        stats = await finish(env, client)
    assert stats.end_reason == "protocol_error:upstream"
