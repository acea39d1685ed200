// What the page says on each path, with no DOM and no audio: URLs, Settings, and how a
// server message becomes a transcript line.

export const PATHS = ["/openai", "/deepgram-proxy", "/deepgram-proxy/v1/listen"];
export const OUTPUT_RATE = 24000;

export function isListen(path) {
  return path.endsWith("/v1/listen");
}

/** The WebSocket URL of a session on this page's own gateway. */
export function sessionUrl(loc, path, { rate, token }) {
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  const query = new URLSearchParams();
  if (isListen(path)) {
    query.set("encoding", "linear16");
    query.set("sample_rate", String(rate));
    query.set("channels", "1");
    query.set("interim_results", "true");
  }
  // Browsers cannot set headers on a WebSocket: the client token travels as ?token=, which
  // the gateway checks and never forwards upstream.
  if (token) query.set("token", token);
  const qs = query.toString();
  return `${scheme}//${loc.host}${path}${qs ? "?" + qs : ""}`;
}

/** Voice Agent V1 Settings: linear16 microphone at `rate`, linear16 24 kHz agent audio. */
export function agentSettings(rate) {
  return {
    type: "Settings",
    audio: {
      input: { encoding: "linear16", sample_rate: rate },
      output: { encoding: "linear16", sample_rate: OUTPUT_RATE, container: "none" },
    },
    agent: {
      language: "en",
      listen: { provider: { type: "deepgram", model: "nova-3" } },
      think: {
        provider: { type: "open_ai", model: "gpt-4o-mini" },
        prompt: "You are a helpful voice assistant reached through voxgate. Keep answers short.",
      },
      speak: { provider: { type: "deepgram", model: "aura-2-thalia-en" } },
    },
  };
}

/** A transcript line for a server message, or null: {role, text, final}. */
export function transcriptLine(msg) {
  if (msg.type === "ConversationText" && (msg.role === "user" || msg.role === "assistant")) {
    return { role: msg.role, text: String(msg.content ?? ""), final: true };
  }
  if (msg.type === "Transcript" && msg.is_final) {
    // /openai: what the user said, from OpenAI's input transcription
    const text = String(msg.transcript ?? "");
    return text ? { role: "user", text, final: true } : null;
  }
  if (msg.type === "Results") {
    const alt = msg.channel && msg.channel.alternatives && msg.channel.alternatives[0];
    const text = alt ? String(alt.transcript ?? "") : "";
    if (!text) return null;
    return { role: "user", text, final: Boolean(msg.is_final) };
  }
  return null;
}

/** A short human description of an Error / Warning message. */
export function problemText(msg) {
  const code = msg.code || msg.err_code || msg.variant || "";
  const text = msg.description || msg.message || msg.err_msg || "";
  return `${msg.type}${code ? " " + code : ""}: ${text}`.trim();
}
