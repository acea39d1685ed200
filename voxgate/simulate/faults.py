"""Per-connection misbehaviour of the simulators, picked with ``?sim_fault=kind[:arg]``.

Tests need an upstream that refuses, hangs, stalls, closes, drops or talks garbage on
demand, one connection at a time, so the fault rides in the query string.

Known kinds (``FAULT_KINDS``: kind -> whether it takes an integer argument): ``refuse:<status>``,
``hang``, ``delay:<ms>``, ``close:<code>``, ``drop``, ``garbage``, ``delay_updated:<ms>``; a
simulator may pass its own mapping to extend it. ``HANDSHAKE_FAULTS`` are applied by
``voxgate.simulate.websocket.serve_websocket`` before the handler runs (``refuse`` answers that
HTTP status with a JSON body and no 101, ``hang`` reads the request and never answers,
``delay`` sleeps before the handler); every other fault is left to the simulator
(``ConnectionRecord.fault``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FAULT_KINDS", "FAULT_PARAM", "HANDSHAKE_FAULTS", "Fault", "parse_fault"]

FAULT_PARAM = "sim_fault"

FAULT_KINDS: dict[str, bool] = {
    "refuse": True,
    "hang": False,
    "delay": True,
    "close": True,
    "drop": False,
    "garbage": False,
    "delay_updated": True,
}

HANDSHAKE_FAULTS = frozenset({"refuse", "hang", "delay"})


@dataclass(frozen=True)
class Fault:
    """One way a simulated connection misbehaves, parsed from ``?sim_fault=kind[:arg]``."""

    kind: str
    arg: int | None = None


def parse_fault(spec: str | None, kinds: Mapping[str, bool] = FAULT_KINDS) -> Fault | None:
    """Parse ``kind`` or ``kind:<int>``; raise ``ValueError`` for anything unknown."""
    if not spec:
        return None
    kind, sep, raw = spec.partition(":")
    kind = kind.strip()
    if kind not in kinds:
        raise ValueError(f"unknown fault {kind!r}")
    if not kinds[kind]:
        if sep:
            raise ValueError(f"fault {kind!r} takes no argument")
        return Fault(kind)
    try:
        arg = int(raw.strip())
    except ValueError:
        raise ValueError(f"fault {kind!r} needs an integer argument") from None
    if arg < 0:
        raise ValueError(f"fault {kind!r} needs a non-negative argument")
    return Fault(kind, arg)


