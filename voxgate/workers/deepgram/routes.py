"""Route table of the Deepgram worker: agent, listen and speak (v1 and v2) are all passthrough
(its twin is openai/routes.py)."""

from __future__ import annotations

from voxgate.config import DEEPGRAM
from voxgate.routes import kinds
from voxgate.workers.deepgram.upstream import profile_for
from voxgate.workers.passthrough import run_passthrough
from voxgate.workers.runtime import Handler, Session


async def handle(session: Session) -> None:
    await run_passthrough(session, profile_for(session))


HANDLERS: dict[str, Handler] = {kind: handle for kind in kinds(DEEPGRAM)}
