"""The official Node `openai` SDK (v7) through the raw Realtime relay: it always rewrites its
base URL to wss://, so it works through voxgate only with --tls-cert/--tls-key (issue 14
item 6). The script in tests/clients/node/ is the README's example, run as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import trio
import trustme

from tests.support.gateway import base_env
from tests.support.keys import OPENAI_KEY
from tests.support.node import node_modules

SCRIPT = Path(__file__).resolve().parent / "node" / "openai_realtime.mjs"
NODE_PACKAGES = ("openai@7", "ws@8")


def run_node(modules: Path, base_url: str, ca_file: str | None) -> tuple[int, list[dict], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "NODE_"))}
    env.update(NODE_PATH=str(modules), VOXGATE_BASE_URL=base_url)
    if ca_file:
        env["NODE_EXTRA_CA_CERTS"] = ca_file
    # An .mjs file resolves bare imports from its own folder upwards, not NODE_PATH: run a
    # copy beside the installed node_modules.
    script = modules.parent / SCRIPT.name
    shutil.copyfile(SCRIPT, script)
    done = subprocess.run(
        [shutil.which("node") or "node", str(script)], env=env, capture_output=True, text=True,
        timeout=30, stdin=subprocess.DEVNULL,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, lines, done.stderr


async def test_node_openai_sdk_needs_and_works_with_tls(gateway_factory, openai_sim, tmp_path):
    modules = await trio.to_thread.run_sync(node_modules, *NODE_PACKAGES)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path, ca_path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    ca.cert_pem.write_to_path(str(ca_path))
    env = base_env(OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=f"ws://127.0.0.1:{openai_sim.port}/v1/realtime")
    plain = await gateway_factory(env=env)
    tls = await gateway_factory(
        "--tls-cert", str(cert_path), "--tls-key", str(key_path), env=env, wait_ready=False
    )
    await trio.to_thread.run_sync(tls.wait_for_output, "worker ready provider=openai")

    # Without TLS: the SDK still dials wss:// and the TLS handshake on a plain port fails.
    code, lines, _ = await trio.to_thread.run_sync(run_node, modules, f"http://127.0.0.1:{plain.port}/openai/v1", None)
    assert code == 1 and "error" in lines[-1]
    assert openai_sim.connections == []

    code, lines, stderr = await trio.to_thread.run_sync(
        run_node, modules, f"https://localhost:{tls.port}/openai/v1", str(ca_path)
    )
    assert code == 0, (lines, stderr)
    assert lines[0]["url"] == f"wss://localhost:{tls.port}/openai/v1/realtime?model=gpt-realtime"
    assert [line.get("type") for line in lines[1:]] == ["session.created", "response.done"]
    assert lines[-1]["status"] == "completed"
    [record] = openai_sim.connections
    assert record.header("authorization") == f"Bearer {OPENAI_KEY}"  # the gateway's key
    assert ("model", "gpt-realtime") in record.query
    assert "not-used" not in json.dumps(record.headers)
