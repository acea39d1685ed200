"""Startup by key (issue 2 §3, P20-P22): exit codes, startup lines, 503 for the off provider."""

from __future__ import annotations

import re

from tests.support.gateway import base_env, run_cli
from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY
from tests.support.rawws import RawClient


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_neither_key_is_one_line_exit_1_nothing_bound():
    result = run_cli("serve", "--port", "0", env=base_env(OPENAI_API_KEY="  ", DEEPGRAM_API_KEY=""))
    assert result.returncode == 1
    lines = _lines(result.stderr)
    assert len(lines) == 1
    assert "At least one of DEEPGRAM_API_KEY or OPENAI_API_KEY is required" in lines[0]
    assert "listening" not in result.stdout


def test_invalid_values_are_one_line_exit_2():
    env = base_env(OPENAI_API_KEY=OPENAI_KEY)
    cases = [
        ("--port", "70000"),
        ("--proxy-path", "no-slash"),
        ("--proxy-path", "/openai"),
        ("--openai-realtime-url", "http://example.com"),
        ("--log-level", "loud"),
        ("--workers-per-provider", "0"),
    ]
    for flag, value in cases:
        result = run_cli("serve", flag, value, env=env)
        assert result.returncode == 2, (flag, value, result.stderr)
        assert len(_lines(result.stderr)) == 1, result.stderr
        assert "Traceback" not in result.stderr
        assert OPENAI_KEY not in result.stderr + result.stdout
    env_bad = base_env(OPENAI_API_KEY=OPENAI_KEY, PROXY_PORT="abc")
    result = run_cli("serve", env=env_bad)
    assert result.returncode == 2 and len(_lines(result.stderr)) == 1


def test_port_in_use_is_one_line_exit_1():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--port", str(port), env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    assert result.returncode == 1
    assert len(_lines(result.stderr)) == 1 and "cannot listen" in result.stderr


async def test_openai_only(gateway_factory):
    gw = await gateway_factory(env=base_env(OPENAI_API_KEY=OPENAI_KEY))
    out = gw.output
    assert re.search(rf"endpoint ws://127\.0\.0\.1:{gw.port}/openai live", out)
    assert re.search(rf"endpoint ws://127\.0\.0\.1:{gw.port}/openai/v1/realtime live", out)
    assert re.search(rf"endpoint ws://127\.0\.0\.1:{gw.port}/deepgram-proxy off \(DEEPGRAM_API_KEY not set\)", out)
    ready = gw.ready()
    assert ready["_status"] == 200
    assert ready["services"]["openai"]["enabled"] is True
    assert ready["services"]["openai"]["path"] == "/openai"
    assert ready["services"]["deepgram"]["enabled"] is False
    assert ready["services"]["deepgram"]["path"] is None
    client = await RawClient.connect(gw.port, "/deepgram-proxy?service=agent")
    assert client.status == 503
    body = await client.body()
    assert b"DEEPGRAM_API_KEY" in body
    await client.aclose()
    assert OPENAI_KEY not in gw.output and OPENAI_KEY[:8] not in gw.output


async def test_deepgram_only(gateway_factory):
    gw = await gateway_factory(env=base_env(DEEPGRAM_API_KEY="dgkey_" + DEEPGRAM_KEY))
    out = gw.output
    assert re.search(rf"endpoint ws://127\.0\.0\.1:{gw.port}/deepgram-proxy live", out)
    assert re.search(rf"endpoint ws://127\.0\.0\.1:{gw.port}/openai off \(OPENAI_API_KEY not set\)", out)
    ready = gw.ready()
    assert ready["services"]["deepgram"] == {**ready["services"]["deepgram"], "enabled": True, "path": "/deepgram-proxy"}
    assert ready["services"]["openai"]["enabled"] is False
    for path in ("/openai", "/openai/v1/realtime", "/openai/v1/agent/converse"):
        client = await RawClient.connect(gw.port, path)
        assert client.status == 503
        assert b"OPENAI_API_KEY" in await client.body()
        await client.aclose()
    assert DEEPGRAM_KEY[:10] not in gw.output


async def test_both_keys_one_port(gateway_factory):
    gw = await gateway_factory(env=base_env(OPENAI_API_KEY=OPENAI_KEY, DEEPGRAM_API_KEY=DEEPGRAM_KEY))
    ready = gw.ready()
    assert ready["services"]["openai"]["enabled"] and ready["services"]["deepgram"]["enabled"]
    assert ready["services"]["openai"]["ready"] is True and ready["services"]["deepgram"]["ready"] is True
    assert "off (" not in gw.output


async def test_env_file_feeds_keys_and_real_env_wins(gateway_factory, tmp_path):
    env_file = tmp_path / "gw.env"
    env_file.write_text(f"OPENAI_API_KEY={OPENAI_KEY}\nPROXY_PATH=/from-dotenv\n")
    env = base_env(PROXY_PATH="/from-env")
    env.pop("SKIP_DOTENV")
    gw = await gateway_factory("--env-file", str(env_file), env=env)
    assert "/openai live" in gw.output
    assert "/from-env off" in gw.output and "/from-dotenv" not in gw.output


def test_check_validates_and_describes_without_starting():
    env = base_env(OPENAI_API_KEY=OPENAI_KEY, VOXGATE_CLIENT_TOKENS="Tq7pXv9-secret")
    result = run_cli("check", "--port", "18555", "--max-sessions", "50", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "endpoint ws://127.0.0.1:18555/openai live" in out
    assert "off (DEEPGRAM_API_KEY not set)" in out
    assert "caps global 50" in out and "client tokens 1 static" in out
    assert out.strip().endswith("configuration ok")
    assert OPENAI_KEY[:6] not in out and "Tq7pXv" not in out
    assert "listening" not in out
    bad = run_cli("check", "--idle-timeout", "-1", env=env)
    assert bad.returncode == 2 and len(_lines(bad.stderr)) == 1
    none = run_cli("check", env=base_env())
    assert none.returncode == 1 and "At least one of DEEPGRAM_API_KEY or OPENAI_API_KEY" in none.stderr
