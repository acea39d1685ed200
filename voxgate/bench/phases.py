"""One measured phase = one scenario against one target (direct, voxgate, a peer).

Every phase has the same shape, and every step has a deadline: staggered connects until
all sessions are ready (first echo back, or SettingsApplied/session.updated), the measured
window (CPU read from /proc before and after it, RSS sampled during it), a bounded drain of
what is still in flight, and a bounded close. Anything not done by its deadline is counted
as an error, never waited for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter_ns

import numpy as np

from voxgate.bench import procs
from voxgate.bench.clients import (
    AgentClient,
    EchoClient,
    PhaseState,
    RealtimeClient,
    SetupProbe,
    still_open,
)
from voxgate.bench.evloop import OPEN, Loop, WsClient
from voxgate.simulate.audio import tone_pcm16

SEC = 1_000_000_000
MS = 1_000_000
DRAIN_S = 2.0
CLOSE_S = 3.0
SAMPLE_NS = 100 * MS


@dataclass(frozen=True)
class Target:
    """Where a phase sends its sessions and which protocol they speak."""

    name: str
    port: int
    path: str
    protocol: str = "echo"  # "echo" | "agent" (Deepgram Voice Agent) | "realtime" (OpenAI)
    host: str = "127.0.0.1"
    tls: bool = False  # wss


@dataclass
class Monitor:
    """The processes of a run, by label (`supervisor`, `worker.deepgram.0`, `nginx.worker.0`...)."""

    pids: dict[str, int] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        """CPU seconds per monitored process, plus `_system`: busy seconds of the machine."""
        busy, irq = procs.system_busy_seconds()
        out = {"_system": busy, "_irq": irq}
        for label, pid in self.pids.items():
            value = procs.cpu_seconds(pid)
            if value is not None:
                out[label] = value
        return out

    def memory(self) -> dict[str, tuple[int, int]]:
        out = {}
        for label, pid in self.pids.items():
            value = procs.memory_kib(pid)
            if value is not None:
                out[label] = value
        return out


class RssSampler:
    """Samples VmRSS of every monitored process from inside the loop (no thread)."""

    def __init__(self, loop: Loop, monitor: Monitor) -> None:
        self.loop = loop
        self.monitor = monitor
        self.peaks: dict[str, int] = {}
        self.active = False

    def start(self) -> None:
        self.active = True
        self._sample()

    def stop(self) -> None:
        if self.active:
            self._sample()
        self.active = False

    def _sample(self) -> None:
        if not self.active:
            return
        for label, (rss, _) in self.monitor.memory().items():
            if rss > self.peaks.get(label, 0):
                self.peaks[label] = rss
        self.loop.call_at(perf_counter_ns() + SAMPLE_NS, self._sample)


def percentiles_ms(values_ns: list[int]) -> dict[str, float | None]:
    if not values_ns:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    arr = np.asarray(values_ns, dtype=np.float64) / MS
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "p99_ms": round(float(p99), 4),
            "max_ms": round(float(arr.max()), 4), "mean_ms": round(float(arr.mean()), 4)}


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Per-process CPU seconds over an interval, plus `kernel.irq` (interrupt time, mostly
    loopback TCP delivery) and `other`: what the rest of the machine used meanwhile (other
    tenants); a noisy measurement shows up there."""
    out = {k: round(after[k] - before[k], 3) for k in after if k in before and not k.startswith("_")}
    if "_system" in after and "_system" in before:
        irq = round(after["_irq"] - before["_irq"], 3)
        out["other"] = round(max(0.0, after["_system"] - before["_system"] - irq - sum(out.values())), 3)
        out["kernel.irq"] = irq
    return out


# Hooks let the runner attach a profiler to the measured window of chosen phases.
WindowHook = Callable[[float], Callable[[], None] | None]


