"""Simulated upstreams (OpenAI Realtime, Deepgram) for tests, benchmarks and ``voxgate demo``.

Shared plumbing, one job per module: ``websocket`` (the server and ``SimConnection``),
``http`` (plain HTTP on the same port), ``record`` (what a connection saw), ``faults``
(``?sim_fault=``), ``driver`` (runs a sans-IO session over a connection) and ``audio``
(PCM16, G.711, the tone voice, energy VAD). The providers are the ``openai`` and
``deepgram`` packages.
"""
