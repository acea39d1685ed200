"""Diagnostic: log garbage-collector pauses of voxgate worker processes.

Not imported by anything. Put this directory first on PYTHONPATH of a benchmark run, e.g.

    PYTHONPATH=voxgate/bench/gcprobe:. GCPROBE_DIR=/tmp/gc voxgate bench --scenario translator

and every worker appends one line per collection of generation 1 or 2 (and per slower
generation-0 one) to $GCPROBE_DIR/gc.<pid>.log: wall ms, CPU ms, objects tracked.
"""

import gc
import os
import time

try:
    with open("/proc/self/cmdline", "rb") as _fh:
        _IS_WORKER = b"voxgate.workers" in _fh.read()
except OSError:
    _IS_WORKER = False

if _IS_WORKER:
    _DIR = os.environ.get("GCPROBE_DIR", "/tmp")
    _PATH = os.path.join(_DIR, f"gc.{os.getpid()}.log")
    _start = [0.0, 0.0]

    def _probe(phase: str, info: dict) -> None:
        if phase == "start":
            _start[0], _start[1] = time.perf_counter(), time.process_time()
            return
        wall = (time.perf_counter() - _start[0]) * 1000
        cpu = (time.process_time() - _start[1]) * 1000
        gen = info["generation"]
        if gen >= 1 or wall > 2:
            tracked = len(gc.get_objects()) if gen == 2 else -1
            with open(_PATH, "a") as fh:
                fh.write(f"{time.time():.3f} gen{gen} wall={wall:.2f}ms cpu={cpu:.2f}ms "
                         f"collected={info['collected']} tracked={tracked}\n")

    os.makedirs(_DIR, exist_ok=True)
    gc.callbacks.append(_probe)
