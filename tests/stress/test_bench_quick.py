"""The benchmark harness end to end (`voxgate bench --quick`): every scenario runs and the
JSON is complete and well-formed.

No timed assertions: how fast things are is the benchmark's report, not a test verdict.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voxgate.bench.wire import OP_BINARY, OP_TEXT, client_frame, parse_frame, server_frame, xor_mask

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {"pingpong", "realtime100", "realtime200", "throughput", "translator", "translator200", "idle", "setup",
             "wss"}
EASY = ("pingpong", "realtime100", "translator", "idle", "setup")
BENCH_TIMEOUT = 240


def run_bench(*args: str, timeout: float = BENCH_TIMEOUT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXGATE_", "OPENAI_", "DEEPGRAM_"))}
    return subprocess.run(
        [sys.executable, "-m", "voxgate", "bench", *args], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )


def check_every_scenario_measured(doc: dict) -> None:
    """Every scenario ran against at least the direct and voxgate targets, with numbers."""
    assert doc["quick"] is True and doc["runs"] == 1
    assert set(doc["scenarios"]) == SCENARIOS
    for key, scenario in doc["scenarios"].items():
        for metric in ("p50_ms", "p99_ms", "msgs_per_s"):
            assert isinstance(scenario[metric], int | float), (key, metric, scenario)
        assert isinstance(scenario["errors"], int), key
        assert {"direct", "voxgate"} <= set(scenario["targets"]), key
        direct = scenario["targets"]["direct"]
        assert isinstance(direct["p50_ms"], int | float), (key, direct)
    assert "voxgate_relay" in doc["scenarios"]["translator"]["targets"]

    for key in EASY:
        targets = doc["scenarios"][key]["targets"]
        for name in ("direct", "voxgate"):
            assert targets[name]["errors"] == 0, (key, name, targets[name].get("error_samples"))


def check_cpu_peers_and_verdicts(doc: dict, stdout: str) -> None:
    """CPU per gateway process, the idle scenario's memory, peers that ran or say why not."""
    # CPU of every gateway process, supervisor and workers separately
    cpu = doc["scenarios"]["realtime100"]["targets"]["voxgate"]["cpu_s"]
    assert "supervisor" in cpu and any(label.startswith("worker.deepgram") for label in cpu)
    idle = doc["scenarios"]["idle"]["targets"]["voxgate"]
    assert idle["ready"] == idle["sessions"] and isinstance(idle["relay_kib_per_session"], int | float)

    # peers either ran (and appear as targets) or say why not
    for name, peer in doc["peers"].items():
        if peer["ran"]:
            assert name in doc["scenarios"]["pingpong"]["targets"]
        else:
            assert peer["reason"]
    assert {v["verdict"] for v in doc["targets"]} <= {"PASS", "FAIL", "SKIP"}
    assert "targets" in stdout and "pingpong" in stdout


def test_quick_bench_writes_every_scenario(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    done = run_bench("--quick", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    check_every_scenario_measured(doc)
    check_cpu_peers_and_verdicts(doc, done.stdout)


def test_unknown_scenario_is_a_usage_error() -> None:
    done = run_bench("--scenario", "nope", timeout=60)
    assert done.returncode == 2
    assert "nope" in done.stderr


@pytest.mark.parametrize("size", [0, 1, 5, 125, 126, 960, 4099, 70000])
def test_hand_built_frames_round_trip(size: int) -> None:
    payload = bytes(range(256)) * (size // 256 + 1)
    payload = payload[:size]
    key = b"\x9a\x0b\xf3\x41"
    masked = client_frame(OP_BINARY, payload, key)
    op, fin, got_key, start, end = parse_frame(masked, 0)
    assert (op, fin, got_key, end) == (OP_BINARY, True, key, len(masked))
    assert xor_mask(masked[start:end], key) == payload
    plain = server_frame(OP_TEXT, payload)
    assert parse_frame(plain, 0)[::2] == (OP_TEXT, None, len(plain))
    if size:
        assert parse_frame(plain[:-1], 0) is None  # incomplete: wait for more bytes
