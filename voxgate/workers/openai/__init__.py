"""The `/openai` provider: a Deepgram Voice Agent client translated to OpenAI Realtime GA.

Modules, outside in: `routes` (paths), `session` (the I/O around the core), `translator` (the
sans-IO coordinator), then the parts it routes to -- `session_update` (Settings and Update*
messages -> `session.update`), `turns` (injected messages, the user's speech and
transcripts), `responses` and `function_calls` (the response lifecycle), `audio_flow` (commit
policy and output conversion), with `bounded` for their id maps -- all emitting through `actions` (the `Outbox`). The pure
mappers are `settings_map` (client -> upstream) and `upstream_map` (upstream -> client).

The path of a Settings, from the socket to the `session.update`:
1. `session.TranslatorSession._on_client_data` cuts the client's bytes into messages and feeds
   each text frame to `translator.Translator.client_message`.
2. `Translator._on_client_message` holds it in the `Backlog` until the upstream is open;
   `Translator._client_frame` parses the JSON and looks its `type` up in `client_handlers`.
3. `session_update.SessionUpdates.on_settings` answers a repeated Settings (R2, R3) and
   otherwise calls `settings_map.map_settings`, which maps the parts in order (audio formats,
   model, prompt and tools, turn detection and the `audio` object, think options, greeting)
   into a `SessionPlan`.
4. `SessionUpdates._apply` hands the formats to `audio_flow`; `SessionUpdates._send` pins
   the server's policy fields and puts the `session.update` in the `Outbox` as `SendUpstream`.
5. `TranslatorSession.perform` writes that action to the upstream socket.
The answer comes back the same way: `Translator.upstream_message` -> `upstream_handlers` ->
`Translator._up_session_updated` -> `SessionUpdates.updated` (`SettingsApplied`), then the
held messages and audio go upstream.
"""
