"""What the splice's observers decode: only the JSON messages of the types they watch.

Observers (usage metering, the session policy, the synthetic AgentAudioDone) see every text
message of a passthrough session, so the filter rejects the others with a substring test
before any decoding. Its own module so that metering (which the supervisor imports for its
token kinds) does not pull in the splice.
"""

from __future__ import annotations

import orjson

__all__ = ["MessageFilter"]


class MessageFilter:
    """Picks the JSON objects of given `type`s out of observed text payloads. Observers see
    every text message, so a substring test on each quoted type name rejects the others
    before any decoding."""

    __slots__ = ("types", "markers")

    def __init__(self, *types: str) -> None:
        self.types = frozenset(types)
        self.markers = tuple(b'"%s"' % t.encode() for t in types)

    def __call__(self, payload: bytes) -> dict | None:
        if not any(marker in payload for marker in self.markers):
            return None
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        return message if isinstance(message, dict) and message.get("type") in self.types else None
