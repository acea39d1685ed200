"""deploy/ dashboards and alert rules (issue 11 part 6): every metric they reference exists in
/metrics of a running gateway, and `promtool check rules` accepts the rules (where promtool is
installed; .ci/run installs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.gateway import gateway_env
from tests.support.parts import missing_part

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "voxgate-dashboard.json"
RULES = DEPLOY / "prometheus" / "voxgate-alerts.yaml"
METRIC = re.compile(r"\bvoxgate_[a-z_]+\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def exported(text: str) -> set[str]:
    """Metric names in an exposition: sample names, and the families of # TYPE lines."""
    names = set()
    for line in text.splitlines():
        match = re.match(r"# TYPE (\S+) (\w+)", line) or re.match(r"([a-zA-Z_:][\w:]*)", line)
        if match:
            names.add(match.group(1))
            if line.startswith("# TYPE") and match.group(2) == "histogram":
                names.update(match.group(1) + s for s in SUFFIXES)
    return names


def test_dashboard_covers_what_operators_watch():
    exprs = " ".join(dashboard_exprs())
    for metric in ("voxgate_sessions_active", "voxgate_frames_total", "voxgate_upstream_connect_seconds_bucket",
                   "voxgate_admission_rejections_total", "voxgate_worker_restarts_total",
                   "voxgate_usage_audio_seconds_total", "voxgate_usage_tokens_total"):
        assert metric in exprs
    alerts = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    assert {"VoxgateWorkerCrashLoop", "VoxgateUpstreamFailureRatio", "VoxgateNotReady", "VoxgateAudioBurnHigh"} <= alerts


async def test_every_referenced_metric_exists(gateway_factory, openai_sim, deepgram_sim):
    import trio

    gw = await gateway_factory(env=gateway_env(openai_sim, deepgram_sim))
    text = (await trio.to_thread.run_sync(lambda: gw.http("/metrics")))[2].decode()
    names = exported(text)
    referenced = {m for expr in dashboard_exprs() + rule_exprs() for m in METRIC.findall(expr)}
    assert referenced and referenced <= names, sorted(referenced - names)


def test_promtool_accepts_the_rules():
    if shutil.which("promtool") is None:
        missing_part("promtool not installed (.ci/run installs Debian's prometheus)")
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout
