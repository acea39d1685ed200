"""Process accounting from /proc, and starting/stopping the processes a run needs.

CPU is utime+stime from /proc/<pid>/stat (clock ticks, usually 10 ms), memory is VmRSS and
VmHWM from /proc/<pid>/status. Every process is stopped by its own PID, never by name.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, seconds; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def system_busy_seconds() -> tuple[float, float]:
    """(busy, irq) CPU seconds of all cores since boot (/proc/stat): busy = not idle; irq =
    hard and soft interrupt time, which no process is charged for (loopback TCP delivery
    runs there), so it is reported on its own rather than as another tenant's load."""
    with open("/proc/stat", "rb") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK, (fields[5] + fields[6]) / CLK_TCK


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in KiB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            text = fh.read()
    except OSError:
        return None
    rss = re.search(rb"VmRSS:\s+(\d+)", text)
    hwm = re.search(rb"VmHWM:\s+(\d+)", text)
    if rss is None or hwm is None:
        return None
    return int(rss.group(1)), int(hwm.group(1))


def children(pid: int) -> list[int]:
    """Direct children of `pid` (scans /proc; fine for the handful of processes we own)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def kernel_threads(prefix: str) -> list[int]:
    """PIDs of kernel threads whose name starts with `prefix` (e.g. ksoftirqd: loopback
    TCP work lands there under load, and should not read as another tenant's CPU)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm", "rb") as fh:
                    if fh.read().decode(errors="replace").startswith(prefix):
                        out.append(int(entry))
            except OSError:
                continue
    return sorted(out)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; children started later inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def free_port() -> int:
    """A port that was free a moment ago (for servers that cannot bind port 0 and tell)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


@dataclass
class Managed:
    """A process we started; its output goes to a file (a pipe could fill and stall it)."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    extra_pids: list[int] = field(default_factory=list)  # e.g. workers, to kill by PID

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {tail(self.output())}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not print {pattern!r} in {timeout}s: {tail(self.output())}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        for pid in self.extra_pids:
            if pid_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def spawn(name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None,
          cwd: str | None = None) -> Managed:
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "wb")  # noqa: SIM115 - handed to the child; closed below
    try:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd)
    finally:
        fh.close()
    return Managed(name, proc, log_path)


def tail(text: str, lines: int = 8) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])
