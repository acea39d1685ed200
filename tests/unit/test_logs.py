"""JSON log mode covers what Python itself writes to stderr (issue 14 items 5 and 9): a
warning or an unexpected crash in a process is still one JSON object per line, scrubbed."""

from __future__ import annotations

import json
import subprocess
import sys

CRASHING = """
from voxgate import logs
logs.register_secret("sk-secret-value-123")
logs.setup("worker.test", fmt=FORMAT)
import warnings
warnings.warn("something odd")
raise RuntimeError("boom with sk-secret-value-123")
"""


def run(fmt: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", CRASHING.replace("FORMAT", repr(fmt))],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )


def test_json_mode_warnings_and_crashes_are_json_lines():
    done = run("json")
    assert done.returncode == 1 and done.stdout == ""
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [e["level"] for e in events] == ["warning", "error"]
    assert "something odd" in events[0]["event"]
    crash = events[1]
    assert crash["proc"] == "worker.test" and crash["event"] == "crashed" and crash["error"] == "RuntimeError"
    assert "boom with [redacted]" in crash["traceback"]
    assert "sk-secret-value-123" not in done.stderr


def test_text_mode_keeps_the_traceback_but_not_the_secret():
    done = run("text")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr and "UserWarning" in done.stderr
    assert "boom with [redacted]" in done.stderr and "sk-secret-value-123" not in done.stderr
