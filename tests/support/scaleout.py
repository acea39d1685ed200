"""Real parts for the scale-out tests (issue 12): a `redis-server` on a free port in a temp dir,
HAProxy with deploy/haproxy/haproxy.cfg (the file compose uses) in front of three voxgate
instances. Every process is started here and stopped by its PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.support.parts import missing_part

HAPROXY_CFG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy" / "haproxy.cfg"
PACKAGES = {"redis-server": "redis-server", "haproxy": "haproxy"}


def require_binaries() -> None:
    """Install redis-server and haproxy (Debian) when missing and we may; else skip."""
    missing = [pkg for binary, pkg in PACKAGES.items() if not _which(binary)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, timeout=300)
    still = [binary for binary in PACKAGES if not _which(binary)]
    if still:
        missing_part(f"needs {', '.join(still)} (apt-get install -y redis-server haproxy)")



def _which(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (p for p in (f"/usr/bin/{binary}", f"/usr/sbin/{binary}") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port} after {timeout}s")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisServer:
    """redis-server without persistence on a fixed free port; can stop and come back."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [_which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None


class HAProxy:
    """HAProxy with the deploy config; its backends are three gateway ports."""

    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        env = {**os.environ, "HAPROXY_BIND": f"127.0.0.1:{self.port}"}
        for name, port in zip("ABC", backends, strict=True):
            env[f"VOXGATE_{name}"] = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [_which("haproxy"), "-db", "-f", str(HAPROXY_CFG)], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        try:
            wait_port(self.port, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _stop(self.proc)
