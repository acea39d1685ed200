"""The official `openai` Python SDK as a Realtime client: one text session it runs from
session.update to response.done (asyncio; callers run it in a thread with its own loop)."""

from __future__ import annotations

from openai import AsyncOpenAI

DUMMY = "client-side-dummy"  # the SDK insists on a key; the gateway must ignore and never log it


async def sdk_session(base_url: str, model: str) -> list:
    """session.update -> session.updated; a user item; response.create -> response.done."""
    client = AsyncOpenAI(api_key=DUMMY, websocket_base_url=base_url)
    events = []
    async with client.realtime.connect(model=model) as conn:
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"],
                                           "instructions": "Be brief."})
        async for event in conn:
            events.append(event)
            if event.type == "session.updated":
                await conn.conversation.item.create(item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello sdk"}]})
                await conn.response.create()
            elif event.type in ("response.done", "error"):
                break
    return events
