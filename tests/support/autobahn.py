"""Autobahn|Testsuite's fuzzing client against a running gateway, for tests/stress.

Autobahn|Testsuite (`wstest`) runs only on Python 2.7. `find_python27()` looks for
`python2.7` on PATH, then the pyenv build. `ensure_installed()` installs
`autobahntestsuite` once, with that interpreter's own pip, into a private site directory
under ~/.cache/voxgate-autobahn (`pip --target`, loaded through `site.addsitedir` so the
zope namespace package resolves): as isolated as a virtualenv, and it needs nothing but
pip, which is all a bare Python 2.7 has. When that fails (no pip, no registry), the
reason comes back so the test can skip with it.

`run_fuzzingclient()` writes the spec, runs the cases against one URL and returns the
agent's results; `summarize()` renders them as deterministic markdown (no ports, times or
dates) for tests/stress/autobahn-summary.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import trio

PYENV_PY27 = Path("/root/.pyenv/versions/2.7.18/bin/python")
PACKAGE = "autobahntestsuite"
AGENT = "voxgate"
INSTALL_TIMEOUT = 600.0
PASSING = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED")
LAUNCH = (
    "import site, sys; site.addsitedir(sys.argv[1]); sys.argv = ['wstest'] + sys.argv[2:]; "
    "from autobahntestsuite.wstest import run; run()"
)

# Why a case is not plain OK through the gateway; keyed by case id or id prefix.
EXPLANATIONS = {
    "3.": "a frame with RSV bits set fails the connection (1002) before the echo of the "
          "message sent just before it has come back from the upstream",
    "4.": "a frame with a reserved opcode fails the connection (1002) before the echo of the "
          "message sent just before it has come back from the upstream",
    "5.15": "a continuation with nothing to continue fails the connection (1002) before the "
            "echo of the preceding message has come back from the upstream",
    "6.4.3": "the splice forwards complete client frames only, so the endpoint sees an invalid "
             "UTF-8 sequence inside one frame when the frame ends, not at the bad byte",
    "6.4.4": "as 6.4.3",
    "7.1.6": "informational by definition (close after a large message, then ping)",
    "7.13.": "informational by definition (close codes 5000 and 65535: voxgate fails them with 1002)",
}


def find_python27() -> str | None:
    """A Python 2.7 interpreter: `python2.7` on PATH, else the pyenv build, else None."""
    for candidate in (shutil.which("python2.7"), str(PYENV_PY27)):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        try:
            out = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=20,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "2.7":
            return candidate
    return None


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "voxgate-autobahn"


def _interpreter_tag(python: str) -> str:
    """Compiled wheels (wsaccel, ujson, cryptography) fit one interpreter build."""
    out = subprocess.run(
        [python, "-c", "import sys; print(sys.executable); print(sys.version); print(sys.maxunicode)"],
        capture_output=True, text=True, timeout=20,
    )
    return hashlib.sha1(out.stdout.encode()).hexdigest()[:10]


def ensure_installed(python: str, root: Path | None = None) -> tuple[Path | None, str]:
    """(site directory with autobahntestsuite, "") or (None, why it cannot be had)."""
    root = root or cache_root()
    try:
        site = root / f"site-{_interpreter_tag(python)}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot query {python}: {exc}"
    if (site / ".complete").is_file():
        return site, ""
    try:
        pip = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pip for Python 2.7 not usable: {exc}"
    if pip.returncode != 0:
        return None, "Python 2.7 has no pip, so autobahntestsuite cannot be installed"
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="install-", dir=root))
    try:
        try:
            out = subprocess.run(
                [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
                 "--retries", "1", "--timeout", "30", "--target", str(staging), PACKAGE],
                capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return None, f"installing {PACKAGE} for Python 2.7 took over {INSTALL_TIMEOUT:.0f}s"
        if out.returncode != 0:
            lines = [ln for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
            detail = next((ln for ln in reversed(lines) if "ERROR" in ln or "Error" in ln), lines[-1] if lines else "")
            return None, f"{PACKAGE} cannot be installed for Python 2.7 here: {detail.strip()[:300]}"
        (staging / ".complete").write_text(PACKAGE + "\n")
        try:
            staging.rename(site)
        except OSError:  # another run finished first
            if not (site / ".complete").is_file():
                raise
        return site, ""
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def wstest(python: str, site: Path, *args: str) -> list[str]:
    return [python, "-c", LAUNCH, str(site), *args]


def version(python: str, site: Path) -> str:
    """The installed autobahntestsuite version, e.g. "25.10.1"."""
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); import pkg_resources; "
        "print(pkg_resources.get_distribution('autobahntestsuite').version)"
    )
    out = subprocess.run([python, "-c", code, str(site)], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() or "unknown"


async def run_fuzzingclient(
    python: str, site: Path, url: str, workdir: Path, *, cases: list[str], exclude: list[str],
    timeout: float = 120.0,
) -> dict[str, dict]:
    """Run the cases against `url`; {case id: result} as wstest's index.json has them."""
    outdir = workdir / "reports"
    spec = {
        "outdir": str(outdir),
        "servers": [{"agent": AGENT, "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }
    spec_path = workdir / "fuzzingclient.json"
    spec_path.write_text(json.dumps(spec))
    with trio.fail_after(timeout):
        done = await trio.run_process(
            wstest(python, site, "-m", "fuzzingclient", "-s", str(spec_path)),
            cwd=str(workdir), capture_stdout=True, capture_stderr=True, check=False,
        )
    index = outdir / "index.json"
    if not index.is_file():
        tail = (done.stdout + done.stderr).decode(errors="replace")[-2000:]
        raise AssertionError(f"wstest exited {done.returncode} without a report:\n{tail}")
    return json.loads(index.read_text())[AGENT]


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]


def failures(results: dict[str, dict]) -> dict[str, dict]:
    """Cases whose behaviour or close behaviour is not an accepted outcome."""
    return {
        cid: r for cid, r in results.items()
        if r["behavior"] not in PASSING or r["behaviorClose"] not in PASSING
    }


def explain(case_id: str) -> str:
    for key in sorted(EXPLANATIONS, key=len, reverse=True):
        if case_id == key or (key.endswith(".") and case_id.startswith(key)):
            return EXPLANATIONS[key]
    return ""


def summarize(results: dict[str, dict], *, target: str, setup: str, cases: list[str],
              exclude: list[str], tool: str, notes: list[str] = ()) -> str:
    """Markdown: counts by behaviour, then every case that is not plain OK, with why."""
    counts = Counter(r["behavior"] for r in results.values())
    lines = [
        "# Autobahn|Testsuite against voxgate's frame splice",
        "",
        "Written by `tests/stress/test_hostile.py::test_autobahn_fuzzingclient_on_the_splice` "
        "on every run; do not edit by hand.",
        "",
        f"- Target: `{target}`",
        f"- Setup: {setup}",
        f"- Tool: {tool}",
        f"- Cases: {', '.join(cases)}; excluded: {', '.join(exclude) or 'none'}",
        f"- Result: {len(results)} cases, {len(failures(results))} failed",
        "",
        "| behaviour | cases |",
        "|---|---|",
    ]
    for behavior in ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE"):
        if counts.get(behavior):
            lines.append(f"| {behavior} | {counts[behavior]} |")
    for behavior in sorted(set(counts) - {"OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "WRONG CODE"}):
        lines.append(f"| {behavior} | {counts[behavior]} |")
    odd = sorted(
        (cid for cid, r in results.items()
         if (r["behavior"], r["behaviorClose"]) != ("OK", "OK") and r["behavior"] != "UNIMPLEMENTED"),
        key=case_key,
    )
    if odd:
        lines += ["", "## Cases that are not plain OK", "",
                  "| case | behaviour | close behaviour | why |", "|---|---|---|---|"]
        for cid in odd:
            r = results[cid]
            lines.append(f"| {cid} | {r['behavior']} | {r['behaviorClose']} | {explain(cid)} |")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"
