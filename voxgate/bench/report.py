"""Medians over runs, derived numbers, the PASS/FAIL targets, the table and the JSON.

Targets are ratios or differences against `direct` or a peer measured in the same run, so
the machine's speed cancels out; absolute limits are the ones issue 7 states.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from voxgate.bench.runner import FULL, Scenario

SCALARS = ("msgs_per_s", "p50_ms", "p90_ms", "p99_ms", "max_ms", "mean_ms", "t101_p50_ms", "t101_p99_ms",
           "session_ready_p50_ms", "gen_lag_p99_ms", "sent", "received", "ready", "sessions", "window_s", "ramp_s")
DICTS = ("cpu_s", "rss_peak_kib", "hwm_kib", "kib_per_session", "rss_base_kib", "rss_loaded_kib")
RELAY_PREFIX = {"voxgate": ("supervisor", "worker."), "voxgate_relay": ("supervisor", "worker."),
                "voxgate_wss": ("tls.supervisor", "tls.worker."), "nginx": ("nginx.",), "node": ("node",)}


def _median(values: list[Any]) -> Any:
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not nums:
        return None
    return round(statistics.median(nums), 4)


def relay_sum(target: str, values: dict[str, float]) -> float | None:
    prefixes = RELAY_PREFIX.get(target)
    if not prefixes or not values:
        return None
    return round(sum(v for k, v in values.items() if k.startswith(prefixes)), 3)


def derive(target: str, res: dict) -> dict:
    """Per-run numbers computed from one phase result."""
    cpu = res.get("cpu_s") or {}
    out = dict(res)
    out["relay_cpu_s"] = relay_sum(target, cpu)
    if target.startswith("voxgate"):
        own = "tls." if target == "voxgate_wss" else ""  # the wss gateway's processes
        out["supervisor_cpu_s"] = cpu.get(own + "supervisor")
        out["workers_cpu_s"] = round(sum(v for k, v in cpu.items() if k.startswith(own + "worker.")), 3)
    window = res.get("window_s")
    if window and "generator" in cpu:
        out["generator_cpu_pct"] = round(100 * cpu["generator"] / window, 1)
    if window and "upstream" in cpu:
        out["upstream_cpu_pct"] = round(100 * cpu["upstream"] / window, 1)
    if window and "other" in cpu:
        out["other_cpu_pct"] = round(100 * cpu["other"] / window, 1)
    if out["relay_cpu_s"] is not None and window:
        out["relay_cpu_pct"] = round(100 * out["relay_cpu_s"] / window, 1)
        round_trips = (res.get("msgs_per_s") or 0) * window
        if round_trips:
            # a round trip is two relayed messages (one each way); on the translator path it
            # is one audio round trip (PCM in, append and delta upstream, PCM out)
            out["relay_us_per_rt"] = round(out["relay_cpu_s"] * 1e6 / round_trips, 1)
            out["relay_us_per_msg"] = round(out["relay_cpu_s"] * 1e6 / (2 * round_trips), 1)
    out["relay_rss_peak_kib"] = relay_sum(target, res.get("rss_peak_kib") or {})
    if "kib_per_session" in res:
        per = res["kib_per_session"]
        out["relay_kib_per_session"] = relay_sum(target, per) if target != "direct" else per.get("upstream")
        loaded = relay_sum(target, res.get("rss_loaded_kib") or {})
        out["relay_rss_loaded_kib"] = loaded
    return out


def _target_names(runs: list[dict], key: str) -> list[str]:
    """Every target any run measured in one scenario, in first-seen order."""
    names: list[str] = []
    for run in runs:
        for name in run.get(key, {}):
            if name not in names:
                names.append(name)
    return names


def _merge(key: str, values: list[Any]) -> Any:
    """One number over runs: errors add up, samples are pooled, the rest is a median."""
    if key == "errors":
        return sum(v or 0 for v in values)
    if key == "error_samples":
        return [s for v in values for s in (v or [])][:10]
    if key in DICTS:
        labels = {lbl for v in values if v for lbl in v}
        return {lbl: _median([v.get(lbl) for v in values if v]) for lbl in sorted(labels)}
    return _median(values)


def _medians(name: str, runs: list[dict], key: str) -> dict[str, Any]:
    """One target's derived numbers, merged over the runs that measured it."""
    per_run = [derive(name, run[key][name]) for run in runs if name in run.get(key, {})]
    merged: dict[str, Any] = {"runs": len(per_run)}
    for metric in sorted({k for r in per_run for k in r}):
        merged[metric] = _merge(metric, [r.get(metric) for r in per_run])
    return merged


def _add_over_direct(targets: dict[str, dict]) -> None:
    """`added_p50_ms`/`added_p99_ms`: each target's latency over the direct connection's."""
    direct = targets.get("direct", {})
    for name, t in targets.items():
        if name == "direct":
            continue
        for metric in ("p50_ms", "p99_ms"):
            if t.get(metric) is not None and direct.get(metric) is not None:
                t["added_" + metric] = round(t[metric] - direct[metric], 4)


