"""Scenarios, and one benchmark run: start the upstream, voxgate and the peers, run every
selected scenario against every target, stop everything by PID.

Targets of the echo scenarios: `direct` (the generator to the upstream), `voxgate` (the
Deepgram passthrough path, frame splice), `nginx`, `node`. Targets of the translator
scenario: `direct` (OpenAI Realtime protocol to the OpenAI-like upstream), `voxgate`
(`/openai`, Deepgram Voice Agent protocol translated) and `voxgate_relay` (the raw
`/openai/v1/realtime` splice relay, same protocol as direct).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from voxgate.bench import gateway, peers
from voxgate.bench.evloop import Loop
from voxgate.bench.phases import Monitor, Phases, Target
from voxgate.bench.procs import Managed, kernel_threads, pid_alive, spawn, tail

ROOT = Path(__file__).resolve().parents[2]
ECHO_PATH = "/v1/agent/converse"


@dataclass(frozen=True)
class Scenario:
    key: str
    kind: str  # "stream" | "idle" | "setup"
    title: str
    mode: str = ""  # stream: "window" (pingpong, throughput) | "paced"
    sessions: int = 1
    duration: float = 0.0
    window: int = 1
    translator: bool = False
    open_rate: float = 250.0
    tls: bool = False  # the wss scenario: the same sessions through a TLS-terminating gateway

    def params(self) -> dict:
        out: dict = {"sessions": self.sessions}
        if self.kind == "stream":
            out.update(mode=self.mode, duration_s=self.duration)
            if self.mode == "window":
                out["window"] = self.window
            else:
                out["period_ms"] = 20
            out["frame"] = ("640-byte 16 kHz PCM binary (client), append/delta JSON upstream"
                            if self.translator else "960-byte binary")
        return out


ORDER = ["idle", "setup", "pingpong", "realtime100", "realtime200", "throughput", "translator", "translator200",
         "wss"]

FULL = {
    "pingpong": Scenario("pingpong", "stream", "ping-pong latency", "window", 1, 5.0, 1),
    "realtime100": Scenario("realtime100", "stream", "realtime voice", "paced", 100, 10.0),
    "realtime200": Scenario("realtime200", "stream", "realtime voice", "paced", 200, 10.0),
    "throughput": Scenario("throughput", "stream", "throughput", "window", 20, 5.0, 16),
    "translator": Scenario("translator", "stream", "translator voice", "paced", 100, 10.0, translator=True),
    "translator200": Scenario("translator200", "stream", "translator voice", "paced", 200, 10.0, translator=True),
    "idle": Scenario("idle", "idle", "idle capacity", sessions=2000, open_rate=500.0),
    "setup": Scenario("setup", "setup", "connection setup", sessions=200),
    "wss": Scenario("wss", "stream", "realtime voice, ws vs wss", "paced", 100, 10.0, tls=True),
}

QUICK = {
    "pingpong": replace(FULL["pingpong"], duration=0.6),
    "realtime100": replace(FULL["realtime100"], sessions=10, duration=0.6),
    "realtime200": replace(FULL["realtime200"], sessions=20, duration=0.6),
    "throughput": replace(FULL["throughput"], sessions=4, duration=0.6),
    "translator": replace(FULL["translator"], sessions=10, duration=0.6),
    "translator200": replace(FULL["translator200"], sessions=20, duration=0.6),
    "idle": replace(FULL["idle"], sessions=20),
    "setup": replace(FULL["setup"], sessions=20),
    "wss": replace(FULL["wss"], sessions=10, duration=0.6),
}

ALIASES = {"realtime": ["realtime100", "realtime200"], "translators": ["translator", "translator200"], "all": ORDER}


def plan(*, quick: bool, names: list[str], sessions: int | None, duration: float | None) -> list[Scenario]:
    """The scenarios of a run, in run order (idle first: it wants fresh processes)."""
    table = QUICK if quick else FULL
    wanted: set[str] = set()
    for name in names or ["all"]:
        for key in ALIASES.get(name, [name]):
            if key not in table:
                raise ValueError(f"unknown scenario {name!r} (choose from {', '.join([*ORDER, 'realtime', 'all'])})")
            wanted.add(key)
    out = []
    for key in ORDER:
        if key not in wanted:
            continue
        sc = table[key]
        if sessions is not None and key != "pingpong":
            sc = replace(sc, sessions=sessions)
        if duration is not None and sc.kind == "stream":
            sc = replace(sc, duration=duration)
        out.append(sc)
    return out


@dataclass
class Options:
    quick: bool = False
    scenarios: tuple[str, ...] = ()
    sessions: int | None = None
    duration: float | None = None
    runs: int = 1
    peers: bool = True
    workers_per_provider: int = 1
    profile_dir: Path | None = None


class Profiler:
    """py-spy on the worker that serves a phase, for the measured window only."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.binary = shutil.which("py-spy")
        out_dir.mkdir(parents=True, exist_ok=True)

    def hook(self, pids: list[int], name: str) -> Callable[[float], Callable[[], None] | None] | None:
        if self.binary is None or not pids:
            return None

        def start(duration: float) -> Callable[[], None]:
            running = []
            for pid in pids:
                out = self.out_dir / f"{name}.{pid}.txt"
                running.append(subprocess.Popen(
                    [self.binary, "record", "--pid", str(pid), "--rate", "250", "--duration",
                     str(max(1, int(duration))), "--format", "raw", "--output", str(out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))

            def finish() -> None:
                for proc in running:
                    try:
                        proc.wait(duration + 15)
                    except subprocess.TimeoutExpired:
                        proc.send_signal(signal.SIGINT)
                        try:
                            proc.wait(5)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait(5)

            return finish

        return start


class Run:
    """One run: processes up, scenarios, processes down."""

    def __init__(self, opts: Options, log: Callable[[str], None]) -> None:
        self.opts = opts
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="voxgate-bench-"))
        self.upstream: Managed | None = None
        self.gw: gateway.GatewayProc | None = None
        self.gw_tls: gateway.GatewayProc | None = None
        self.peers: dict[str, peers.Peer] = {}
        self.skipped: dict[str, str] = {}
        self.monitor = Monitor()
        self.profiler = Profiler(opts.profile_dir) if opts.profile_dir else None

    # -- processes -----------------------------------------------------------------------

    def start(self, tls: bool = False) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.upstream = spawn("upstream", [sys.executable, "-m", "voxgate.bench.upstream", "--port", "0"], self.tmp,
                              env=env)
        match = self.upstream.wait_for(r"listening on 127\.0\.0\.1:(\d+)", 20)
        self.upstream_port = int(match.group(1))
        if self.opts.peers:
            for name, starter in (("nginx", lambda: peers.start_nginx(self.tmp, self.upstream_port,
                                                                      self.opts.workers_per_provider)),
                                  ("node", lambda: peers.start_node(self.tmp, self.upstream_port))):
                try:
                    self.peers[name] = starter()
                except peers.PeerUnavailable as exc:
                    self.skipped[name] = str(exc)
                    self.log(f"peer {name} skipped: {exc}")
        else:
            self.skipped = {"nginx": "--no-peers", "node": "--no-peers"}
        self.gw = gateway.start(self.tmp, self.upstream_port, self.opts.workers_per_provider)
        labels = {"supervisor": self.gw.pid}
        for provider, pids in sorted(self.gw.workers.items()):
            for i, pid in enumerate(pids):
                labels[f"worker.{provider}.{i}"] = pid
        if tls:
            self.gw_tls = gateway.start(self.tmp, self.upstream_port, self.opts.workers_per_provider, tls=True)
            labels["tls.supervisor"] = self.gw_tls.pid
            for provider, pids in sorted(self.gw_tls.workers.items()):
                for i, pid in enumerate(pids):
                    labels[f"tls.worker.{provider}.{i}"] = pid
        labels["upstream"] = self.upstream.pid
        labels["generator"] = os.getpid()
        for peer in self.peers.values():
            labels.update(peer.pids())
        for i, pid in enumerate(kernel_threads("ksoftirqd/")):
            labels[f"kernel.ksoftirqd.{i}"] = pid
        self.monitor = Monitor(labels)

    def stop(self) -> None:
        for peer in self.peers.values():
            peer.stop()
        if self.gw is not None:
            self.gw.stop()
        if self.gw_tls is not None:
            self.gw_tls.stop()
        if self.upstream is not None:
            self.upstream.stop()
        if os.environ.get("VOXGATE_BENCH_KEEP_TMP"):
            self.log(f"logs kept in {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def versions(self) -> dict[str, str]:
        return {name: peer.version for name, peer in self.peers.items()}

    # -- scenarios -----------------------------------------------------------------------

    def targets(self, sc: Scenario) -> list[Target]:
        assert self.gw is not None
        if sc.tls:
            assert self.gw_tls is not None
            return [Target("direct", self.upstream_port, ECHO_PATH), Target("voxgate", self.gw.port, "/deepgram-proxy"),
                    Target("voxgate_wss", self.gw_tls.port, "/deepgram-proxy", tls=True)]
        if sc.translator:
            return [
                Target("direct", self.upstream_port, "/v1/realtime?model=gpt-realtime", "realtime"),
                Target("voxgate", self.gw.port, "/openai", "agent"),
                Target("voxgate_relay", self.gw.port, "/openai/v1/realtime?model=gpt-realtime", "realtime"),
            ]
        out = [Target("direct", self.upstream_port, ECHO_PATH), Target("voxgate", self.gw.port, "/deepgram-proxy")]
        for name, peer in self.peers.items():
            out.append(Target(name, peer.port, ECHO_PATH))
        return out

    def run_scenario(self, sc: Scenario, loop: Loop) -> dict:
        phases = Phases(loop, self.monitor)
        results: dict[str, dict] = {}
        budget = self.scenario_budget(sc)
        deadline = time.monotonic() + budget
        for target in self.targets(sc):
            if time.monotonic() > deadline:
                results[target.name] = {"errors": 1, "error_samples": [f"scenario deadline ({budget:.0f}s) passed"]}
                continue
            self.log(f"  {sc.key} -> {target.name}")
            if sc.kind == "idle":
                res = phases.idle(target, sessions=sc.sessions, open_rate=sc.open_rate,
                                  settle=0.3 if self.opts.quick else 1.0)
            elif sc.kind == "setup":
                res = phases.setup(target, connections=sc.sessions, on_window=self.profile_hook(sc, target))
            else:
                res = phases.stream(target, mode=sc.mode, sessions=sc.sessions, duration=sc.duration,
                                    window=sc.window, open_rate=sc.open_rate,
                                    frame_bytes=960, on_window=self.profile_hook(sc, target))
            self.check_alive(res)
            results[target.name] = res
        return results

    def scenario_budget(self, sc: Scenario) -> float:
        """Hard wall-clock bound for one scenario (all its targets)."""
        per_target = 10.0 + sc.sessions / sc.open_rate + 2 * (phases_drain_close())
        if sc.kind == "stream":
            per_target += sc.duration
        elif sc.kind == "setup":
            per_target += sc.sessions * 0.05
        else:
            per_target += sc.sessions / 1000
        return per_target * 5

    def profile_hook(self, sc: Scenario, target: Target):
        if self.profiler is None or not target.name.startswith("voxgate") or self.gw is None:
            return None
        provider = "openai" if sc.translator else "deepgram"
        return self.profiler.hook(self.gw.workers.get(provider, []), f"{sc.key}.{target.name}")

    def check_alive(self, res: dict) -> None:
        dead = [label for label, pid in self.monitor.pids.items()
                if label != "generator" and not label.startswith("kernel.") and not pid_alive(pid)]
        if dead:
            res["errors"] = res.get("errors", 0) + len(dead)
            res.setdefault("error_samples", []).append(f"process died: {', '.join(dead)}")
            if self.gw is not None and any(label == "supervisor" or label.startswith("worker.") for label in dead):
                res["error_samples"].append("gateway log: " + tail(self.gw.managed.output()))
            for label in dead:  # report each death once
                self.monitor.pids.pop(label, None)


def phases_drain_close() -> float:
    from voxgate.bench.phases import CLOSE_S, DRAIN_S

    return DRAIN_S + CLOSE_S


def run_all(opts: Options, log: Callable[[str], None]) -> dict:
    """Every run of every selected scenario: {"runs": [...], "peers": ..., "scenarios": [...]}."""
    from voxgate.bench.procs import raise_fd_limit

    scenarios = plan(quick=opts.quick, names=list(opts.scenarios), sessions=opts.sessions, duration=opts.duration)
    nofile = raise_fd_limit()
    runs = []
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    for index in range(opts.runs):
        log(f"run {index + 1}/{opts.runs}")
        run = Run(opts, log)
        loop = Loop()
        try:
            run.start(tls=any(sc.tls for sc in scenarios))
            skipped.update(run.skipped)
            versions.update(run.versions())
            results = {}
            for sc in scenarios:
                results[sc.key] = run.run_scenario(sc, loop)
            runs.append(results)
        finally:
            loop.close()
            run.stop()
    return {"scenarios": scenarios, "runs": runs, "skipped": skipped, "versions": versions, "nofile": nofile}
