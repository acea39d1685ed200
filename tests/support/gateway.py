"""Start the real `voxgate serve` as a subprocess on a free loopback port, and stop it by PID.

Output is collected by reader threads so a test can wait for a line and inspect everything
the gateway printed (the secrets tests read it all).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import trio

from tests.support.keys import DEEPGRAM_KEY, OPENAI_KEY

LISTENING = re.compile(r"listening on (\S+):(\d+)")
START_TIMEOUT = 20.0


def base_env(**extra: str | None) -> dict[str, str]:
    """A clean environment: no keys unless given, no dotenv, nothing inherited that matters."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_", "DEEPGRAM_", "PROXY_"))}
    env["SKIP_DOTENV"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["VOXGATE_LOG_FORMAT"] = "text"  # tests read text lines; auto would pick JSON on a pipe
    for key, value in extra.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def upstream_env(deepgram_url: str, openai_url: str, **extra: str) -> dict[str, str]:
    """Both providers enabled with the test keys, each pointed at the given upstream URL."""
    return base_env(
        DEEPGRAM_API_KEY=DEEPGRAM_KEY, DEEPGRAM_AGENT_URL=deepgram_url, DEEPGRAM_API_URL=deepgram_url,
        OPENAI_API_KEY=OPENAI_KEY, OPENAI_REALTIME_URL=openai_url, **extra,
    )


def echo_env(echo: Any, **extra: str) -> dict[str, str]:
    """Both providers pointed at one echo upstream (anything with a `.port`)."""
    url = f"ws://127.0.0.1:{echo.port}"
    return upstream_env(url, url + "/v1/realtime", **extra)


def gateway_env(openai_sim: Any = None, deepgram_sim: Any = None, **extra: str) -> dict[str, str]:
    """Environment pointing the gateway at the given simulators (and only their keys)."""
    env = base_env(**extra)
    if openai_sim is not None:
        env["OPENAI_API_KEY"] = OPENAI_KEY
        env["OPENAI_REALTIME_URL"] = f"ws://127.0.0.1:{openai_sim.port}/v1/realtime"
    if deepgram_sim is not None:
        env["DEEPGRAM_API_KEY"] = DEEPGRAM_KEY
        env["DEEPGRAM_AGENT_URL"] = f"ws://127.0.0.1:{deepgram_sim.port}"
        env["DEEPGRAM_API_URL"] = f"ws://127.0.0.1:{deepgram_sim.port}"
    return env


@dataclass
class Gateway:
    proc: subprocess.Popen
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    port: int = 0
    worker_pids: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def output(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def wait_for_output(self, pattern: str, timeout: float = 10.0) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.output)
            if match:
                return match
            if self.proc.poll() is not None:
                match = regex.search(self.output)
                if match:
                    return match
                raise AssertionError(f"gateway exited ({self.proc.returncode}) before {pattern!r}:\n{self.output}")
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {pattern!r}:\n{self.output}")

    def http(self, path: str, method: str = "GET", headers: dict | None = None, body: bytes | None = None):
        """(status, headers, body) of a plain HTTP request to the gateway."""
        req = urllib.request.Request(self.url(path, "http"), method=method, headers=headers or {}, data=body)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def ready(self) -> dict:
        status, _, body = self.http("/readyz")
        data = json.loads(body)
        data["_status"] = status
        return data

    def wait_ready(self, timeout: float = 15.0) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            try:
                last = self.ready()
            except (OSError, ValueError):
                last = {}
            services = last.get("services", {}).values()
            if last.get("_status") == 200 and all(s["ready"] for s in services if s["enabled"]):
                self.remember_workers(last)
                return last
            time.sleep(0.05)
        raise AssertionError(f"gateway not ready in {timeout}s: {last}\n{self.output}")

    def remember_workers(self, ready: dict) -> None:
        for service in ready.get("services", {}).values():
            for worker in service.get("workers", []):
                self.worker_pids.add(worker["pid"])

    def workers(self, provider: str) -> list[dict]:
        return self.ready()["services"][provider]["workers"]

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL; also kills any worker still alive by PID."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in self.worker_pids:
            kill_if_alive(pid)
        return self.proc.returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def kill_if_alive(pid: int) -> None:
    if pid_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _reader(stream, sink: list[str]) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
    stream.close()


def start_gateway(*args: str, env: dict[str, str] | None = None, wait_ready: bool = True, port: int = 0) -> Gateway:
    """Run `python -m voxgate serve --port 0 ARGS` and wait for its listening line."""
    cmd = [sys.executable, "-m", "voxgate", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd, env=env or base_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )
    gw = Gateway(proc)
    for stream, sink in ((proc.stdout, gw.stdout), (proc.stderr, gw.stderr)):
        threading.Thread(target=_reader, args=(stream, sink), daemon=True).start()
    try:
        match = gw.wait_for_output(LISTENING.pattern, START_TIMEOUT)
        gw.port = int(match.group(2))
        if wait_ready:
            gw.wait_ready()
    except BaseException:
        gw.stop()
        raise
    return gw


async def astart_gateway(*args: str, env: dict[str, str] | None = None, **kw: Any) -> Gateway:
    """Start the gateway without blocking the trio loop (simulators run in it)."""
    return await trio.to_thread.run_sync(lambda: start_gateway(*args, env=env, **kw))


async def astop(gw: Gateway) -> int:
    """Stop the gateway without blocking the trio loop."""
    return await trio.to_thread.run_sync(gw.stop)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run `python -m voxgate ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "voxgate", *args], env=env or base_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )
