"""The gateway's admin API as the tests call it: the admin token they configure, one request
helper that never raises on a status, and a bounded poll of the session registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import trio

ADMIN = "Qm7Vt2Lx9w-admin"


async def admin(gw: Any, method: str, path: str, token: str | None = ADMIN, body: bytes | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    status, _, data = await trio.to_thread.run_sync(lambda: gw.http(path, method=method, headers=headers, body=body))
    try:
        return status, json.loads(data)
    except ValueError:
        return status, {"raw": data.decode("latin-1")}


async def wait_sessions(
    gw: Any, predicate: Callable[[list[dict]], bool], query: str = "", timeout: float = 5.0
) -> list[dict]:
    """Poll GET /v1/sessions until `predicate(sessions)` holds (bounded)."""
    sessions: list[dict] = []
    with trio.fail_after(timeout):
        while True:
            status, body = await admin(gw, "GET", "/v1/sessions" + query)
            assert status == 200, body
            sessions = body["sessions"]
            if predicate(sessions):
                return sessions
            await trio.sleep(0.05)
