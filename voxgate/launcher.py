"""Run `python -m voxgate serve` as a child process and stop it cleanly, by PID.

`voxgate demo` and the benchmarks need the real gateway (supervisor plus worker processes),
not an in-process imitation, so they start it the way an operator would and wait until it
says it is listening and `/readyz` answers 200. Stopping sends SIGTERM (the gateway drains),
then SIGKILL after a bound, and finally kills any worker PID `/readyz` reported that is still
alive, so nothing is left behind even when the supervisor misbehaves.

The API is blocking (threads read the child's output); from trio, call it through
`trio.to_thread.run_sync`, or use `start_gateway_async` / `GatewayProcess.stop_async`.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "GatewayProcess",
    "LaunchError",
    "clean_env",
    "start_gateway",
    "start_gateway_async",
]

LISTENING = re.compile(r"listening on (\S+):(\d+) \(pid (\d+)\)")
POLL_INTERVAL = 0.05

# Variables that steer the gateway; a launched gateway sees only the ones given explicitly.
_STEERING_PREFIXES = ("VOXGATE_", "OPENAI_", "DEEPGRAM_", "PROXY_", "VITE_")


class LaunchError(RuntimeError):
    """The gateway did not come up (exited, or not listening/ready in time); carries its output."""


def clean_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The current environment minus every gateway setting and key, plus `extra`.

    `.env` loading is switched off (SKIP_DOTENV=1) so a developer's real keys in a `.env`
    file never leak into a demo or a benchmark; a value of None in `extra` removes a variable.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_STEERING_PREFIXES)}
    env.pop("LOG_LEVEL", None)
    env["SKIP_DOTENV"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["VOXGATE_LOG_FORMAT"] = "text"  # the demo shows gateway lines to a person
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class GatewayProcess:
    """A running gateway child: its process, bound address and everything it printed."""

    proc: subprocess.Popen
    host: str = "127.0.0.1"
    port: int = 0
    lines: list[str] = field(default_factory=list)
    worker_pids: set[int] = field(default_factory=set)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        """stdout and stderr as printed so far (interleaved by arrival)."""
        with self._changed:
            return "".join(self.lines)

    @property
    def connect_host(self) -> str:
        """Where a client on this machine reaches the gateway (wildcard binds -> loopback)."""
        if self.host in ("0.0.0.0", "", "*"):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    def url(self, path: str, scheme: str = "ws") -> str:
        return f"{scheme}://{self.connect_host}:{self.port}{path}"

    def running(self) -> bool:
        return self.proc.poll() is None

    # -- output -------------------------------------------------------------------------

    def _collect(self, stream) -> None:
        for line in iter(stream.readline, ""):
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._changed.notify_all()

    def wait_for_output(self, pattern: str | re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of `pattern` in the output; LaunchError on exit or timeout."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                match = regex.search("".join(self.lines))
                if match:
                    return match
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None:
                    # Output may still be in flight after exit; one short last wait.
                    self._changed.wait(min(max(remaining, 0), 0.2))
                    match = regex.search("".join(self.lines))
                    if match:
                        return match
                    raise LaunchError(
                        f"gateway exited with code {self.proc.returncode} before "
                        f"{regex.pattern!r}:\n{''.join(self.lines)}"
                    )
                if remaining <= 0:
                    raise LaunchError(f"timed out waiting for {regex.pattern!r}:\n{''.join(self.lines)}")
                self._changed.wait(min(remaining, POLL_INTERVAL * 4))

    # -- HTTP ---------------------------------------------------------------------------

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of a plain GET to the gateway."""
        try:
            with urllib.request.urlopen(self.url(path, "http"), timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_ready(self, timeout: float) -> dict:
        """Poll /readyz until 200 (the gateway has no push signal for readiness)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LaunchError(f"gateway exited with code {self.proc.returncode}:\n{self.output}")
            try:
                status, body = self.http_get("/readyz", timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                data = json.loads(body)
            except (OSError, ValueError) as exc:
                last = str(exc)
            else:
                self._remember_workers(data)
                if status == 200:
                    return data
                last = f"HTTP {status}: {body[:200]!r}"
            time.sleep(POLL_INTERVAL)
        raise LaunchError(f"gateway not ready within {timeout:g}s ({last}):\n{self.output}")

    def _remember_workers(self, ready: dict) -> None:
        services = ready.get("services") if isinstance(ready, dict) else None
        for service in (services or {}).values():
            for worker in (service or {}).get("workers") or []:
                pid = worker.get("pid") if isinstance(worker, dict) else None
                if isinstance(pid, int) and pid > 0:
                    self.worker_pids.add(pid)

    # -- stopping -----------------------------------------------------------------------

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; then kill leftover workers by PID.

        Returns the gateway's exit status (negative = killed by that signal).
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                try:
                    self.proc.wait(5.0)
                except subprocess.TimeoutExpired:
                    pass
        for pid in sorted(self.worker_pids):
            if _pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.proc.returncode

    async def stop_async(self, timeout: float = 15.0) -> int | None:
        """`stop` from trio, without blocking the event loop (runs even when cancelled)."""
        import trio

        with trio.CancelScope(shield=True):
            return await trio.to_thread.run_sync(self.stop, timeout)


def start_gateway(
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    port: int = 0,
    host: str = "127.0.0.1",
    timeout: float = 20.0,
    wait_ready: bool = True,
    python: str | None = None,
) -> GatewayProcess:
    """Start `python -m voxgate serve --host HOST --port PORT ARGS` with exactly `env`.

    Returns once the listening line is printed and (unless `wait_ready` is false) /readyz
    answers 200. On any failure the child is stopped and LaunchError carries its output.
    """
    cmd = [python or sys.executable, "-m", "voxgate", "serve", "--host", host, "--port", str(port), *args]
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )
    gw = GatewayProcess(proc, host=host)
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=gw._collect, args=(stream,), daemon=True, name="voxgate-output").start()
    try:
        deadline = time.monotonic() + timeout
        match = gw.wait_for_output(LISTENING, timeout)
        gw.host, gw.port = match.group(1), int(match.group(2))
        if wait_ready:
            gw.wait_ready(max(0.5, deadline - time.monotonic()))
    except BaseException:
        gw.stop(timeout=5.0)
        raise
    return gw


async def start_gateway_async(env: Mapping[str, str], **kwargs) -> GatewayProcess:
    """`start_gateway` from trio; a cancelled start still stops the child it began."""
    import trio

    gw = await trio.to_thread.run_sync(lambda: start_gateway(env, **kwargs))
    try:
        await trio.lowlevel.checkpoint_if_cancelled()
    except BaseException:
        await gw.stop_async(5.0)
        raise
    return gw
