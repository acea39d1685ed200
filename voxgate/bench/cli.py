"""`voxgate bench`: the benchmark harness of issue 7 as a click command.

Registered by voxgate's CLI with `cli.add_command(bench)`; until then `python -m voxgate.bench`.
It prints a table (and PASS/FAIL per target) on stdout, progress on stderr, and with
`--json PATH` writes everything, including each run's raw numbers. The exit status is 0
whenever the benchmark ran, whatever the verdicts: it is a measurement, not a test.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click
import orjson


def code_version() -> dict:
    """The commit measured and the product files that differed from it (a benchmark of a
    dirty tree says so)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    import voxgate

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "voxgate").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD") or None, "dirty": dirty,
            "voxgate_path": str(Path(voxgate.__file__).resolve().parent)}


@click.command("bench")
@click.option("--quick", is_flag=True, help="A tiny version of every scenario (seconds each; for the test suite).")
@click.option("--scenario", "scenarios", multiple=True, metavar="NAME",
              help="pingpong, realtime100, realtime200 (or realtime), throughput, translator, translator200 "
                   "(or translators), idle, setup; "
                   "repeatable (default: all).")
@click.option("--sessions", type=click.IntRange(1, 20000), default=None,
              help="Session count of every selected scenario except pingpong (idle: sessions held; "
                   "setup: connections).")
@click.option("--duration", type=click.FloatRange(0.1, 600), default=None,
              help="Measured window of the streaming scenarios, seconds.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the full results as JSON here.")
@click.option("--runs", type=click.IntRange(1, 50), default=None,
              help="Repeat the whole benchmark and report medians (default 3, or 1 with --quick).")
@click.option("--peers/--no-peers", default=True, show_default=True,
              help="Also run the scenarios through nginx and a Node ws relay when available.")
@click.option("--workers-per-provider", type=click.IntRange(1, 64), default=1, show_default=True,
              help="voxgate worker processes per provider (and nginx worker processes).")
@click.option("--profile", "profile_dir", type=click.Path(file_okay=False), default=None,
              help="Record py-spy profiles (raw collapsed stacks) of the worker serving each voxgate "
                   "streaming phase into this directory. Profiling costs CPU: not for measured runs.")
def bench(quick: bool, scenarios: tuple[str, ...], sessions: int | None, duration: float | None,
          json_path: str | None, runs: int | None, peers: bool, workers_per_provider: int,
          profile_dir: str | None) -> None:
    """Benchmark voxgate against a direct connection and peers (nginx, Node ws) in one run."""
    from voxgate.bench import report, runner

    opts = runner.Options(
        quick=quick, scenarios=scenarios, sessions=sessions, duration=duration,
        runs=runs or (1 if quick else 3), peers=peers, workers_per_provider=workers_per_provider,
        profile_dir=Path(profile_dir) if profile_dir else None,
    )
    try:
        runner.plan(quick=quick, names=list(scenarios), sessions=sessions, duration=duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--scenario") from None

    def log(message: str) -> None:
        click.echo(message, err=True)

    started = time.time()
    code = code_version()  # before the run: the tree may change while it runs
    load_before = os.getloadavg()
    raw = runner.run_all(opts, log)
    load_after = os.getloadavg()
    results = report.aggregate(raw["runs"], raw["scenarios"])
    verdicts = report.evaluate(results, raw["scenarios"], workers_per_provider)
    click.echo(report.render(results, verdicts))
    if json_path:
        peers_info = {}
        for name in ("nginx", "node"):
            if name in raw["versions"]:
                peers_info[name] = {"ran": True, "version": raw["versions"][name]}
            else:
                peers_info[name] = {"ran": False, "reason": raw["skipped"].get(name, "not requested")}
        doc = {
            "schema": "voxgate-bench/1",
            "command": " ".join(["voxgate bench", *map(shlex.quote, _own_args())]),
            "quick": quick,
            "runs": opts.runs,
            "workers_per_provider": workers_per_provider,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "elapsed_s": round(time.time() - started, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "nofile": raw["nofile"],
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in load_after]},
            "code": code,
            "peers": peers_info,
            "scenarios": results,
            "targets": verdicts,
            "per_run": raw["runs"],
        }
        Path(json_path).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
        log(f"wrote {json_path}")


def _own_args() -> list[str]:
    """This command's arguments, whether run as `voxgate bench ...` or `python -m voxgate.bench ...`."""
    args = sys.argv[1:]
    return args[1:] if args[:1] == ["bench"] else args
