// The voxgate page: one session at a time through the gateway that served this page.
// Query parameters script a session for links and tests, e.g.
//   /?path=/openai&autoconnect=1&say=Hello
// path, autoconnect=1, say=<text>, token=<client token>, rate=16000|24000|48000,
// mic=0 (no microphone), keepalive=<seconds, 0 = off>, background=keep|pause
// (pause: stop sending audio while the page is hidden, as mobile browsers do),
// gate=1 (send microphone audio only around speech), reconnect=0 (no reconnect after a
// dropped connection).

import { OUTPUT_RATE, PATHS, agentSettings, isListen, problemText, sessionUrl, transcriptLine } from "./protocol.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const SPEECH_RMS = 0.02;          // client-side voice activity, for the delay measurement
const SPEECH_END_MS = 300;        // quiet this long after voice = end of user speech
const GATE_HANGOVER_MS = 1000;    // gate=1 keeps sending this long after speech
const RECONNECT_MAX = 8;

const options = {
  keepalive: numberParam("keepalive", 5),
  background: params.get("background") === "pause" ? "pause" : "keep",
  gate: params.get("gate") === "1",
  reconnect: params.get("reconnect") !== "0",
};

function numberParam(name, fallback) {
  const value = Number(params.get(name));
  return params.has(name) && Number.isFinite(value) && value >= 0 ? value : fallback;
}

// ---------------------------------------------------------------------------------------
// Display

