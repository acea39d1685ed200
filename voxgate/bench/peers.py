"""Peers measured in the same run: nginx as a WebSocket reverse proxy and a Node `ws` relay.

Each is optional: when the binary (or npm, or the `ws` package) is missing, the peer is
skipped with a reason and the run goes on. The `ws` package is installed with npm into
voxgate/bench/.node (git-ignored) only when the Node peer is requested.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from voxgate.bench.procs import Managed, children, free_port, spawn, wait_port

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / ".node"
NODE_RELAY = HERE / "node_relay.js"
NPM_TIMEOUT = 120.0
START_TIMEOUT = 15.0

NGINX_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{
    worker_connections 16384;
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "Upgrade";
            proxy_set_header Host $host;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            tcp_nodelay on;
        }}
    }}
}}
"""


@dataclass
class Peer:
    name: str
    managed: Managed
    port: int
    version: str

    def pids(self) -> dict[str, int]:
        """Label -> pid of every process of the peer (nginx: master and workers)."""
        if self.name == "nginx":
            labels = {"nginx.master": self.managed.pid}
            for i, pid in enumerate(sorted(children(self.managed.pid))):
                labels[f"nginx.worker.{i}"] = pid
            return labels
        return {self.name: self.managed.pid}

    def stop(self) -> None:
        # nginx: SIGQUIT is its graceful stop; workers die with the master.
        self.managed.extra_pids = list(self.pids().values())
        self.managed.stop(signal.SIGQUIT if self.name == "nginx" else signal.SIGTERM)


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx") if os.access(p, os.X_OK)),
        None,
    )


def _version(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return (done.stdout + done.stderr).strip().splitlines()[0] if (done.stdout + done.stderr).strip() else "?"


def start_nginx(tmp: Path, upstream_port: int, workers: int) -> Peer:
    binary = nginx_binary()
    if binary is None:
        raise PeerUnavailable("nginx not found (apt-get install nginx-light)")
    root = tmp / "nginx"
    root.mkdir(exist_ok=True)
    for _ in range(3):
        port = free_port()
        conf = root / "nginx.conf"
        conf.write_text(NGINX_CONF.format(workers=workers, tmp=root, port=port, upstream_port=upstream_port))
        managed = spawn("nginx", [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "nginx-error.log")],
                        tmp)
        if wait_port(port, START_TIMEOUT) and managed.proc.poll() is None:
            deadline = time.monotonic() + 5
            while len(children(managed.pid)) < workers and time.monotonic() < deadline:
                time.sleep(0.02)
            return Peer("nginx", managed, port, _version([binary, "-v"]))
        managed.stop(signal.SIGQUIT)
    raise PeerUnavailable("nginx did not start: " + (root / "nginx-error.log").read_text(errors="replace")[-300:])


def ensure_ws() -> Path:
    """node_modules holding `ws`, installed once into voxgate/bench/.node."""
    modules = NODE_DIR / "node_modules"
    if (modules / "ws" / "package.json").exists():
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailable("npm not found (needed once to install the ws package)")
    NODE_DIR.mkdir(exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--no-save",
             "--loglevel=error", "ws@8"],
            capture_output=True, text=True, timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"npm install ws took longer than {NPM_TIMEOUT:.0f}s") from None
    if done.returncode != 0 or not (modules / "ws" / "package.json").exists():
        raise PeerUnavailable("npm install ws failed: " + (done.stderr or done.stdout).strip()[-300:])
    return modules


def start_node(tmp: Path, upstream_port: int) -> Peer:
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailable("node not found")
    modules = ensure_ws()
    env = dict(os.environ, UPSTREAM=f"ws://127.0.0.1:{upstream_port}", PORT="0", NODE_PATH=str(modules))
    managed = spawn("node", [node, str(NODE_RELAY)], tmp, env=env)
    try:
        match = managed.wait_for(r"listening on 127\.0\.0\.1:(\d+)", START_TIMEOUT)
    except RuntimeError as exc:
        managed.stop()
        raise PeerUnavailable(str(exc)) from None
    try:
        ws_version = json.loads((modules / "ws" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        ws_version = "?"
    return Peer("node", managed, int(match.group(1)), f"node {_version([node, '--version'])}, ws {ws_version}")


class PeerUnavailable(Exception):
    """The peer cannot run here; the reason is reported and the peer skipped."""
