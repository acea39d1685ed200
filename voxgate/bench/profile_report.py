"""Summarise py-spy raw (collapsed-stack) profiles: top functions by self and total samples.

    python -m voxgate.bench.profile_report PROFILE.txt [--top 25]

`voxgate bench --profile DIR` writes one such file per profiled phase and worker.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "voxgate/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "voxgate/":
                path = "voxgate/" + path
            elif marker == "lib/python3.":
                path = "stdlib:" + path.split("/", 1)[-1]
            break
    return f"{match.group('func')} ({path})"


def summarise(text: str) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(total samples, self samples, total samples per function, self samples per line)."""
    total = 0
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    lines: Counter[str] = Counter()
    for raw in text.splitlines():
        stack, _, count = raw.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += n
        names = [_short(f) for f in frames]
        own[names[-1]] += n
        lines[frames[-1].strip()] += n
        for name in set(names):
            incl[name] += n
    return total, own, incl, lines


def render(path: Path, top: int) -> str:
    total, own, incl, lines = summarise(path.read_text(errors="replace"))
    if not total:
        return f"{path.name}: no samples"
    out = [f"{path.name}: {total} samples"]
    out.append("  self %  function")
    out += [f"  {100 * n / total:6.1f}  {name}" for name, n in own.most_common(top)]
    out.append("  total %  function")
    out += [f"  {100 * n / total:7.1f}  {name}" for name, n in incl.most_common(top)]
    out.append("  self %  line")
    out += [f"  {100 * n / total:6.1f}  {_short_line(name)}" for name, n in lines.most_common(top)]
    return "\n".join(out)


def _short_line(frame: str) -> str:
    match = FRAME.match(frame)
    if not match or not match.group("line"):
        return _short(frame)
    return f"{_short(frame)[:-1]}:{match.group('line')})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.files:
        print(render(path, args.top))
        print()


if __name__ == "__main__":
    main()
