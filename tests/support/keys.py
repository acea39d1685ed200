"""The provider keys the tests give the gateway and the simulators (fake, but shaped like real
ones), in one place so a leak check and the upstream's auth check agree on the value."""

from __future__ import annotations

OPENAI_KEY = "sk-test-openai-key-0123456789abcdefXYZ"
DEEPGRAM_KEY = "test-key-at-least-40-characters-long-for-deepgram"
