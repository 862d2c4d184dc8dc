// The live boxes of the book's pages, run by gpt.js in the reader's browser: a sampler
// (<div class="minigpt-sampler" data-model="NAME">) and a chat (<div class="minigpt-chat" data-model="NAME">).
// Each loads the weights script models/NAME.js next to this file with a <script> tag, which works
// from file:// too; nothing is fetched from outside the book. Text is generated a few tokens at a
// time between two setTimeout calls, so the page stays responsive.
"use strict";
(() => {
  const here = new URL(".", document.currentScript.src).href;
  const style = document.createElement("link");
  style.rel = "stylesheet";
  style.href = here + "book.css";
  document.head.appendChild(style);

  const models = {};
  function loadModel(name) {
    models[name] = models[name] || new Promise((resolve, reject) => {
      const start = performance.now(), script = document.createElement("script");
      script.src = `${here}models/${name}.js`;
      script.onload = () => {
        const model = new MiniGPT.GPT(MiniGPT.fromBase64(window.MINIGPT_WEIGHTS[name]));
        model.readySeconds = (performance.now() - start) / 1000;
        resolve(model);
      };
      script.onerror = () => reject(new Error(`could not load ${script.src}`));
      document.head.appendChild(script);
    });
    return models[name];
  }

  // Text <-> token ids as the Python tokenizers do: one id per character (chapters 1-6), or the
  // UTF-8 bytes followed by special tokens (the chat tokenizer: a typed "<|end|>" stays bytes).
  function codec(tokenizer) {
    if (tokenizer.kind === "char") {
      const chars = Array.from(tokenizer.chars), ids = new Map(chars.map((c, i) => [c, i]));
      const encode = (text) => Array.from(text, (c) => {
        if (!ids.has(c)) throw new Error(`this model knows only the characters of Tiny Shakespeare, not ${JSON.stringify(c)}`);
        return ids.get(c);
      });
      return { encode, decode: (tokens) => tokens.map((t) => chars[t]).join("") };
    }
    const specials = tokenizer.special_tokens, utf8 = new TextEncoder(), text = new TextDecoder();
    const bytesOf = (t) => (t < 256 ? [t] : Array.from(utf8.encode(specials[t - 256])));
    return {
      encode: (s) => Array.from(utf8.encode(s)),
      decode: (tokens) => text.decode(Uint8Array.from(tokens.flatMap(bytesOf))),
      special: (name) => 256 + specials.indexOf(name),
    };
  }

  function element(tag, attributes = {}, ...children) {
    const node = Object.assign(document.createElement(tag), attributes);
    node.append(...children);
    return node;
  }

  function field(label, input) {
    return element("label", { className: "minigpt-field" }, label, input);
  }

  function numberInput(name, value, min, max, step) {
    return element("input", { type: "number", name, value, min, max, step });
  }

  // Run `next()` (false when done) for about 15 ms at a time until it is done or stop() is called.
  function runInChunks(next, onChunk, onDone) {
    let stopped = false;
    const chunk = () => {
      const until = performance.now() + 15;
      let going = true;
      try {
        while (going && !stopped && performance.now() < until) going = next();
      } catch (error) {
        onDone(error);
        return;
      }
      onChunk();
      if (going && !stopped) setTimeout(chunk, 0);
      else onDone(null, stopped);
    };
    setTimeout(chunk, 0);
    return () => { stopped = true; };
  }

  function setUp(box, build) {
    box.dataset.state = "loading";
    box.replaceChildren(element("p", { className: "minigpt-status", textContent: "Loading the model…" }));
    loadModel(box.dataset.model).then(
      (model) => build(box, model),
      (error) => { box.dataset.state = "error"; box.querySelector(".minigpt-status").textContent = error.message; });
  }

  function describe(model) {
    const millions = (model.numParams / 1e6).toFixed(2);
    return `${millions}M parameters, ${model.config.n_layer} layers, context ${model.config.block_size}; ` +
      `loaded in ${model.readySeconds.toFixed(2)} s`;
  }

  // --- Sampler: prompt, temperature, top-k, top-p, seed; generate / stop; characters per second ---
  function buildSampler(box, model) {
    const text = codec(model.tokenizer);
    const prompt = element("textarea", { name: "prompt", rows: 2, value: box.dataset.prompt || "ROMEO:\n" });
    const temperature = numberInput("temperature", 0.8, 0, 5, 0.05);
    const topK = numberInput("top-k", 40, 1, model.config.vocab_size, 1);
    const topP = numberInput("top-p", 1, 0.01, 1, 0.01);
    const seed = numberInput("seed", 1, 0, 4294967295, 1);
    const length = numberInput("length", 500, 1, 100000, 1);
    const go = element("button", { type: "button", name: "generate", textContent: "Generate" });
    const stop = element("button", { type: "button", name: "stop", textContent: "Stop", disabled: true });
    const shownPrompt = element("span", { className: "minigpt-prompt" }), written = element("span");
    const status = element("p", { className: "minigpt-status", textContent: describe(model) });
    box.replaceChildren(
      field("prompt", prompt),
      element("div", { className: "minigpt-row" }, field("temperature (0: greedy)", temperature),
        field("top-k", topK), field("top-p", topP), field("seed", seed), field("characters", length), go, stop),
      element("pre", { className: "minigpt-output" }, shownPrompt, written), status);
    let halt = null;
    go.onclick = () => {
      let ids, tokens = [];
      try {
        ids = text.encode(prompt.value || "\n"); // an empty prompt starts from a line break, as in Python
      } catch (error) {
        status.textContent = error.message;
        return;
      }
      const options = { temperature: +temperature.value, topK: topK.value ? +topK.value : null,
        topP: +topP.value < 1 ? +topP.value : null, seed: +seed.value };
      const steps = MiniGPT.generate(model, ids, +length.value, options), start = performance.now();
      shownPrompt.textContent = prompt.value;
      written.textContent = "";
      go.disabled = true;
      stop.disabled = false;
      box.dataset.state = "running";
      const report = () => {
        const seconds = (performance.now() - start) / 1000;
        status.textContent = `${tokens.length} characters in ${seconds.toFixed(2)} s: ` +
          `${Math.round(tokens.length / seconds)} characters per second`;
      };
      halt = runInChunks(() => {
        const step = steps.next();
        if (!step.done) tokens.push(step.value.token);
        return !step.done;
      }, () => { written.textContent = text.decode(tokens); report(); }, (error) => {
        if (error) status.textContent = error.message;
        box.dataset.tokens = JSON.stringify(tokens);
        go.disabled = false;
        stop.disabled = true;
        box.dataset.state = "ready";
      });
    };
    stop.onclick = () => halt && halt();
    box.dataset.state = "ready";
  }

  // --- Chat: the chat template, a system prompt, history trimmed as ChatSession does, streaming ---
  function buildChat(box, model) {
    const text = codec(model.tokenizer), END = text.special("<|end|>");
    const roles = { system: text.special("<|system|>"), user: text.special("<|user|>"),
      assistant: text.special("<|assistant|>") };
    const maxContext = Math.max(16, model.config.block_size - 32); // ChatSession's default
    const session = { system: "", history: [], turn: 0 };
    const system = element("input", { type: "text", name: "system", placeholder: "none" });
    const input = element("input", { type: "text", name: "message", placeholder: "Write a message, then Enter" });
    const send = element("button", { type: "button", name: "send", textContent: "Send" });
    const stop = element("button", { type: "button", name: "stop", textContent: "Stop", disabled: true });
    const reset = element("button", { type: "button", name: "reset", textContent: "Reset" });
    const temperature = numberInput("temperature", 0, 0, 5, 0.05), seed = numberInput("seed", 1337, 0, 4294967295, 1);
    const log = element("div", { className: "minigpt-chat-log" });
    const note = model.chat ? "" : " (this model was never taught to chat: it only continues text)";
    const status = element("p", { className: "minigpt-status", textContent: describe(model) + note });
    box.replaceChildren(field("system prompt", system), log,
      element("div", { className: "minigpt-row" }, input, send, stop, reset,
        field("temperature (0: greedy)", temperature), field("seed", seed)), status);

    const messages = () => (session.system ? [{ role: "system", content: session.system }] : []).concat(session.history);
    const renderPrompt = (conversation) => conversation.flatMap((m) => [roles[m.role], ...text.encode(m.content), END])
      .concat([roles.assistant]);
    function fitContext(conversation) { // minigpt_lib.chat.fit_context: drop the oldest turns, keep the system prompt
      const head = conversation[0] && conversation[0].role === "system" ? conversation.slice(0, 1) : [];
      let rest = conversation.slice(head.length);
      while (renderPrompt(head.concat(rest)).length > maxContext && rest.length > 1) {
        rest = rest.slice(1);
        while (rest.length > 1 && rest[0].role !== "user") rest = rest.slice(1);
      }
      const length = renderPrompt(head.concat(rest)).length;
      if (length > maxContext) {
        throw new Error(`the system prompt and the last message alone take ${length} tokens, more than the ` +
          `${maxContext} the model can see; write a shorter message (or system prompt)`);
      }
      return head.concat(rest);
    }
    function show(role, content) {
      const node = element("div", { className: `minigpt-message minigpt-${role}`, textContent: content });
      log.append(node);
      log.scrollTop = log.scrollHeight;
      return node;
    }
    function setSystem() {
      session.system = system.value.trim();
      session.history = [];
      log.replaceChildren();
      show("note", `(system prompt: ${session.system || "none"}; conversation cleared)`);
    }
    let halt = null;
    function ask() {
      const message = input.value;
      if (!message.trim() || send.disabled) return;
      session.history.push({ role: "user", content: message });
      let fitted;
      try {
        fitted = fitContext(messages());
      } catch (error) {
        session.history.pop();
        status.textContent = error.message;
        return;
      }
      input.value = "";
      show("user", message);
      const dropped = messages().length - fitted.length;
      const answer = { role: "assistant", content: "" }, node = show("assistant", "");
      session.history.push(answer);
      const options = { temperature: +temperature.value, seed: +seed.value + session.turn };
      session.turn += 1;
      const steps = MiniGPT.generate(model, renderPrompt(fitted), 200, options), tokens = [];
      const start = performance.now();
      send.disabled = true;
      stop.disabled = false;
      box.dataset.state = "running";
      halt = runInChunks(() => {
        const step = steps.next();
        if (step.done || step.value.token === END || Object.values(roles).includes(step.value.token)) return false;
        tokens.push(step.value.token);
        return true;
      }, () => {
        const decoded = text.decode(tokens); // a character cut between byte tokens waits for its other bytes
        answer.content = decoded.endsWith("\ufffd") ? answer.content : decoded;
        node.textContent = answer.content;
      }, (error, stopped) => {
        answer.content = text.decode(tokens);
        node.textContent = answer.content;
        const seconds = (performance.now() - start) / 1000;
        status.textContent = error ? error.message : `${tokens.length} tokens in ${seconds.toFixed(2)} s` +
          (dropped ? `; the oldest ${dropped} messages no longer fit in the context` : "");
        if (stopped) { // as the command line's Ctrl-C: that turn is forgotten
          session.history.splice(-2);
          show("note", "(answer stopped; that turn was forgotten)");
        }
        send.disabled = false;
        stop.disabled = true;
        box.dataset.state = "ready";
      });
    }
    system.onchange = setSystem;
    send.onclick = ask;
    input.onkeydown = (event) => { if (event.key === "Enter") ask(); };
    stop.onclick = () => halt && halt();
    reset.onclick = () => { session.history = []; log.replaceChildren(); show("note", "(conversation cleared)"); };
    box.dataset.state = "ready";
  }

  const start = () => {
    document.querySelectorAll(".minigpt-sampler:not([data-state])").forEach((box) => setUp(box, buildSampler));
    document.querySelectorAll(".minigpt-chat:not([data-state])").forEach((box) => setUp(box, buildChat));
  };
  start(); // the boxes above this script load their model now, while the rest of the page is read
  document.addEventListener("DOMContentLoaded", start);
})();
