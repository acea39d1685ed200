"""Route table of the OpenAI worker: the translator, the raw Realtime relay and the WebRTC call
set-up."""

from __future__ import annotations

from voxgate.workers.openai import upstream
from voxgate.workers.passthrough import run_passthrough
from voxgate.workers.runtime import Handler, Session


async def handle_realtime(session: Session) -> None:
    await run_passthrough(session, upstream.profile_for(session))


async def handle_translate(session: Session) -> None:
    from voxgate.workers.openai.session import run_translator

    await run_translator(session)


async def handle_calls(session: Session) -> None:
    from voxgate.workers.openai.calls import handle_calls as set_up

    await set_up(session)


handle_calls.plain_http = True  # type: ignore[attr-defined]  # a POST, not a WebSocket (runtime)

HANDLERS: dict[str, Handler] = {
    "realtime": handle_realtime,
    "translate": handle_translate,
    "calls": handle_calls,
}
