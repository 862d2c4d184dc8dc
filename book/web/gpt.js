// A GPT in the browser: the forward pass of minigpt_lib's GPT (the cpu preset: rotary positions,
// sliding-window attention, no biases, tied embeddings), reading the weights file that
// `python -m minigpt_lib export-web` writes. Names follow minigpt_lib/model.py; one function per idea.
// The arithmetic is JavaScript's float64 on float32 weights, so the logits match PyTorch's to about 1e-5.
"use strict";
const MiniGPT = (() => {
  // --- The weights file: safetensors bytes --------------------------------------------------------
  // [header length: 8 bytes, little-endian] [JSON header: name -> dtype, shape, byte range] [tensors]
  function fromBase64(text) {
    const binary = atob(text), bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }

  function halfToFloat(h) { // float16 (1 sign bit, 5 exponent bits, 10 fraction bits) -> number
    const sign = h & 0x8000 ? -1 : 1, exponent = (h >> 10) & 0x1f, fraction = h & 0x3ff;
    if (exponent === 0) return sign * fraction * 2 ** -24; // subnormal
    if (exponent === 31) return fraction ? NaN : sign * Infinity;
    return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }

  const HALF_TO_FLOAT = Float32Array.from({ length: 65536 }, (_, h) => halfToFloat(h)); // every float16, once

  function readSafetensors(bytes) {
    const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
    const tensors = {};
    for (const [name, info] of Object.entries(header)) {
      if (name === "__metadata__") continue;
      const [begin, end] = info.data_offsets.map((offset) => 8 + headerLength + offset);
      const raw = bytes.slice(begin, end).buffer; // a copy, aligned for the typed arrays below
      if (info.dtype === "F16") {
        const halves = new Uint16Array(raw), values = (tensors[name] = new Float32Array(halves.length));
        for (let i = 0; i < halves.length; i++) values[i] = HALF_TO_FLOAT[halves[i]];
      } else tensors[name] = new Float32Array(raw);
    }
    return { tensors, metadata: header.__metadata__ };
  }

  // --- The pieces of a transformer block ----------------------------------------------------------
  function linear(weight, x, outFeatures) { // nn.Linear without bias: weight is (out, in), row by row
    const n = x.length, y = new Float64Array(outFeatures);
    for (let o = 0, row = 0; o < outFeatures; o++, row += n) {
      let a = 0, b = 0, c = 0, d = 0, i = 0; // four running sums: faster than one
      for (; i + 3 < n; i += 4) {
        a += weight[row + i] * x[i];
        b += weight[row + i + 1] * x[i + 1];
        c += weight[row + i + 2] * x[i + 2];
        d += weight[row + i + 3] * x[i + 3];
      }
      for (; i < n; i++) a += weight[row + i] * x[i];
      y[o] = a + b + (c + d);
    }
    return y;
  }

  function layerNorm(x, weight, eps = 1e-5) { // nn.LayerNorm(bias=False): zero mean, unit variance, scale
    let mean = 0, variance = 0;
    for (const v of x) mean += v / x.length;
    for (const v of x) variance += (v - mean) ** 2 / x.length;
    const scale = 1 / Math.sqrt(variance + eps);
    return x.map((v, i) => (v - mean) * scale * weight[i]);
  }

  function erf(x) { // JavaScript has no Math.erf: Numerical Recipes' erfc, to a relative 1.2e-7
    const z = Math.abs(x), t = 1 / (1 + z / 2);
    const r = t * Math.exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 +
      t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return x >= 0 ? 1 - r : r - 1;
  }

  const gelu = (x) => 0.5 * x * (1 + erf(x / Math.SQRT2)); // nn.GELU(): 0.5 x (1 + erf(x / √2))
  const geluTanh = (x) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

  function mlp(x, w, activation) { // expand 4x, GELU, project back
    const hidden = linear(w.c_fc, x, 4 * x.length).map(activation === "gelu_tanh" ? geluTanh : gelu);
    return linear(w.c_proj, hidden, x.length);
  }

  function rotaryTables(position, headSize, base = 10000) { // the angles in float64, rounded to float32
    const cos = new Float64Array(headSize / 2), sin = new Float64Array(headSize / 2);
    for (let i = 0; i < headSize / 2; i++) {
      const angle = position * base ** (-(2 * i) / headSize);
      cos[i] = Math.fround(Math.cos(angle));
      sin[i] = Math.fround(Math.sin(angle));
    }
    return [cos, sin];
  }

  function applyRotary(v, offset, headSize, cos, sin) { // turn each pair (v[i], v[i + half]) by its angle
    const half = headSize / 2;
    for (let i = 0; i < half; i++) {
      const x1 = v[offset + i], x2 = v[offset + half + i];
      v[offset + i] = x1 * cos[i] - x2 * sin[i];
      v[offset + half + i] = x1 * sin[i] + x2 * cos[i];
    }
  }

  // One new position attends to itself and the cached positions (at most block_size - 1 of them).
  function attention(q, keys, values, nHead) {
    const C = q.length, headSize = C / nHead, y = new Float64Array(C), scores = new Float64Array(keys.length);
    for (let h = 0, offset = 0; h < nHead; h++, offset += headSize) {
      for (let j = 0; j < keys.length; j++) {
        let dot = 0;
        for (let i = offset; i < offset + headSize; i++) dot += q[i] * keys[j][i];
        scores[j] = dot / Math.sqrt(headSize);
      }
      const weights = softmax(scores);
      for (let j = 0; j < values.length; j++) {
        for (let i = offset; i < offset + headSize; i++) y[i] += weights[j] * values[j][i];
      }
    }
    return y;
  }

  function causalSelfAttention(x, w, cache, [cos, sin], config) {
    const C = config.n_embd, headSize = C / config.n_head;
    const qkv = linear(w.c_attn, x, 3 * C);
    const q = qkv.subarray(0, C), k = qkv.slice(C, 2 * C), v = qkv.slice(2 * C);
    for (let h = 0; h < config.n_head; h++) {
      applyRotary(q, h * headSize, headSize, cos, sin);
      applyRotary(k, h * headSize, headSize, cos, sin);
    }
    cache.keys.push(k);
    cache.values.push(v);
    if (cache.keys.length > config.block_size) { // the sliding window: forget what no query can see
      cache.keys.shift();
      cache.values.shift();
    }
    return linear(w.c_proj, attention(q, cache.keys, cache.values, config.n_head), C);
  }

  function add(x, y) {
    return x.map((v, i) => v + y[i]);
  }

  function block(x, w, cache, rotary, config) { // pre-norm: x + attn(ln_1(x)), then x + mlp(ln_2(x))
    x = add(x, causalSelfAttention(layerNorm(x, w.ln_1), w.attn, cache, rotary, config));
    return add(x, mlp(layerNorm(x, w.ln_2), w.mlp, config.activation));
  }

  // --- The GPT ------------------------------------------------------------------------------------
  class GPT {
    constructor(bytes) {
      const { tensors, metadata } = readSafetensors(bytes);
      this.config = JSON.parse(metadata.config);
      this.tokenizer = JSON.parse(metadata.tokenizer);
      this.chat = metadata.chat === "true";
      if (this.config.position !== "rope" || this.config.bias) throw new Error("not a rope model without biases");
      const t = (name) => tensors[name];
      this.wte = t("transformer.wte.weight") || t("lm_head.weight"); // tied: stored once, as lm_head.weight
      this.h = Array.from({ length: this.config.n_layer }, (_, l) => {
        const p = `transformer.h.${l}.`;
        return {
          ln_1: t(p + "ln_1.weight"), ln_2: t(p + "ln_2.weight"),
          attn: { c_attn: t(p + "attn.c_attn.weight"), c_proj: t(p + "attn.c_proj.weight") },
          mlp: { c_fc: t(p + "mlp.c_fc.weight"), c_proj: t(p + "mlp.c_proj.weight") },
        };
      });
      this.ln_f = t("transformer.ln_f.weight");
      this.numParams = Object.values(tensors).reduce((n, a) => n + a.length, 0);
      // Each layer looks block_size - 1 positions further back: no earlier token changes the next one.
      this.receptiveField = this.config.n_layer * (this.config.block_size - 1) + 1;
    }

    newKVCache() {
      return { seen: 0, layers: this.h.map(() => ({ keys: [], values: [] })) };
    }

    // The logits of the token after `token`, which follows the cache's positions; extends the cache.
    forward(token, cache) {
      const C = this.config.n_embd;
      const rotary = rotaryTables(cache.seen, C / this.config.n_head); // the angles of this position
      let x = Float64Array.from(this.wte.subarray(token * C, (token + 1) * C));
      this.h.forEach((w, l) => { x = block(x, w, cache.layers[l], rotary, this.config); });
      cache.seen += 1;
      return linear(this.wte, layerNorm(x, this.ln_f), this.config.vocab_size); // lm_head = wte
    }
  }

  // --- Choosing the next token: the library's rules, and a random-number generator Python shares --
  function softmax(z) {
    const top = Math.max(...z), e = z.map((v) => Math.exp(v - top));
    const total = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / total);
  }

  function mulberry32(seed) { // minigpt_lib.web.Mulberry32: the same numbers in [0, 1)
    let state = seed >>> 0;
    return () => {
      state = (state + 0x6d2b79f5) >>> 0;
      let t = Math.imul(state ^ (state >>> 15), state | 1) >>> 0;
      t = ((t + Math.imul(t ^ (t >>> 7), t | 61)) ^ t) >>> 0;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function greedy(logits) { // the most likely token; ties go to the lowest id
    let best = 0;
    for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
    return best;
  }

  // Temperature (0: greedy), then top-k, then top-p on what is left, then one draw: as sample_like_page.
  function sampleNext(logits, { temperature = 1, topK = null, topP = null }, random) {
    if (temperature === 0) return greedy(logits);
    const top = Math.max(...logits);
    const z = Array.from(logits, (v) => (v - top) / temperature);
    if (topK !== null && topK < z.length) {
      const kth = [...z].sort((a, b) => b - a)[topK - 1];
      z.forEach((v, i) => { if (v < kth) z[i] = -Infinity; });
    }
    if (topP !== null && topP < 1) { // keep the fewest likeliest tokens whose probabilities reach topP
      const order = z.map((_, i) => i).sort((a, b) => z[b] - z[a] || a - b);
      const probs = softmax(order.map((i) => z[i]));
      let mass = 0;
      order.forEach((i, rank) => { if (mass >= topP) z[i] = -Infinity; mass += probs[rank]; });
    }
    const probs = softmax(z), target = random() * probs.reduce((a, b) => a + b, 0);
    let total = 0, last = 0;
    for (let i = 0; i < probs.length; i++) {
      if (probs[i] <= 0) continue;
      total += probs[i];
      last = i;
      if (total > target) return i;
    }
    return last;
  }

  // Yield {token, logits} for each new token after the prompt `ids`, read from its last
  // receptiveField tokens as the library's generate does.
  function* generate(model, ids, maxNewTokens, options = {}) {
    const cache = model.newKVCache(), random = mulberry32(options.seed ?? 0);
    let logits;
    for (const token of ids.slice(-model.receptiveField)) logits = model.forward(token, cache);
    for (let n = 0; n < maxNewTokens; n++) {
      const token = sampleNext(logits, options, random);
      yield { token, logits };
      if (n + 1 < maxNewTokens) logits = model.forward(token, cache);
    }
  }

  return { GPT, fromBase64, readSafetensors, generate, sampleNext, mulberry32, erf };
})();