def aggregate(runs: list[dict], scenarios: list[Scenario]) -> dict:
    """{scenario: {"targets": {target: medians}}} plus headline numbers per scenario."""
    out: dict[str, dict] = {}
    for sc in scenarios:
        targets = {name: _medians(name, runs, sc.key) for name in _target_names(runs, sc.key)}
        _add_over_direct(targets)
        head = targets.get("voxgate", {})
        out[sc.key] = {
            "title": sc.title,
            "params": sc.params(),
            **{k: head.get(k) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms", "msgs_per_s", "errors",
                                        "added_p50_ms")},
            "targets": targets,
        }
    return out


# ----------------------------------------------------------------------------- targets


def _t(sc: dict | None, target: str) -> dict:
    return (sc or {}).get("targets", {}).get(target, {})


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


Add = Callable[..., None]  # add(name, scenario key, ok, value, limit, note="")


def _pingpong_and_realtime(results: dict, add: Add) -> None:
    added = _t(results.get("pingpong"), "voxgate").get("added_p50_ms")
    add("ping-pong added p50 over direct", "pingpong", None if added is None else added <= 0.1,
        None if added is None else f"{added * 1000:.0f} us", "<= 100 us")
    rt = results.get("realtime200")
    v = _t(rt, "voxgate")
    add("realtime 200: no errors", "realtime200", v.get("errors") == 0 if v else None, v.get("errors"), "0")
    add("realtime 200: p99 RTT", "realtime200", None if v.get("p99_ms") is None else v["p99_ms"] <= 10.0,
        None if v.get("p99_ms") is None else f"{v['p99_ms']:.2f} ms", "<= 10 ms")
    node = _t(rt, "node")
    if v.get("relay_cpu_s") is not None and node.get("relay_cpu_s") is not None:
        add("realtime 200: gateway CPU below Node's", "realtime200", v["relay_cpu_s"] < node["relay_cpu_s"],
            f"{v['relay_cpu_s']} s vs {node['relay_cpu_s']} s", "< node")
    else:
        add("realtime 200: gateway CPU below Node's", "realtime200", None, None, "< node", "node peer not run")


def _throughput(results: dict, add: Add) -> None:
    tp = results.get("throughput")
    v, node = _t(tp, "voxgate"), _t(tp, "node")
    if v.get("msgs_per_s") is not None and node.get("msgs_per_s") is not None:
        add("throughput >= Node relay", "throughput", v["msgs_per_s"] >= node["msgs_per_s"],
            f"{v['msgs_per_s']:.0f} vs {node['msgs_per_s']:.0f} msgs/s", ">= node")
    else:
        add("throughput >= Node relay", "throughput", None, None, ">= node", "node peer not run")


def _translator(results: dict, add: Add) -> None:
    for key, name, limit_ms in (("translator", "translator 100: p99 RTT, no errors", 20.0),
                                ("translator200", "translator 200: every frame answered, p99 RTT", 50.0)):
        v = _t(results.get(key), "voxgate")
        ok = None if v.get("p99_ms") is None else (v["p99_ms"] <= limit_ms and v.get("errors") == 0)
        shown = "-" if v.get("p99_ms") is None else f"p99 {v['p99_ms']:.2f} ms, errors {v.get('errors')}"
        add(name, key, ok, shown, f"<= {limit_ms:.0f} ms, 0 errors")


def _idle_and_setup(results: dict, add: Add) -> None:
    v = _t(results.get("idle"), "voxgate")
    per = v.get("relay_kib_per_session")
    ok = None if per is None else (per <= 64.0 and v.get("errors") == 0 and v.get("ready") == v.get("sessions"))
    add(f"idle {v.get('sessions')} sessions on one worker", "idle", ok, None if per is None else f"{per:.1f} KiB/session",
        "<= 64 KiB each")
    st = results.get("setup")
    v, d = _t(st, "voxgate"), _t(st, "direct")
    if v.get("p50_ms") is not None and d.get("p50_ms") is not None:
        add("setup: first upstream byte p50", "setup", v["p50_ms"] <= d["p50_ms"] + 1.0,
            f"{v['p50_ms']:.3f} ms vs direct {d['p50_ms']:.3f} ms", "<= direct + 1 ms")


def _supervisor_share(results: dict, add: Add) -> None:
    """The supervisor's CPU against the workers': it is out of the data path (but pumps wss)."""
    checks = [("wss", "voxgate_wss", "wss: supervisor CPU < 2% of workers' (it terminates TLS)",
               "the supervisor pumps every wss byte over a socket pair")]
    checks += [(key, "voxgate", f"supervisor CPU < 2% of workers' ({key})", "CPU ticks are 10 ms: short windows are coarse")
               for key in ("realtime200", "throughput")]
    for key, target, name, note in checks:
        v = _t(results.get(key), target)
        sup, workers = v.get("supervisor_cpu_s"), v.get("workers_cpu_s")
        if sup is None or not workers:
            continue
        add(name, key, sup < 0.02 * workers, f"{sup:.2f} s vs {workers:.2f} s ({100 * sup / workers:.1f} %)", "< 2 %",
            note)


