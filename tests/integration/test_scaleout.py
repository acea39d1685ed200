"""Scale-out on Redis with real parts (issue 12 §5): a real redis-server, three voxgate
instances, and HAProxy round-robin in front of them with deploy/haproxy/haproxy.cfg.
Clients connect through HAProxy; the admin API is called on one instance directly."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field

import pytest
import trio

from tests.support.admin import ADMIN, admin
from tests.support.gateway import Gateway, astart_gateway, astop, echo_env, kill_if_alive
from tests.support.rawws import OP_BIN, OP_TEXT, RawClient, read_until_close
from tests.support.scaleout import HAProxy, RedisServer, require_binaries
from tests.support.upstream import EchoUpstream

LISTEN = "/deepgram-proxy/v1/listen?encoding=linear16&sample_rate=16000"
BYTES_PER_SECOND = 32000
SECRET = "Tk2Qe8Wp5Zs-secret"
NAMES = ("a", "b", "c")


@dataclass
class Cluster:
    redis: RedisServer
    gateways: dict[str, Gateway]
    proxy: HAProxy | None = None
    clients: list[RawClient] = field(default_factory=list)

    async def connect(self, path: str = LISTEN, headers: list[tuple[str, str]] | None = None) -> RawClient:
        """One session through HAProxy (round-robin picks the instance)."""
        with trio.fail_after(10):
            client = await RawClient.connect(self.proxy.port, path, headers=headers or [])
        self.clients.append(client)
        return client

    async def listing(self, name: str = "a", query: str = "") -> list[dict]:
        status, body = await admin(self.gateways[name], "GET", "/v1/sessions" + query)
        assert status == 200, body
        return body["sessions"]

    async def wait_listing(self, predicate, name: str = "a", timeout: float = 8.0) -> list[dict]:
        with trio.fail_after(timeout):
            while not predicate(sessions := await self.listing(name)):
                await trio.sleep(0.1)
        return sessions


@pytest.fixture
async def cluster_factory(nursery, tmp_path):
    """`await start(*flags, lease=3, tokens=False)`: Redis, an echo upstream, instances a/b/c, HAProxy."""
    require_binaries()
    echo = EchoUpstream()
    echo.port = await nursery.start(echo.serve)
    made: list[Cluster] = []

    async def start(*flags: str, lease: float = 3.0, proxy: bool = True, redis_url: str | None = None,
                    names: tuple[str, ...] = NAMES, tokens: bool = False) -> Cluster:
        redis = RedisServer(tmp_path)
        await trio.to_thread.run_sync(redis.start)
        cluster = Cluster(redis, {})
        made.append(cluster)
        args = ("--redis-lease", str(lease), "--trust-proxy-headers", *flags)

        async def one(name: str) -> None:
            env = echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_REDIS_URL=redis_url or redis.url,
                           VOXGATE_INSTANCE_ID=name, VOXGATE_TOKEN_SECRET=SECRET if tokens else None)
            cluster.gateways[name] = await astart_gateway(*args, env=env)

        async with trio.open_nursery() as starting:
            for name in names:
                starting.start_soon(one, name)
        if proxy:
            ports = [cluster.gateways[n].port for n in NAMES]
            cluster.proxy = await trio.to_thread.run_sync(lambda: HAProxy(ports))
        return cluster

    start.echo = echo
    yield start
    for cluster in made:
        for client in cluster.clients:
            await client.aclose()
        if cluster.proxy is not None:
            cluster.proxy.stop()
        for gw in cluster.gateways.values():
            await astop(gw)
        cluster.redis.stop()


async def rejected(client: RawClient) -> dict:
    """The JSON body of a refusal (no 101 was sent)."""
    assert client.status != 101
    length = int(client.header("Content-Length") or 0)  # HAProxy may keep the connection
    with trio.fail_after(5):
        while len(client.buf) < length:
            data = await client.stream.receive_some(65536)
            assert data, "connection closed inside the body"
            client.buf += data
    return json.loads(bytes(client.buf[:length]).decode() or "{}")


async def echo_round(client: RawClient, payload: bytes) -> None:
    """Send one binary frame and read its echo (no frame lost on this session)."""
    await client.send_frame(OP_BIN, payload)
    with trio.fail_after(5):
        while True:
            op, data = await client.recv_message()
            if op == OP_BIN:
                assert data == payload
                return


async def test_per_ip_limits_hold_across_three_instances(cluster_factory):
    cluster = await cluster_factory("--max-sessions-per-ip", "2", "--max-new-sessions-per-ip-per-minute", "3")
    first, second = await cluster.connect(), await cluster.connect()
    assert (first.status, second.status) == (101, 101)
    sessions = await cluster.wait_listing(lambda s: len(s) == 2, name="c")
    assert {s["instance"] for s in sessions} == {"a", "b"}  # round-robin: one each, listed on c
    for _ in range(3):  # the third session on any instance: 429 before the 101
        refused = await cluster.connect()
        assert refused.status == 429
        assert (await rejected(refused))["error"] == "ip_sessions"
    await first.close()
    # the slot comes back as soon as the session ends
    with trio.fail_after(8):
        while True:
            again = await cluster.connect()
            if again.status == 101:
                break
            await rejected(again)
            await trio.sleep(0.2)
    await echo_round(again, b"\x01" * 640)
    # the new-session rate is shared too: three sessions admitted so far, on three instances
    await second.close()
    await cluster.wait_listing(lambda s: len(s) == 1, name="b")
    # b's own listing drops the session at once; its slot reaches Redis on b's next store tick
    with trio.fail_after(8):
        while (body := await rejected(refused := await cluster.connect()))["error"] == "ip_sessions":
            await trio.sleep(0.1)
    assert refused.status == 429 and int(refused.header("Retry-After")) >= 1
    assert body["error"] == "ip_rate"


async def test_token_max_sessions_and_revocation_across_instances(cluster_factory):
    cluster = await cluster_factory(tokens=True)
    a = cluster.gateways["a"]
    status, minted = await admin(a, "POST", "/v1/tokens", body=json.dumps({"label": "tab", "max_sessions": 1, "ttl": 600}).encode())
    assert status == 200 and minted["id"]
    auth = [("Authorization", f"Bearer {minted['token']}")]
    first = await cluster.connect(headers=auth)
    assert first.status == 101
    for _ in range(3):  # on b, c and a again: the token's one session is shared
        refused = await cluster.connect(headers=auth)
        assert refused.status == 429
        body = await rejected(refused)
        assert body["error"] == "budget_exceeded" and body["limit"] == "max_sessions"
    # revoked on instance b: the live session (on a) ends, and the token is refused everywhere
    status, body = await admin(cluster.gateways["b"], "DELETE", f"/v1/tokens/{minted['id']}")
    assert status == 200 and body["revoked"] == minted["id"]
    with trio.fail_after(2.5):
        _, code = await read_until_close(first)
    assert code == 1008
    for _ in range(3):
        refused = await cluster.connect(headers=auth)
        assert refused.status == 401
    assert minted["token"] not in "".join(gw.output for gw in cluster.gateways.values())


async def test_replace_oldest_and_kill_reach_another_instance(cluster_factory):
    cluster = await cluster_factory("--on-session-limit", "replace-oldest", tokens=True)
    _, minted = await admin(cluster.gateways["a"], "POST", "/v1/tokens",
                            body=json.dumps({"label": "kiosk", "max_sessions": 1}).encode())
    auth = [("Authorization", f"Bearer {minted['token']}")]
    old = await cluster.connect(headers=auth)  # lands on a
    assert old.status == 101
    await cluster.wait_listing(lambda s: [x["instance"] for x in s] == ["a"])
    new = await cluster.connect(headers=auth)  # lands on b and replaces the one on a
    assert new.status == 101
    messages, code = await read_until_close(old, timeout=3)
    assert code == 1008
    sessions = await cluster.wait_listing(lambda s: len(s) == 1)
    assert sessions[0]["instance"] == "b"
    await echo_round(new, b"\x02" * 320)

    # a kill sent to instance a ends a session living on instance c
    _, other = await admin(cluster.gateways["a"], "POST", "/v1/tokens", body=json.dumps({"label": "ops"}).encode())
    on_c = await cluster.connect(headers=[("Authorization", f"Bearer {other['token']}")])
    assert on_c.status == 101
    sessions = await cluster.wait_listing(lambda s: any(x["instance"] == "c" for x in s))
    target = next(x for x in sessions if x["instance"] == "c")
    started = trio.current_time()
    status, body = await admin(cluster.gateways["a"], "DELETE", f"/v1/sessions/{target['id']}")
    assert status == 200 and body == {"ended": 1, "ids": [target["id"]]}
    _, code = await read_until_close(on_c, timeout=3)
    assert code == 1008 and trio.current_time() - started < 2.0
    await echo_round(new, b"\x03" * 320)  # the other session is untouched


async def test_sigkilled_instance_leaves_the_counts_within_the_lease(cluster_factory):
    cluster = await cluster_factory("--max-sessions-per-ip", "3", lease=2.0)
    clients = [await cluster.connect() for _ in range(3)]  # a, b, c
    assert [c.status for c in clients] == [101, 101, 101]
    await cluster.wait_listing(lambda s: sorted(x["instance"] for x in s) == ["a", "b", "c"])
    refused = await cluster.connect()
    assert refused.status == 429
    await rejected(refused)
    b = cluster.gateways["b"]
    killed = trio.current_time()
    for pid in (b.pid, *b.worker_pids):  # the whole instance, as a node failure would
        os.kill(pid, signal.SIGKILL)
    sent = 0
    with trio.fail_after(6):
        while {x["instance"] for x in await cluster.listing("a")} != {"a", "c"}:
            for survivor in (clients[0], clients[2]):  # keep streaming meanwhile
                await echo_round(survivor, bytes([sent % 256]) * 640)
            sent += 1
            await trio.sleep(0.1)
    assert trio.current_time() - killed < 2.0 + 1.5
    for survivor in (clients[0], clients[2]):
        await echo_round(survivor, b"\x07" * 640)
    b.proc.wait(5)
    for pid in b.worker_pids:
        kill_if_alive(pid)
    # the freed slot is usable again (HAProxy's health check skips the dead instance)
    with trio.fail_after(8):
        while (again := await cluster.connect()).status != 101:
            await rejected(again)
            await trio.sleep(0.2)


async def test_redis_outage_is_survived_and_limits_come_back(cluster_factory):
    cluster = await cluster_factory("--max-sessions-per-ip", "1")
    live = await cluster.connect()  # on a
    assert live.status == 101
    await cluster.wait_listing(lambda s: len(s) == 1)
    await trio.to_thread.run_sync(cluster.redis.stop)
    await echo_round(live, b"\x04" * 640)
    # open (the default): admitted with per-instance limits; b has no session from us
    during = await cluster.connect()
    assert during.status == 101
    await echo_round(during, b"\x05" * 640)
    await echo_round(live, b"\x06" * 640)
    b = cluster.gateways["b"]
    assert b.ready()["store"] == {**b.ready()["store"], "backend": "redis", "redis": "down"}
    status, _, metrics = b.http("/metrics")
    errors = [line for line in metrics.decode().splitlines() if line.startswith("voxgate_redis_errors_total")]
    assert errors and float(errors[0].split()[-1]) >= 1
    assert len(b.output.split("redis unavailable")) == 2  # logged once per outage

    await trio.to_thread.run_sync(cluster.redis.start)
    with trio.fail_after(10):
        while not all(g.ready()["store"]["redis"] == "up" for g in cluster.gateways.values()):
            await trio.sleep(0.2)
    # both live sessions are back in the shared counts: the per-IP limit of 1 holds again
    await cluster.wait_listing(lambda s: len(s) == 2, name="c")
    for _ in range(3):
        refused = await cluster.connect()
        assert refused.status == 429
        await rejected(refused)
    await echo_round(live, b"\x08" * 640)


async def test_redis_failure_closed_refuses_new_sessions_only(cluster_factory):
    cluster = await cluster_factory("--redis-failure", "closed", proxy=False, names=("a",))
    a = cluster.gateways["a"]
    live = await RawClient.connect(a.port, LISTEN)
    cluster.clients.append(live)
    assert live.status == 101
    await trio.to_thread.run_sync(cluster.redis.stop)
    await echo_round(live, b"\x09" * 640)
    with trio.fail_after(5):  # the first refused admission (or the background loop) finds Redis gone
        while True:
            client = await RawClient.connect(a.port, LISTEN)
            cluster.clients.append(client)
            if client.status == 503:
                break
            assert client.status == 101
    assert client.header("Retry-After") == "2"
    assert (await rejected(client))["error"] == "redis_unavailable"
    assert a.ready()["store"]["redis"] == "down"
    await echo_round(live, b"\x0a" * 640)  # the live session is untouched
    await trio.to_thread.run_sync(cluster.redis.start)
    with trio.fail_after(10):
        while a.ready()["store"]["redis"] != "up":
            await trio.sleep(0.2)
    back = await RawClient.connect(a.port, LISTEN)
    cluster.clients.append(back)
    assert back.status == 101
    status, sessions = await admin(a, "GET", "/v1/sessions")
    assert {s["instance"] for s in sessions["sessions"]} == {"a"}


async def test_usage_totals_equal_what_the_upstreams_saw(cluster_factory):
    cluster = await cluster_factory()
    echo = cluster_factory.echo
    sizes = {0: 6400, 1: 9600, 2: 3200}
    clients = [await cluster.connect() for _ in sizes]
    for index, client in enumerate(clients):
        for _ in range(index + 2):
            await echo_round(client, b"\x00" * sizes[index])
    relay = await cluster.connect("/openai/v1/realtime")
    assert relay.status == 101
    usages = [{"total_tokens": 30, "input_tokens": 20, "output_tokens": 10},
              {"total_tokens": 7, "input_tokens": 5, "output_tokens": 2}]
    for usage in usages:
        await relay.send_frame(OP_TEXT, json.dumps({"type": "response.done", "response": {"usage": usage}}).encode())
        with trio.fail_after(5):
            while (await relay.recv_message())[0] != OP_TEXT:
                pass
    for client in [*clients, relay]:
        await client.close()
    seen_audio = sum(len(m) for c in echo.conns if c.path.endswith("/v1/listen") for m in c.received
                     if isinstance(m, bytes)) / BYTES_PER_SECOND
    seen_tokens = sum(u["total_tokens"] for u in usages)
    with trio.fail_after(8):
        while True:
            status, body = await admin(cluster.gateways["c"], "GET", "/v1/usage")
            assert status == 200 and body["scope"] == "shared"
            if body["audio_seconds"]["up"] >= seen_audio - 1e-6 and body["tokens"] >= seen_tokens:
                break
            await trio.sleep(0.2)
    assert body["audio_seconds"]["up"] == pytest.approx(seen_audio, abs=1e-6)
    assert body["tokens"] == seen_tokens


# -- the same interface without Redis: one instance, everything in-process --------------------


async def test_revocation_and_usage_work_in_process(gateway_factory, echo):
    gw = await gateway_factory(env=echo_env(echo, VOXGATE_ADMIN_TOKEN=ADMIN, VOXGATE_TOKEN_SECRET=SECRET))
    assert gw.ready()["store"] == {"backend": "local"}
    _, minted = await admin(gw, "POST", "/v1/tokens", body=json.dumps({"label": "tab"}).encode())
    auth = [("Authorization", f"Bearer {minted['token']}")]
    client = await RawClient.connect(gw.port, LISTEN, headers=auth)
    assert client.status == 101
    await echo_round(client, b"\x00" * 16000)
    assert (await admin(gw, "DELETE", "/v1/tokens/" + minted["id"], token="wrong"))[0] == 401
    assert (await admin(gw, "DELETE", "/v1/tokens/" + "x" * 80))[0] == 400
    status, body = await admin(gw, "DELETE", "/v1/tokens/" + minted["id"])
    assert status == 200 and body == {"revoked": minted["id"], "ended": 1}
    messages, code = await read_until_close(client, timeout=3)
    assert code == 1008
    again = await RawClient.connect(gw.port, LISTEN, headers=auth)
    assert again.status == 401
    await again.aclose()
    with trio.fail_after(5):
        while (body := (await admin(gw, "GET", "/v1/usage"))[1])["audio_seconds"]["up"] < 0.5:
            await trio.sleep(0.1)
    assert body["scope"] == "instance" and body["audio_seconds"]["up"] == pytest.approx(0.5, abs=1e-6)
    assert minted["token"] not in gw.output


@pytest.mark.parametrize(("flags", "message"), [
    (("--redis-url", "http://cache:6379"), "--redis-url must start with"),
    (("--redis-url", "redis://cache:port/0"), "--redis-url is not a valid"),
    (("--redis-failure", "maybe"), "--redis-failure"),
    (("--redis-lease", "0"), "--redis-lease"),
    (("--instance-id", "a b"), "--instance-id"),
])
def test_bad_scale_out_flags_are_one_line_exit_2(flags, message):
    from tests.support.gateway import base_env, run_cli

    result = run_cli("check", *flags, env=base_env(OPENAI_API_KEY="sk-x" * 5))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_check_names_the_shared_state_never_the_redis_password():
    from tests.support.gateway import base_env, run_cli

    result = run_cli("check", "--redis-url", "redis://:Pw9xTq2Lm@cache:6379/0", "--instance-id", "pod-1",
                     env=base_env(OPENAI_API_KEY="sk-x" * 5))
    assert result.returncode == 0, result.stderr
    assert "shared state on Redis as instance pod-1 (lease 15s, redis failure open)" in result.stdout
    assert "Pw9xTq2Lm" not in result.stdout + result.stderr
    plain = run_cli("check", env=base_env(OPENAI_API_KEY="sk-x" * 5))
    assert "shared state in-process" in plain.stdout
