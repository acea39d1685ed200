"""Simulated OpenAI Realtime (GA): a WebSocket server (and WebRTC call set-up) in place of
``wss://api.openai.com/v1/realtime``.

Used by voxgate's tests, benchmarks and ``voxgate demo`` so the gateway can be exercised with
no key and no network. It speaks the GA event shapes (``session.*``, ``conversation.item.*``,
``response.*``, ``input_audio_buffer.*``, ``rate_limits.updated``, ``error``) closely enough
for the official ``openai`` SDK to run a session against it, with deterministic content so
tests can assert it: replies say ``You said: <last user text>``, audio replies carry a 300 ms
tone, a user text naming a configured tool yields a function call, and server VAD is
energy based.

One module per job, in the order a client event meets them:

- ``server`` - ``OpenAISimulator`` and ``run``: path and key checks, recording, faults;
- ``calls`` - WebRTC call set-up (``POST /v1/realtime/calls``, SDP answer);
- ``session`` - ``RealtimeSession``, the sans-IO protocol state of one connection, driven by
  ``voxgate.simulate.driver.run_session``; its ``outbox`` orders what goes out;
- ``protocol`` - ids, server events and ``Invalid`` (the ``error`` event's cause);
- ``session_config`` - session defaults and ``session.update`` validation;
- ``items`` - conversation items; ``vad`` - server VAD; ``model`` - what a reply says;
- ``responses`` - what a response streams and reports.

Audio (G.711, the tone voice, RMS energy) comes from ``voxgate.simulate.audio``.
"""
