"""The house rules a reviewer would otherwise check by hand (issue 15).

- No function above cyclomatic complexity 20 (radon's count) unless the comment right above it
  says why it is one piece (in those words).
- A module of the product past 600 lines says in its docstring why it is one piece.
- Neither provider package imports the other: what both need lives in `voxgate/workers/`;
  no worker module imports the supervisor (what both read sits beside `config`).
- `ruff check` is clean.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from radon.complexity import cc_visit

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(p for top in ("voxgate", "tests") for p in (ROOT / top).rglob("*.py"))
MAX_COMPLEXITY = 20
MAX_LINES = 600
PROVIDERS = ("openai", "deepgram")


def _comment_above(lines: list[str], node_line: int) -> bool:
    """True when the comment right above a def (and its decorators) says why it is one piece
    (a section banner above a def is not a reason)."""
    i = node_line - 2  # the line before, 0-based
    while i >= 0 and lines[i].lstrip().startswith("@"):
        i -= 1
    comment = []
    while i >= 0 and lines[i].lstrip().startswith("#"):
        comment.append(lines[i])
        i -= 1
    return "one piece" in " ".join(comment)


def _functions(path: Path):
    """Every function and method once (radon lists methods under their class too)."""
    seen = set()
    for block in cc_visit(path.read_text()):
        for fn in [block, *getattr(block, "methods", ())]:
            if type(fn).__name__ != "Class" and (fn.lineno, fn.name) not in seen:
                seen.add((fn.lineno, fn.name))
                yield fn


def test_no_function_above_complexity_20_without_a_reason():
    over = []
    for path in SOURCES:
        lines = path.read_text().splitlines()
        for block in _functions(path):
            if block.complexity <= MAX_COMPLEXITY:
                continue
            first = min([block.lineno] + [d.lineno for d in getattr(block, "decorators", [])])
            if not _comment_above(lines, first):
                over.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})")
    assert not over, "complexity above 20 without a comment that says why:\n" + "\n".join(over)


def test_long_modules_say_why_they_are_one_piece():
    long = []
    for path in (p for p in SOURCES if p.is_relative_to(ROOT / "voxgate")):
        source = path.read_text()
        if source.count("\n") <= MAX_LINES:
            continue
        doc = ast.get_docstring(ast.parse(source)) or ""
        if "one piece" not in doc:
            long.append(str(path.relative_to(ROOT)))
    assert not long, "modules past 600 lines whose docstring does not say why they are one piece: " + ", ".join(long)


def _imports_of(folder: Path, forbidden: str) -> list[str]:
    """`module: import` for every import of `forbidden` (or below it) under `folder`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.relative_to(ROOT)}: {n}" for n in names
                      if n == forbidden or n.startswith(forbidden + ".")]
    return found


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_provider_package_never_imports_the_other(provider):
    other = next(p for p in PROVIDERS if p != provider)
    assert not _imports_of(ROOT / "voxgate" / "workers" / provider, f"voxgate.workers.{other}")


def test_no_worker_imports_the_supervisor():
    assert not _imports_of(ROOT / "voxgate" / "workers", "voxgate.supervisor")


def test_ruff_is_clean():
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "voxgate", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_supervisor_process_does_not_load_numpy():
    """`voxgate serve` imports cli, config, supervisor: numpy (12 MiB of RSS) belongs to the
    workers and the simulators only."""
    probe = "import sys, voxgate.cli, voxgate.supervisor.server; print('numpy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
