"""A simulated Deepgram: Voice Agent, live transcription ("listen"), streaming TTS ("speak")
and Flux (v2 listen and speak).

voxgate's tests, benchmarks and ``voxgate demo`` need an upstream that speaks Deepgram's wire
protocol without keys or network, answers deterministically, can be told to misbehave, and
records what reached it. Message shapes follow Deepgram's published schemas (the Fern
definitions shipped in ``deepgram-sdk`` 7 and developers.deepgram.com); where the docs are
silent the choice is marked "simulator choice".

One module per job:

- ``server`` - ``DeepgramSimulator`` and ``run``: routes, authentication, recording;
- ``session`` - the sans-IO base every endpoint's session builds on, shared texts and helpers;
- ``agent`` - ``/v1/agent/converse``; ``listen`` - ``/v1/listen``; ``speak`` - ``/v1/speak``;
- ``flux`` - ``/v2/listen`` and ``/v2/speak``.

Audio (G.711, the tone voice, the energy VAD) comes from ``voxgate.simulate.audio``.

Per-connection knobs (query parameters, ignored by the protocol logic):

- ``sim_fault=...`` (see ``voxgate.simulate.faults``): ``refuse:<status>``, ``hang``,
  ``delay:<ms>`` happen at the handshake; after the 101 and the first server messages
  (Agent ``Welcome``, Speak ``Metadata``): ``close:<code>``, ``close_reason:<code>`` (reason
  text from ``sim_close_reason``, since the shared fault parser takes integer arguments
  only), ``drop`` (TCP closed, no close frame), ``garbage`` (one non-JSON text frame, then
  normal service), ``delay_updated:<ms>`` (Agent: ``SettingsApplied`` held back that long).
- ``sim_json_binary=1``: Agent ``ConversationText`` and ``FunctionCallRequest`` go out as
  JSON in BINARY frames, as real Deepgram occasionally does.
"""
