// The official Node `openai` SDK's Realtime WebSocket client through voxgate, configured
// with nothing but the gateway's base URL (the README's example). The SDK always turns the
// base URL into wss://, so the gateway must serve TLS (--tls-cert/--tls-key); trust a
// private CA with NODE_EXTRA_CA_CERTS. Prints one JSON line per server event type; exit 0
// after response.done, 1 on an error or after 10 s.
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";

const client = new OpenAI({ apiKey: "not-used", baseURL: process.env.VOXGATE_BASE_URL });
const rt = new OpenAIRealtimeWS({ model: "gpt-realtime" }, client);
const timer = setTimeout(() => { console.log(JSON.stringify({ error: "timeout" })); process.exit(1); }, 10000);

rt.socket.on("open", () => console.log(JSON.stringify({ url: rt.url.toString() })));
rt.on("error", (err) => { console.log(JSON.stringify({ error: String(err.message || err) })); process.exit(1); });
rt.on("session.created", () => {
  console.log(JSON.stringify({ type: "session.created" }));
  rt.send({
    type: "conversation.item.create",
    item: { type: "message", role: "user", content: [{ type: "input_text", text: "Hello from Node" }] },
  });
  rt.send({ type: "response.create" });
});
rt.on("response.done", (event) => {
  console.log(JSON.stringify({ type: "response.done", status: event.response.status }));
  clearTimeout(timer);
  rt.close();
});
rt.socket.on("close", () => process.exit(0));