function log(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toISOString().slice(11, 23)} ${text}`;
  const box = $("log");
  box.append(li);
  while (box.children.length > 300) box.firstChild.remove();
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function setState(state, code, reason) {
  $("state").dataset.state = state;
  $("state-label").textContent = state;
  $("close-code").dataset.code = code ?? "";
  $("close-code").textContent = code ? String(code) : "";
  $("close-reason").textContent = reason || "";
  const live = state === "connecting" || state === "connected";
  $("disconnect").disabled = !live;
  const agentReady = state === "connected" && session && session.ready && !isListen(session.path);
  $("message").disabled = $("send").disabled = !agentReady;
}

let pending = null;  // the interim (not final) transcript line, listen path

function addLine({ role, text, final }) {
  const list = $("transcript");
  const last = list.lastElementChild;
  if (final && !pending && last && last.dataset.role === role && last.textContent === text) return;
  let li = pending;
  if (!li) {
    li = document.createElement("li");
    list.append(li);
  }
  li.dataset.role = role;
  li.dataset.final = String(final);
  li.textContent = text;
  pending = final ? null : li;
  list.scrollTop = list.scrollHeight;
}

function setCount(id, value) {
  $(id).dataset.samples = String(value);
  $(id).textContent = String(value);
}

// ---------------------------------------------------------------------------------------
// Audio: one AudioContext at the device rate, a capture worklet and a player worklet.

const audio = { ctx: null, player: null, mic: null, stream: null, played: 0, received: 0, sent: 0 };

async function ensureAudio() {
  if (!audio.ctx) {
    audio.ctx = new AudioContext({ latencyHint: "interactive" });
    await audio.ctx.audioWorklet.addModule("/demo/pcm-worklet.js");
    audio.player = new AudioWorkletNode(audio.ctx, "pcm-player", {
      numberOfInputs: 0, outputChannelCount: [1], processorOptions: { rate: OUTPUT_RATE },
    });
    audio.player.port.onmessage = (event) => {
      audio.played = event.data.played;
      setCount("played", audio.played);
      $("played").dataset.runs = String(event.data.runs);
    };
    audio.player.connect(audio.ctx.destination);
  }
  if (audio.ctx.state !== "running") {
    audio.ctx.resume().catch(() => {});
    if (audio.ctx.state !== "running") notice("Click anywhere on the page to let it play audio.");
  }
}

document.addEventListener("click", () => {
  if (audio.ctx && audio.ctx.state !== "running") audio.ctx.resume().then(() => notice(""));
});

async function startMic(rate) {
  stopMic();
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    notice("This page needs https (or localhost) to use the microphone.");
    return;
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const source = audio.ctx.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(audio.ctx, "pcm-capture", {
    numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { rate },
  });
  const mute = audio.ctx.createGain();
  mute.gain.value = 0;  // keep the node pulled by the graph without playing the mic back
  source.connect(node).connect(mute).connect(audio.ctx.destination);
  node.port.onmessage = (event) => session && session.micFrame(event.data.pcm, event.data.rms);
  audio.stream = stream;
  audio.mic = { source, node, mute };
  micState("on");
}

function stopMic() {
  if (audio.mic) {
    audio.mic.node.port.onmessage = null;
    audio.mic.source.disconnect();
    audio.mic.node.disconnect();
    audio.mic = null;
  }
  if (audio.stream) {
    for (const track of audio.stream.getTracks()) track.stop();
    audio.stream = null;
  }
  micState("off");
}

/** Drop agent audio not yet played (barge-in, or the session is over). */
function clearPlayback() {
  if (audio.player) audio.player.port.postMessage({ clear: true });
}

function micState(state) {
  $("mic-state").dataset.state = state;
  $("mic-state").textContent = state;
}

// ---------------------------------------------------------------------------------------
// A session

let session = null;
let reconnects = 0;
let reconnectTimer = null;

class Session {
  constructor(path, token, rate) {
    this.path = path;
    this.rate = rate;
    this.ready = false;            // Settings applied (agent) / open (listen)
    this.opened = false;
    this.userClosed = false;
    this.lastSent = performance.now();
    this.speaking = false;
    this.lastVoice = -Infinity;  // no voice yet (gate=1 sends nothing before the first)
    this.turnStart = null;         // end of user speech or a typed message, awaiting agent audio
    this.replying = false;         // agent audio arriving: voice now is likely its echo
    this.queued = [];
    this.ws = new WebSocket(sessionUrl(location, path, { rate, token }));
    this.ws.binaryType = "arraybuffer";
    this.ws.onopen = () => this.onOpen();
    this.ws.onmessage = (event) => this.onMessage(event.data);
    this.ws.onclose = (event) => this.onClose(event);
    this.keepalive = options.keepalive > 0
      ? setInterval(() => this.maybeKeepAlive(), Math.min(1000, options.keepalive * 500)) : null;
    setState("connecting");
    log(`connecting to ${path}`);
  }

  get live() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  sendJson(message) {
    if (!this.live) return;
    this.ws.send(JSON.stringify(message));
    this.lastSent = performance.now();
    if (message.type !== "KeepAlive") log(`-> ${message.type}`);
  }

  maybeKeepAlive() {
    if (this.live && performance.now() - this.lastSent >= options.keepalive * 1000) {
      this.sendJson({ type: "KeepAlive" });
    }
  }

  onOpen() {
    this.opened = true;
    reconnects = 0;
    setState("connected");
    log("open");
    if (isListen(this.path)) {
      this.becomeReady();
    } else {
      this.sendJson(agentSettings(this.rate));
    }
  }

  becomeReady() {
    this.ready = true;
    setState("connected");
    for (const text of this.queued.splice(0)) this.say(text);
  }

  say(text) {
    if (!this.ready) {
      this.queued.push(text);
      return;
    }
    this.sendJson({ type: "InjectUserMessage", content: text });
    this.turnStart = performance.now();
  }

  micFrame(buffer, rms) {
    const now = performance.now();
    $("mic-level").value = Math.min(1, rms * 4);
    if (rms > SPEECH_RMS) {
      this.speaking = true;
      this.lastVoice = now;
      // the last voiced frame before the reply is the end of speech (not the agent's echo)
      if (!this.replying) this.turnStart = now;
    } else if (this.speaking && now - this.lastVoice > SPEECH_END_MS) {
      this.speaking = false;
      log("end of user speech");
    }
    if (!this.ready || !this.live) return;
    if (options.background === "pause" && document.visibilityState === "hidden") return;
    if (options.gate && now - this.lastVoice > GATE_HANGOVER_MS) return;
    this.ws.send(buffer);
    this.lastSent = now;
    audio.sent += buffer.byteLength / 2;
    setCount("sent", audio.sent);
  }

  onMessage(data) {
    if (data instanceof ArrayBuffer) {
      this.onAudio(data);
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      log("<- text that is not JSON");
      return;
    }
    if (!msg || typeof msg.type !== "string") return;
    if (msg.type !== "Results") log(`<- ${msg.type}`);
    const line = transcriptLine(msg);
    if (line) addLine(line);
    if (msg.type === "SettingsApplied") this.becomeReady();
    if (msg.type === "AgentAudioDone") this.replying = false;
    if (msg.type === "UserStartedSpeaking") {
      this.replying = false;  // barge-in: the user really is talking
      clearPlayback();
    }
    if (msg.type === "Error" || msg.type === "Warning") notice(problemText(msg));
  }

  onAudio(buffer) {
    if (buffer.byteLength < 2) return;
    if (this.turnStart !== null) {
      const ms = Math.round(performance.now() - this.turnStart);
      $("latency").dataset.ms = String(ms);
      $("latency").textContent = `${ms} ms`;
      this.turnStart = null;
    }
    this.replying = true;
    const pcm = buffer.byteLength % 2 ? buffer.slice(0, buffer.byteLength - 1) : buffer;
    audio.received += pcm.byteLength / 2;
    setCount("received", audio.received);
    if (audio.player) audio.player.port.postMessage({ pcm }, [pcm]);
  }

  onClose(event) {
    if (this.keepalive) clearInterval(this.keepalive);
    const reason = event.reason || (this.opened ? "" : "refused or unreachable");
    log(`closed ${event.code} ${reason}`);
    if (session !== this) return;  // replaced by a newer session already
    session = null;
    this.ready = false;
    stopMic();
    clearPlayback();
    setState("closed", event.code, reason);
    if (!this.opened) explainRefusal();
    const dropped = this.opened && !this.userClosed && event.code !== 1000;
    if (dropped && options.reconnect) scheduleReconnect(this.path);
  }

  /** The browser says the network is gone: the socket is as good as dead (1006, abnormal
   * closure) even while it still looks open; release it and reconnect once back online. */
  lost(reason) {
    this.userClosed = true;
    if (this.keepalive) clearInterval(this.keepalive);
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, reason);
    session = null;
    stopMic();
    clearPlayback();
    setState("closed", 1006, reason);
    log(`closed 1006 ${reason}`);
    if (this.opened && options.reconnect) scheduleReconnect(this.path);
  }

  close() {
    this.userClosed = true;
    if (this.keepalive) clearInterval(this.keepalive);
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client closed");
  }
}

/** A refused upgrade reaches scripts as close 1006 with no reason; the gateway that served
 * this page remembers why it refused this client, so ask it. */
async function explainRefusal() {
  try {
    const answer = await (await fetch("/demo/refusal", { cache: "no-store" })).json();
    if (answer.status && !session) {
      const why = `refused: HTTP ${answer.status} ${answer.error || ""}: ${answer.message || ""}`;
      setState("closed", 1006, why);
      notice(why);
      log(why);
    }
  } catch {
    // the gateway is unreachable: "refused or unreachable" stays
  }
}

function scheduleReconnect(path) {
  if (reconnects >= RECONNECT_MAX) return;
  const delay = Math.min(8000, 250 * 2 ** reconnects);
  reconnects += 1;
  const attempt = () => {
    reconnectTimer = null;
    if (session) return;
    if (!navigator.onLine) {
      log("offline: reconnecting when the network returns");
      window.addEventListener("online", () => connect(path), { once: true });
      return;
    }
    connect(path);
  };
  log(`reconnecting in ${delay} ms`);
  reconnectTimer = setTimeout(attempt, delay);
}

let connectSeq = 0;  // a Disconnect (or a newer Connect) while audio starts cancels the connect

async function connect(path = $("path").value, say = []) {
  const mine = ++connectSeq;
  if (reconnectTimer) {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
  }
  if (session) session.close();
  session = null;
  const rate = Number($("rate").value);
  // The player exists before the socket opens, so the first reply is never lost.
  try {
    await ensureAudio();
  } catch (err) {
    notice(`Audio unavailable: ${err.message || err}`);
  }
  if (mine !== connectSeq) return;
  if (session) session.close();
  const current = new Session(path, $("token").value.trim(), rate);
  session = current;
  for (const text of say) current.say(text);
  if (!$("mic").checked || !audio.ctx) return;
  try {
    await startMic(rate);
  } catch (err) {
    notice(`Microphone unavailable: ${err.message || err}`);
    log(`microphone: ${err.name || err}`);
  }
  if (session !== current) stopMic();
}

function disconnect() {
  connectSeq += 1;
  if (reconnectTimer) {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
  }
  if (session) {
    session.close();
    // The close handshake finishes in the background; the page is done with this session.
    const closing = session;
    session = null;
    stopMic();
    clearPlayback();
    setState("closed", 1000, "client closed");
    log("disconnected");
    closing.ready = false;
  }
}

// ---------------------------------------------------------------------------------------
// Wiring

function init() {
  const path = params.get("path");
  if (path && PATHS.includes(path)) $("path").value = path;
  if (params.has("token")) $("token").value = params.get("token");
  if (["16000", "24000", "48000"].includes(params.get("rate"))) $("rate").value = params.get("rate");
  if (params.get("mic") === "0") $("mic").checked = false;
  setState("idle");
  $("connect").onclick = () => connect();
  $("disconnect").onclick = () => disconnect();
  $("typed").onsubmit = (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (text && session) {
      session.say(text);
      $("message").value = "";
    }
  };
  document.addEventListener("visibilitychange", () => log(`page ${document.visibilityState}`));
  window.addEventListener("offline", () => {
    log("network offline");
    if (session) session.lost("network offline");
  });
  window.addEventListener("online", () => log("network online"));
  // A refresh or a closed tab ends the session at once instead of leaving it to a timeout.
  window.addEventListener("pagehide", () => session && session.close());
  if (params.get("autoconnect") === "1") {
    connect(undefined, params.get("say") ? [params.get("say")] : []);
  }
}

init();
