"""Node.js packages for the client tests that drive official Node SDKs: installed once with
npm into tests/clients/.node (git-ignored); a test skips when node or npm is missing or the
install fails (no registry)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parents[1] / "clients" / ".node"
NPM_TIMEOUT = 300.0


def node_modules(*packages: str) -> Path:
    """node_modules holding `packages` (npm specs like `openai@7`), or skip the test."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed")
    modules = NODE_DIR / "node_modules"
    names = [spec.rsplit("@", 1)[0] if spec.rfind("@") > 0 else spec for spec in packages]
    if all((modules / name / "package.json").exists() for name in names):
        return modules
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            [npm, "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--no-save",
             "--loglevel=error", *packages],
            capture_output=True, text=True, timeout=NPM_TIMEOUT, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.skip(f"npm install {' '.join(packages)} took longer than {NPM_TIMEOUT:.0f}s")
    if done.returncode != 0 or not all((modules / name / "package.json").exists() for name in names):
        pytest.skip("npm install failed: " + (done.stderr or done.stdout).strip()[-300:])
    return modules
