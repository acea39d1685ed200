"""Start `voxgate serve` for a benchmark run, pointed at the benchmark upstream.

Modelled on the test support module, but with output going to a file (a pipe nobody reads
fast enough would stall the gateway under load) and fake keys that never leave loopback.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from voxgate.bench.procs import Managed, spawn

LISTENING = r"listening on (\S+):(\d+) \(pid (\d+)\)"
START_TIMEOUT = 30.0
# Placeholders: the benchmark upstream accepts anything, so no real key is ever needed.
BENCH_OPENAI_KEY = "sk-bench-placeholder-not-a-real-key-000000"
BENCH_DEEPGRAM_KEY = "bench-placeholder-not-a-real-key-0000000000"


@dataclass
class GatewayProc:
    managed: Managed
    port: int
    workers: dict[str, list[int]]  # provider -> worker pids

    @property
    def pid(self) -> int:
        return self.managed.pid

    def stop(self) -> None:
        self.managed.stop()


def bench_env(upstream_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_", "DEEPGRAM_", "PROXY_"))}
    upstream = f"ws://127.0.0.1:{upstream_port}"
    env.update(
        SKIP_DOTENV="1",
        PYTHONUNBUFFERED="1",
        OPENAI_API_KEY=BENCH_OPENAI_KEY,
        DEEPGRAM_API_KEY=BENCH_DEEPGRAM_KEY,
        DEEPGRAM_AGENT_URL=upstream,
        DEEPGRAM_API_URL=upstream,
        OPENAI_REALTIME_URL=upstream + "/v1/realtime",
    )
    return env


def self_signed(directory: Path) -> tuple[str, str]:
    """A throw-away certificate and key for the wss gateway (trustme when installed, else the
    openssl command)."""
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    try:
        import trustme
    except ImportError:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        return str(cert), str(key)
    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for pem in issued.cert_chain_pems[1:]:
        pem.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def readyz(port: int, tls: bool = False) -> tuple[int, dict]:
    scheme = "https" if tls else "http"
    context = ssl._create_unverified_context() if tls else None  # noqa: SLF001 - our own throw-away cert
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/readyz", timeout=5, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, {}
    except (OSError, ValueError):
        return 0, {}


def start(log_dir: Path, upstream_port: int, workers_per_provider: int = 1,
          extra_args: tuple[str, ...] = (), tls: bool = False) -> GatewayProc:
    """Spawn the gateway and wait for its listening line and a ready /readyz. `tls`: serve
    wss with a throw-away certificate."""
    if tls:
        cert, key = self_signed(log_dir)
        extra_args = (*extra_args, "--tls-cert", cert, "--tls-key", key)
    cmd = [sys.executable, "-m", "voxgate", "serve", "--port", "0",
           "--workers-per-provider", str(workers_per_provider), "--grace", "2", *extra_args]
    managed = spawn("voxgate-tls" if tls else "voxgate", cmd, log_dir, env=bench_env(upstream_port))
    try:
        match = managed.wait_for(LISTENING, START_TIMEOUT)
        port = int(match.group(2))
        deadline = time.monotonic() + START_TIMEOUT
        status, body = 0, {}
        while time.monotonic() < deadline:
            status, body = readyz(port, tls)
            if status == 200 and all(
                len(s.get("workers", [])) >= workers_per_provider for s in body.get("services", {}).values()
            ):
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"gateway not ready in {START_TIMEOUT}s (last /readyz {status})")
        workers = {
            provider: [w["pid"] for w in service.get("workers", [])]
            for provider, service in body.get("services", {}).items()
        }
        managed.extra_pids = [pid for pids in workers.values() for pid in pids]
        return GatewayProc(managed, port, workers)
    except BaseException:
        managed.stop()
        raise