CHECKS = (_pingpong_and_realtime, _throughput, _translator, _idle_and_setup, _supervisor_share)


def evaluate(results: dict, scenarios: list[Scenario], workers_per_provider: int) -> list[dict]:
    """PASS/FAIL per issue-7 target. `scaled` marks runs smaller than the target's definition
    (--quick, --sessions, --workers-per-provider), whose verdict is only indicative."""
    given = {sc.key: sc for sc in scenarios}

    def scaled(key: str) -> bool:
        sc = given.get(key)
        return sc is None or sc.sessions != FULL[key].sessions or (
            sc.kind == "stream" and sc.duration < FULL[key].duration)

    out: list[dict] = []

    def add(name: str, key: str, ok: bool | None, value: Any, limit: str, note: str = "") -> None:
        if key not in results:
            return
        out.append({"target": name, "scenario": key, "verdict": _verdict(ok), "value": value, "limit": limit,
                    "scaled": scaled(key) or (key == "idle" and workers_per_provider != 1), "note": note})

    for check in CHECKS:
        check(results, add)
    return out


# ----------------------------------------------------------------------------- table


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cpu(t: dict) -> str:
    if t.get("supervisor_cpu_s") is not None:
        return f"{_f(t.get('supervisor_cpu_s'))}/{_f(t.get('workers_cpu_s'))}"
    return _f(t.get("relay_cpu_s"))


def _mib(kib: Any) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def render(results: dict, verdicts: list[dict]) -> str:
    lines: list[str] = []
    for key, sc in results.items():
        params = ", ".join(f"{k}={v}" for k, v in sc["params"].items())
        lines.append(f"\n{key}: {sc['title']} ({params})")
        targets = sc["targets"]
        kind = "idle" if key == "idle" else "setup" if key == "setup" else "stream"
        if kind == "stream":
            head = ["target", "msgs/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "+p50 ms", "+p99 ms",
                    "relay CPU s (sup/wrk)", "relay CPU %", "CPU us/msg", "CPU us/rt", "relay RSS MiB",
                    "gen CPU %", "other CPU %", "errors"]
            rows = [[name, _f(t.get("msgs_per_s"), 0), _f(t.get("p50_ms"), 3), _f(t.get("p90_ms"), 3),
                     _f(t.get("p99_ms"), 3), _f(t.get("max_ms"), 3), _f(t.get("added_p50_ms"), 3),
                     _f(t.get("added_p99_ms"), 3), _cpu(t), _f(t.get("relay_cpu_pct"), 1),
                     _f(t.get("relay_us_per_msg"), 1), _f(t.get("relay_us_per_rt"), 1), _mib(t.get("relay_rss_peak_kib")), _f(t.get("generator_cpu_pct"), 1),
                     _f(t.get("other_cpu_pct"), 1), _f(t.get("errors"))]
                    for name, t in targets.items()]
        elif kind == "idle":
            head = ["target", "held", "KiB/session", "relay RSS MiB (held)", "echo p50 ms", "echo p99 ms",
                    "ramp s", "errors"]
            rows = [[name, f"{_f(t.get('ready'), 0)}/{_f(t.get('sessions'), 0)}", _f(t.get("relay_kib_per_session"), 1),
                     _mib(t.get("relay_rss_loaded_kib")), _f(t.get("p50_ms"), 3), _f(t.get("p99_ms"), 3),
                     _f(t.get("ramp_s"), 2), _f(t.get("errors"))] for name, t in targets.items()]
        else:
            head = ["target", "first byte p50 ms", "p90 ms", "p99 ms", "101 p50 ms", "+p50 ms", "conn/s",
                    "relay CPU s", "errors"]
            rows = [[name, _f(t.get("p50_ms"), 3), _f(t.get("p90_ms"), 3), _f(t.get("p99_ms"), 3),
                     _f(t.get("t101_p50_ms"), 3), _f(t.get("added_p50_ms"), 3), _f(t.get("msgs_per_s"), 0),
                     _cpu(t), _f(t.get("errors"))] for name, t in targets.items()]
        lines += _grid(head, rows)
        for name, t in targets.items():
            for sample in t.get("error_samples") or []:
                lines.append(f"  ! {name}: {sample}")
    if verdicts:
        lines.append("\ntargets")
        rows = [[v["verdict"] + (" (scaled)" if v["scaled"] and v["verdict"] != "SKIP" else ""), v["target"],
                 _f(v["value"]), v["limit"], v["note"]] for v in verdicts]
        lines += _grid(["verdict", "target", "measured", "limit", "note"], rows)
    return "\n".join(lines).lstrip("\n")


def _grid(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    fmt = lambda r: "  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(head), "  " + "  ".join("-" * w for w in widths), *[fmt(r) for r in rows]]
