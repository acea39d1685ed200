"""The reference's synthetic `AgentAudioDone` (deepgram-passthrough §1.6, P13).

Until the first assistant `ConversationText` of a connection, upstream text messages are
inspected; if audio was already forwarded, one `{"type":"AgentAudioDone"}` is injected right
after that message. It lets the dg_react_agent component start its idle timer after audio
turns. Once seen, nothing more is inspected on the connection.
"""

from __future__ import annotations

from voxgate.workers.message_filter import MessageFilter

AGENT_AUDIO_DONE = b'{"type":"AgentAudioDone"}'
CONVERSATION_TEXT = MessageFilter("ConversationText")


class SyntheticAgentAudioDone:
    """An upstream observer for the splice engine."""

    def __init__(self) -> None:
        self.wants_text = True
        self.binary_forwarded = False

    def observe_binary(self) -> None:
        self.binary_forwarded = True

    def observe_text(self, payload: bytes) -> list[bytes]:
        message = CONVERSATION_TEXT(payload)
        if message is None or message.get("role") != "assistant":
            return []
        self.wants_text = False
        return [AGENT_AUDIO_DONE] if self.binary_forwarded else []
