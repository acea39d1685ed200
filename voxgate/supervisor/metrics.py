"""Prometheus metrics for the whole gateway, kept in the supervisor.

Workers ship counter deltas in their heartbeats; the supervisor folds them into monotonic
counters here, so a worker restart never makes a counter go backwards. Gauges (active
sessions, worker states) are read from the pools at scrape time.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
CONNECT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The registry and every metric voxgate exports."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.sessions_active = Gauge("voxgate_sessions_active", "Open sessions", ["provider", "route"], registry=r)
        self.sessions_total = Counter("voxgate_sessions", "Sessions handed to workers", ["provider", "route"], registry=r)
        self.frames = Counter("voxgate_frames", "Frames relayed", ["provider", "route", "direction"], registry=r)
        self.bytes = Counter("voxgate_bytes", "Payload bytes relayed", ["provider", "route", "direction"], registry=r)
        self.connect_latency = Histogram(
            "voxgate_upstream_connect_seconds", "Upstream connect + handshake latency", ["provider"],
            buckets=CONNECT_BUCKETS, registry=r,
        )
        self.upstream_failures = Counter(
            "voxgate_upstream_failures", "Upstream connect failures", ["provider", "kind"], registry=r
        )
        self.closes = Counter("voxgate_closes", "Close codes sent", ["provider", "leg", "code"], registry=r)
        self.rejections = Counter("voxgate_admission_rejections", "Upgrades refused before 101", ["reason"], registry=r)
        self.restarts = Counter("voxgate_worker_restarts", "Worker restarts", ["provider"], registry=r)
        self.workers = Gauge("voxgate_workers", "Workers by state", ["provider", "state"], registry=r)
        self.ready = Gauge("voxgate_ready", "1 when the provider takes new sessions (as /readyz)", ["provider"], registry=r)
        self.usage_audio = Counter(
            "voxgate_usage_audio_seconds", "Audio seconds metered (up = client to provider)",
            ["provider", "route", "direction"], registry=r,
        )
        self.usage_tokens = Counter(
            "voxgate_usage_tokens", "OpenAI tokens reported by response.done (cached is part of input)",
            ["provider", "kind"], registry=r,
        )
        self.usage_characters = Counter(
            "voxgate_usage_characters", "Characters sent to text-to-speech", ["provider"], registry=r
        )
        self.budget_stops = Counter(
            "voxgate_sessions_stopped", "Sessions ended by the gateway (operator, budget, replaced)",
            ["reason"], registry=r,
        )
        self.redis_errors = Counter(
            "voxgate_redis_errors", "Failed calls to the shared Redis (--redis-url)", registry=r
        )
        # every label set the dashboards use exists from the start (no series appears late)
        for provider, route in (("openai", "translate"), ("openai", "realtime"), ("deepgram", "agent"),
                                ("deepgram", "listen"), ("deepgram", "speak"), ("deepgram", "listen_v2"),
                                ("deepgram", "speak_v2")):
            self.sessions_total.labels(provider, route)
            for direction in ("up", "down"):
                self.usage_audio.labels(provider, route, direction)
                self.frames.labels(provider, route, direction)
        for kind in ("input_text", "input_audio", "output_text", "output_audio", "cached"):
            self.usage_tokens.labels("openai", kind)
        self.usage_characters.labels("deepgram")
        for reason in ("terminated", "budget_exhausted", "replaced"):
            self.budget_stops.labels(reason)

    def fold_usage(self, provider: str, route: str, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Add the difference between two cumulative usage reports of one session."""
        for direction in ("up", "down"):
            delta = (new["audio_seconds"][direction] or 0.0) - (old["audio_seconds"][direction] or 0.0)
            if delta > 0:
                self.usage_audio.labels(provider, route, direction).inc(delta)
        for kind in ("input_text", "input_audio", "output_text", "output_audio", "cached"):
            delta = new["tokens"][kind] - old["tokens"][kind]
            if delta > 0:
                self.usage_tokens.labels(provider, kind).inc(delta)
        delta = new["characters"] - old["characters"]
        if delta > 0:
            self.usage_characters.labels(provider).inc(delta)

    def fold_heartbeat(self, provider: str, stats: dict[str, Any]) -> None:
        """Add one heartbeat's deltas (see runtime.WorkerCounters.take)."""
        for key, value in stats.get("frames", {}).items():
            route, direction = key.split("|", 1)
            self.frames.labels(provider, route, direction).inc(value)
        for key, value in stats.get("bytes", {}).items():
            route, direction = key.split("|", 1)
            self.bytes.labels(provider, route, direction).inc(value)
        for key, value in stats.get("closes", {}).items():
            leg, code = key.split("|", 1)
            self.closes.labels(provider, leg, code).inc(value)
        for kind, value in stats.get("upstream_failures", {}).items():
            self.upstream_failures.labels(provider, kind).inc(value)
        for seconds in stats.get("connect_seconds", []):
            self.connect_latency.labels(provider).observe(seconds)

    def render(self, pools: dict, draining: bool = False) -> bytes:
        """Text exposition, with gauges refreshed from the live pools."""
        self.sessions_active.clear()
        self.workers.clear()
        for provider, pool in pools.items():
            self.ready.labels(provider).set(0 if draining or not pool.ready_workers() else 1)
            per_route: dict[str, int] = {}
            states: dict[str, int] = {}
            for worker in pool.workers():
                states[worker.state] = states.get(worker.state, 0) + 1
                for ref in worker.sessions.values():
                    per_route[ref.route] = per_route.get(ref.route, 0) + 1
            for route, count in per_route.items():
                self.sessions_active.labels(provider, route).set(count)
            for state in ("starting", "ready", "draining"):
                self.workers.labels(provider, state).set(states.get(state, 0))
        return generate_latest(self.registry)
