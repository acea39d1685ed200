"""Masking the provider key in what an upstream sends back to a client.

The gateway sends its provider key upstream in `Authorization`. An upstream that echoes it
(in a text frame or a close reason) must not get it, or any 6-character piece of it, to the
client. Text payloads are searched as bytes, nothing is decoded: one Aho-Corasick DFA over
every 6-byte piece of the key, a few nanoseconds per byte. A match is overwritten with `*`
in place, so lengths, frame headers and UTF-8 validity stay as they were.

A text message may reach the gateway in several reads or fragments. `KeyScrubber.mask`
takes the last `PIECE - 1` bytes already forwarded as context: a piece that straddles the
boundary is masked from the boundary on, so at most `PIECE - 1` key bytes ever stand
together on the client's wire.
"""

from __future__ import annotations

import functools
import re

import ahocorasick_rs

__all__ = ["PIECE", "KeyScrubber", "generic_close_reason"]

PIECE = 6  # the shortest run of key bytes that must never reach a client
MASK = ord("*")


class KeyScrubber:
    """Finds and masks pieces of one secret in byte strings."""

    __slots__ = ("_dfa",)

    def __init__(self, secret: str) -> None:
        raw = secret.encode()
        pieces = {raw[i : i + PIECE] for i in range(len(raw) - PIECE + 1)} or {raw}
        self._dfa = ahocorasick_rs.BytesAhoCorasick(
            sorted(pieces), implementation=ahocorasick_rs.Implementation.DFA
        )

    @staticmethod
    @functools.cache
    def for_secret(secret: str | None) -> KeyScrubber | None:
        """One scrubber per key and process (built once: the DFA costs ~1 ms)."""
        return KeyScrubber(secret) if secret else None

    def mask(self, data: bytes | bytearray | memoryview, context: bytes = b"") -> bytearray | None:
        """`data` with every key piece overwritten, or None when it holds none (the usual
        case: no copy is made). `context` is what was forwarded just before `data` in the
        same message; matches reaching into it are masked from `data`'s start."""
        hay = context + data if context else data
        found = self._dfa.find_matches_as_indexes(hay)
        if not found:
            return None
        out = bytearray(data)
        skip = len(context)
        for _, start, end in found:
            start = max(start - skip, 0)
            out[start : end - skip] = bytes((MASK,)) * (end - skip - start)
        return out

    def contains(self, data: bytes | bytearray | memoryview) -> bool:
        return bool(self._dfa.find_matches_as_indexes(data))


# Deepgram names its close causes `NET-0001`, `DATA-0000`, … (or links them as `…/net0001`).
_DEEPGRAM_ERROR_CODE = re.compile(rb"(?<![A-Za-z0-9])([A-Za-z]{3,4})-?(\d{4})(?![A-Za-z0-9])")
_GENERIC_REASONS = {
    1000: "",
    1001: "upstream going away",
    1008: "upstream policy violation",
    1009: "message too large",
    1011: "upstream error",
    1012: "upstream restarting",
    1013: "upstream busy",
}


def generic_close_reason(code: int, upstream_reason: bytes, scrubber: KeyScrubber | None) -> str:
    """The reason the client gets when the upstream closes: never the upstream's own text
    (which may hold internals or the key), except a Deepgram error code such as `NET-0001`
    named in it, which clients act on."""
    match = _DEEPGRAM_ERROR_CODE.search(upstream_reason)
    if match and not (scrubber is not None and scrubber.contains(match.group())):
        return f"{match.group(1).decode().upper()}-{match.group(2).decode()}"
    return _GENERIC_REASONS.get(code, "upstream closed" if code < 4000 else "upstream error")