class Phases:
    """Runs phases on one loop, reporting into plain dicts."""

    def __init__(self, loop: Loop, monitor: Monitor) -> None:
        self.loop = loop
        self.monitor = monitor
        self.filler = (tone_pcm16(40, rate=24000) * 4)[: 65536]

    # -- helpers -------------------------------------------------------------------------

    def _client(self, target: Target, ph: PhaseState):
        client: WsClient
        if target.protocol == "agent":
            client = AgentClient(self.loop, target.host, target.port, target.path, ph)
        elif target.protocol == "realtime":
            client = RealtimeClient(self.loop, target.host, target.port, target.path, ph)
        else:
            client = EchoClient(self.loop, target.host, target.port, target.path, ph,
                                self.filler[: ph.frame_bytes - 16])
        if target.tls:
            client.enable_tls()
        return client

    def _ramp(self, clients: list, ph: PhaseState, open_rate: float, timeout: float) -> None:
        """Staggered connects; returns when every session is ready or has failed."""
        loop = self.loop
        start = perf_counter_ns() + MS
        step = SEC / open_rate
        for i, client in enumerate(clients):
            loop.call_at(start + int(i * step), client.connect)
        n = len(clients)
        budget = len(clients) / open_rate + timeout
        if not loop.run(perf_counter_ns() + int(budget * SEC), lambda: ph.ready >= n):
            unsettled = n - ph.ready
            ph.error(f"{unsettled} sessions not ready after {budget:.1f}s")
            ph.errors += unsettled - 1

    def _close(self, clients: list, ph: PhaseState) -> None:
        ph.closing = True
        for client in clients:
            client.close()
        if not self.loop.run(perf_counter_ns() + int(CLOSE_S * SEC), lambda: still_open(clients) == 0):
            stuck = still_open(clients)
            ph.error(f"{stuck} sessions did not finish the close handshake in {CLOSE_S}s")
            for client in clients:
                client.abort()

    def _settle(self, seconds: float) -> None:
        self.loop.run(perf_counter_ns() + int(seconds * SEC))

    # -- streaming: pingpong, paced (realtime, translator), window (throughput) -----------

    def stream(self, target: Target, *, mode: str, sessions: int, duration: float, window: int = 1,
               period_ms: float = 20.0, frame_bytes: int = 960, open_rate: float = 250.0,
               ramp_timeout: float = 15.0, on_window: WindowHook | None = None) -> dict:
        loop = self.loop
        ph = PhaseState(frame_bytes)
        clients = [self._client(target, ph) for _ in range(sessions)]
        self._ramp(clients, ph, open_rate, ramp_timeout)
        live = [c for c in clients if c.is_ready and c.state == OPEN]

        sampler = RssSampler(loop, self.monitor)
        t0 = perf_counter_ns() + 20 * MS
        t_end = t0 + int(duration * SEC)
        ph.t_start, ph.t_end = t0, t_end
        finish_hook = on_window(duration) if on_window else None
        if mode == "paced":
            period = int(period_ms * MS)
            n = max(1, len(live))

            def pace(client, due: int) -> None:
                if due >= t_end or client.state != OPEN:
                    return
                client.tick(due)
                loop.call_at(due + period, pace, client, due + period)

            for i, client in enumerate(live):
                loop.call_at(t0 + i * period // n, pace, client, t0 + i * period // n)
        else:
            ph.reply = True

            def begin() -> None:
                ph.streaming = True
                for client in live:
                    client.send_many(window)

            loop.call_at(t0, begin)
        sampler.start()
        loop.run(t0)
        cpu0 = self.monitor.cpu()
        loop.run(t_end)
        cpu1 = self.monitor.cpu()
        sampler.stop()
        hwm = {label: mem[1] for label, mem in self.monitor.memory().items()}
        ph.streaming = False
        if finish_hook:
            finish_hook()

        loop.run(perf_counter_ns() + int(DRAIN_S * SEC),
                 lambda: all(c.outstanding == 0 or c.state != OPEN for c in live))
        missing = sum(c.outstanding for c in live if c.state == OPEN)
        if missing:
            ph.error(f"{missing} messages got no reply within {DRAIN_S}s after the window")
            ph.errors += missing - 1
        self._close(clients, ph)

        result = {
            "sessions": sessions,
            "ready": len(live),
            "window_s": duration,
            "sent": ph.sent,
            "received": ph.received,
            "msgs_per_s": round(ph.in_window / duration, 1),
            **percentiles_ms(ph.rtts),
            "errors": ph.errors,
            "error_samples": ph.error_samples,
            "cpu_s": _delta(cpu1, cpu0),
            "rss_peak_kib": sampler.peaks,
            "hwm_kib": hwm,
            "session_ready_p50_ms": percentiles_ms(ph.setup_ns)["p50_ms"],
        }
        if ph.lags:
            result["gen_lag_p99_ms"] = percentiles_ms(ph.lags)["p99_ms"]
        return result

    # -- idle capacity --------------------------------------------------------------------

    def idle(self, target: Target, *, sessions: int, open_rate: float = 500.0, settle: float = 1.0,
             ramp_timeout: float = 20.0) -> dict:
        loop = self.loop
        warm = PhaseState()
        warmers = [self._client(target, warm) for _ in range(4)]
        self._ramp(warmers, warm, 100.0, ramp_timeout)
        self._close(warmers, warm)
        self._settle(settle)
        mem0 = self.monitor.memory()
        cpu0 = self.monitor.cpu()

        ph = PhaseState()
        clients = [self._client(target, ph) for _ in range(sessions)]
        t_ramp = perf_counter_ns()
        self._ramp(clients, ph, open_rate, ramp_timeout)
        ramp_s = (perf_counter_ns() - t_ramp) / SEC
        self._settle(settle)
        mem1 = self.monitor.memory()
        live = [c for c in clients if c.is_ready and c.state == OPEN]

        # liveness: every held session echoes one frame, spread over ~0.5 s
        ph.t_start = perf_counter_ns()
        ph.t_end = 1 << 62
        start = perf_counter_ns() + MS
        spread = int(0.5 * SEC / max(1, len(live)))
        for i, client in enumerate(live):
            loop.call_at(start + i * spread, client.send_one)
        budget = 0.5 + DRAIN_S + len(live) / 2000
        loop.run(perf_counter_ns() + int(budget * SEC),
                 lambda: ph.received + sum(1 for c in live if c.state != OPEN) >= len(live))
        elapsed = (perf_counter_ns() - ph.t_start) / SEC
        missing = sum(c.outstanding for c in live if c.state == OPEN)
        if missing:
            ph.error(f"{missing} held sessions did not echo")
            ph.errors += missing - 1
        cpu1 = self.monitor.cpu()
        self._close(clients, ph)
        errors = ph.errors + warm.errors

        held = max(1, len(live))
        rss0 = {k: v[0] for k, v in mem0.items()}
        rss1 = {k: v[0] for k, v in mem1.items()}
        return {
            "sessions": sessions,
            "ready": len(live),
            "ramp_s": round(ramp_s, 2),
            "sent": ph.sent,
            "received": ph.received,
            "msgs_per_s": round(ph.received / elapsed, 1) if elapsed else 0.0,
            **percentiles_ms(ph.rtts),
            "errors": errors,
            "error_samples": warm.error_samples + ph.error_samples,
            "cpu_s": _delta(cpu1, cpu0),
            "rss_base_kib": rss0,
            "rss_loaded_kib": rss1,
            "rss_peak_kib": {k: v[1] for k, v in mem1.items()},
            "kib_per_session": {k: round((rss1[k] - rss0[k]) / held, 2) for k in rss1 if k in rss0},
            "session_ready_p50_ms": percentiles_ms(ph.setup_ns)["p50_ms"],
        }

    # -- connection setup ------------------------------------------------------------------

    def setup(self, target: Target, *, connections: int, warmup: int = 3, timeout: float = 5.0,
              budget: float | None = None, on_window: WindowHook | None = None) -> dict:
        """Sequential connections (one at a time, so each is timed alone)."""
        loop = self.loop
        ph = PhaseState()
        give_up = perf_counter_ns() + int((budget or 10.0 + connections * 0.1) * SEC)
        t101: list[int] = []
        tfirst: list[int] = []
        cpu0 = self.monitor.cpu()
        started = perf_counter_ns()
        finish_hook = None
        for i in range(warmup + connections):
            if perf_counter_ns() > give_up:
                ph.error(f"phase deadline: {warmup + connections - i} connections not attempted")
                break
            probe = SetupProbe(loop, target.host, target.port, target.path, ph)
            probe.connect()
            if not loop.run(perf_counter_ns() + int(timeout * SEC), lambda p=probe: p.done):
                ph.error(f"connection not set up and closed within {timeout}s")
                probe.abort()
            if i >= warmup and probe.t101 is not None and probe.t_first is not None:
                t101.append(probe.t101)
                tfirst.append(probe.t_first)
            if i == warmup - 1:
                cpu0 = self.monitor.cpu()
                started = perf_counter_ns()
                finish_hook = on_window(connections * 0.004) if on_window else None
        elapsed = (perf_counter_ns() - started) / SEC
        cpu1 = self.monitor.cpu()
        if finish_hook:
            finish_hook()
        first = percentiles_ms(tfirst)
        to101 = percentiles_ms(t101)
        return {
            "sessions": connections,
            "ready": len(tfirst),
            "msgs_per_s": round(len(tfirst) / elapsed, 1) if elapsed else 0.0,
            **first,  # the headline: connect() -> first upstream byte at the client
            "t101_p50_ms": to101["p50_ms"],
            "t101_p99_ms": to101["p99_ms"],
            "errors": ph.errors,
            "error_samples": ph.error_samples,
            "cpu_s": _delta(cpu1, cpu0),
        }
