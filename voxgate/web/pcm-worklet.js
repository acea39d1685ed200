// AudioWorklet processors for the voxgate page: microphone capture to PCM16 at the rate the
// session declared, and gapless PCM16 playback that counts the samples it actually played.
// Both resample in the worklet so the AudioContext can run at the device's own rate (a
// context at another rate cannot take a microphone in every browser).

const FRAME_MS = 20;
const PREBUFFER_MS = 60;  // a drained player waits for this much (or this long) before playing

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.rate = options.processorOptions.rate;
    this.step = sampleRate / this.rate;           // input samples per output sample
    this.frameLength = Math.round(this.rate * FRAME_MS / 1000);
    this.frame = new Int16Array(this.frameLength);
    this.fill = 0;
    this.pos = 0;                                 // position of the next output sample, in input samples
    this.acc = 0;                                 // box filter over one output period (anti-aliasing)
    this.count = 0;
    this.energy = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      this.acc += channel[i];
      this.count += 1;
      this.pos -= 1;
      if (this.pos <= 0) {
        const v = Math.max(-1, Math.min(1, this.acc / this.count));
        this.acc = 0;
        this.count = 0;
        this.pos += this.step;
        this.frame[this.fill++] = v < 0 ? v * 0x8000 : v * 0x7fff;
        this.energy += v * v;
        if (this.fill === this.frameLength) {
          const rms = Math.sqrt(this.energy / this.fill);
          this.port.postMessage({ pcm: this.frame.buffer, rms }, [this.frame.buffer]);
          this.frame = new Int16Array(this.frameLength);  // the old buffer was transferred
          this.fill = 0;
          this.energy = 0;
        }
      }
    }
    return true;
  }
}

class PcmPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.step = options.processorOptions.rate / sampleRate;  // source samples per output sample
    this.queue = [];        // Float32Array chunks at the source rate
    this.offset = 0;        // next unread index in queue[0]
    this.s0 = 0;
    this.s1 = 0;
    this.t = 0;
    this.primed = false;    // s1 holds a real sample
    this.prebuffer = Math.round(options.processorOptions.rate * PREBUFFER_MS / 1000);
    this.waitingSince = null;  // first unplayed sample's arrival while drained
    this.runs = 0;          // continuous stretches of playback: one per reply when gapless
    this.played = 0;        // source samples that reached the output
    this.reported = 0;
    this.lastReport = 0;
    this.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.clear) {
        this.queue = [];
        this.offset = 0;
        this.primed = false;
        this.waitingSince = null;
        return;
      }
      const pcm = new Int16Array(msg.pcm);
      const f = new Float32Array(pcm.length);
      for (let i = 0; i < pcm.length; i++) f[i] = pcm[i] / 0x8000;
      this.queue.push(f);
      if (!this.primed && this.waitingSince === null) this.waitingSince = currentTime;
    };
  }

  next() {
    while (this.queue.length && this.offset >= this.queue[0].length) {
      this.queue.shift();
      this.offset = 0;
    }
    if (!this.queue.length) return null;
    this.played += 1;
    return this.queue[0][this.offset++];
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    for (let i = 0; i < out.length; i++) {
      if (!this.primed) {
        // Jitter buffer: a new stretch starts with PREBUFFER_MS queued (or after that long),
        // so network jitter inside a reply does not cut it into pieces.
        const waited = this.waitingSince !== null && currentTime - this.waitingSince >= PREBUFFER_MS / 1000;
        if (this.buffered() < this.prebuffer && !waited) { out[i] = 0; continue; }
        const s = this.next();
        if (s === null) { out[i] = 0; continue; }
        this.s0 = this.s1 = s;
        this.t = 0;
        this.primed = true;
        this.waitingSince = null;
        this.runs += 1;
      }
      out[i] = this.s0 + (this.s1 - this.s0) * this.t;
      this.t += this.step;
      while (this.t >= 1) {
        const s = this.next();
        if (s === null) { this.primed = false; this.t = 0; this.waitingSince = null; break; }
        this.t -= 1;
        this.s0 = this.s1;
        this.s1 = s;
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    // Report at most every 50 ms, and always once the queue has drained (the last count).
    const drained = !this.primed && this.queue.length === 0;
    if (this.played !== this.reported && (drained || currentTime - this.lastReport >= 0.05)) {
      this.reported = this.played;
      this.lastReport = currentTime;
      this.port.postMessage({ played: this.played, runs: this.runs, buffered: this.buffered() });
    }
    return true;
  }

  buffered() {
    let n = -this.offset;
    for (const chunk of this.queue) n += chunk.length;
    return Math.max(0, n);
  }
}

registerProcessor("pcm-capture", PcmCapture);
registerProcessor("pcm-player", PcmPlayer);
