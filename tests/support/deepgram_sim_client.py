"""A trio-websocket client for the Deepgram simulator as a test drives it: the key it serves
with, where it listens, and small readers (next message, messages until one matches, the close
a connection ended with)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from voxgate.simulate.deepgram import DeepgramSimulator

KEY = "test-deepgram-key-0123456789"
AUTH = [("Authorization", f"Token {KEY}")]


@dataclass
class Sim:
    sim: DeepgramSimulator
    port: int

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@asynccontextmanager
async def connect(
    s: Sim, path: str, query: str = "", *, headers: list[tuple[str, str]] | None = None, **kw: Any
) -> AsyncIterator[WebSocketConnection]:
    url = f"{s.url}{path}" + (f"?{query}" if query else "")
    async with open_websocket_url(
        url, extra_headers=AUTH if headers is None else headers, connect_timeout=2, **kw
    ) as ws:
        yield ws


async def recv(ws: WebSocketConnection) -> Any:
    """Next message: parsed JSON for text frames, raw bytes for binary ones."""
    msg = await ws.get_message()
    return orjson.loads(msg) if isinstance(msg, str) else msg


async def until(ws: WebSocketConnection, stop: Callable[[Any], bool]) -> list[Any]:
    """Messages up to and including the first one for which ``stop`` holds."""
    out: list[Any] = []
    while True:
        out.append(await recv(ws))
        if stop(out[-1]):
            return out


def typed(kind: str) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, dict) and m.get("type") == kind


def types(messages: list[Any]) -> list[str]:
    return [m["type"] if isinstance(m, dict) else "<binary>" for m in messages]


async def send_json(ws: WebSocketConnection, obj: Any) -> None:
    await ws.send_message(orjson.dumps(obj).decode())


async def closed_with(ws: WebSocketConnection) -> tuple[list[Any], int, str | None]:
    """Drain until the server closes; returns (messages, close code, reason)."""
    out: list[Any] = []
    try:
        while True:
            out.append(await recv(ws))
    except ConnectionClosed as exc:
        return out, exc.reason.code, exc.reason.reason


async def send_audio(ws: WebSocketConnection, audio: bytes, frame: int = 3200) -> None:
    for i in range(0, len(audio), frame):
        await ws.send_message(audio[i : i + frame])
