"""Route table of the Deepgram worker: agent, listen and speak are all passthrough."""

from __future__ import annotations

from voxgate.workers.deepgram.service import profile_for
from voxgate.workers.passthrough import run_passthrough
from voxgate.workers.runtime import Handler, Session


async def handle(session: Session) -> None:
    await run_passthrough(session, profile_for(session))


HANDLERS: dict[str, Handler] = {"agent": handle, "listen": handle, "speak": handle}
