"""The one home of the close-code mapping and close-reason sanitizing shared by both relay
engines (deepgram-passthrough.md §1.7 = openai-translator.md §1.5, P14/P15)."""

from __future__ import annotations

__all__ = ["map_close_code", "safe_reason", "MAX_REASON_BYTES"]

MAX_REASON_BYTES = 123  # 125-byte control payload minus the 2-byte code

_PASS = frozenset([*range(1000, 1004), *range(1007, 1015), *range(3000, 5000)])


def map_close_code(code: int | None, *, toward: str) -> int:
    """Code to send on the other leg for `code` received on one leg.

    `toward` is "client" or "upstream". Codes that cannot be sent on the wire (1005 no
    status, 1006 abnormal, 1015 TLS, reserved or out of range) are replaced: 1005/None by
    1000; the rest by 1011 toward the client (something went wrong upstream) and by 1000
    toward the upstream (the gateway just ends the session)."""
    if toward not in ("client", "upstream"):
        raise ValueError("toward must be 'client' or 'upstream'")
    if code in _PASS:
        return code  # type: ignore[return-value]
    if code is None or code == 1005:
        return 1000
    return 1011 if toward == "client" else 1000


def safe_reason(reason: str | bytes | None, default: str = "") -> str:
    """A close reason that can always be sent: valid UTF-8, at most 123 bytes, cut on a
    character boundary. Empty or missing reasons become `default` (limited the same way)."""
    if reason is None or len(reason) == 0:
        if not default:
            return ""
        reason = default
    if isinstance(reason, str):
        raw = reason.encode("utf-8", "replace")  # lone surrogates -> '?'
    else:
        raw = bytes(reason).decode("utf-8", "replace").encode("utf-8")
    if len(raw) <= MAX_REASON_BYTES:
        return raw.decode("utf-8")
    # Cutting may split a multi-byte sequence at the end; "ignore" drops that partial char.
    return raw[:MAX_REASON_BYTES].decode("utf-8", "ignore")
