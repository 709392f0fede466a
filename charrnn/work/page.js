"use strict";
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const H = D.hidden, K = D.k, LN2 = Math.log(2);
  const GATE_COLOURS = { i: "#2f6fdf", f: "#d9822b", o: "#2e9e5b", r: "#8d4fd1", z: "#d23f6f", u: "#d23f6f" };
  const GATE_NAMES = { i: "input gate", f: "forget gate", o: "output gate", r: "reset gate",
                       z: "update gate (z keeps the old state)", u: "update gate (u writes the new value)" };

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function add(parent, ...kids) { for (const k of kids) parent.appendChild(k); return parent; }
  function shown(tok) {  // how a token reads in a box: whitespace made visible
    if (tok === "\n") return "\u23ce";
    if (tok === " ") return "\u2423";
    if (tok === "\t") return "\u21e5";
    return tok;
  }
  const pct = p => Number.isFinite(p) ? (100 * p).toFixed(1) + "%" : "n/a";
  const nats = x => Number.isFinite(x) ? x.toFixed(2) : "n/a";
  // a log-probability or probability that was not a finite number (an overflowing model) came as null
  D.logprob = D.logprob.map(x => x === null ? NaN : x);
  D.topP = D.topP.map(x => x === null ? NaN : x);
  const fmt = (x, d) => (x === null || x === undefined) ? "n/a" : x.toFixed(d);

  // ------------------------------------------------------------ colours
  // surprisal in bits, 0 (white) to 8 or more (deep red)
  function surpriseColour(bits) {
    const a = Number.isNaN(bits) ? 1 : Math.max(0, Math.min(1, bits / 8));
    return "rgba(214, 48, 39, " + (0.85 * a).toFixed(3) + ")";
  }
  // a unit's value, -1 (blue) through 0 (white) to 1 (red)
  function valueColour(v) {
    const a = Math.min(1, Math.abs(v));
    return v >= 0 ? "rgba(214, 48, 39, " + (0.9 * a).toFixed(3) + ")"
                  : "rgba(38, 102, 214, " + (0.9 * a).toFixed(3) + ")";
  }

  // ------------------------------------------------------------ activations, 8 bits per value
  const decoded = {};
  function unitValues(layer, kind, unit) {
    const key = layer + kind;
    if (!decoded[key]) {
      const bin = atob(D.layers[layer][kind]);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      decoded[key] = bytes;
    }
    return decoded[key].subarray(unit * D.steps, (unit + 1) * D.steps);  // (steps,) 128 + round(127 v)
  }

  // ------------------------------------------------------------ the page
  const main = el("main");
  add(document.body, main);
  add(main, el("h1", null, D.title));
  add(main, el("div", { class: "muted small" }, D.model + " \u00b7 " + D.checkpoint));
  add(main, el("div", { class: "muted small" }, "Text: " + D.source + ", " + D.chars.toLocaleString("en") +
      " characters"));

  const t = D.totals;
  const totals = el("div", { class: "totals", id: "totals" });
  const tot = (label, value) => { const b = el("div", { class: "total" }); add(b, el("b", null, value),
      document.createTextNode(" " + label)); totals.appendChild(b); };
  tot("tokens scored", t.tokens.toLocaleString("en"));
  tot("nats per token (loss)", fmt(t.loss, 4));
  tot("perplexity", fmt(t.perplexity, 3));
  tot("bits per token", fmt(t.bits, 4));
  tot("unknown tokens", t.unknown.toLocaleString("en"));
  add(main, totals);
  if (D.cut > 0) add(main, el("div", { class: "notice", id: "notice" }, "Only the first " +
      D.chars.toLocaleString("en") + " characters are shown: " + D.cut.toLocaleString("en") +
      " more were cut (charrnn annotate --max-chars sets the limit)."));

  // controls
  const controls = el("div", { class: "controls" });
  const modeS = el("input", { type: "radio", name: "mode", id: "mode-surprise", value: "surprise" });
  const modeN = el("input", { type: "radio", name: "mode", id: "mode-neuron", value: "neuron" });
  modeS.checked = true;
  const layerSel = el("select", { id: "layer" });
  D.layers.forEach((_, k) => layerSel.appendChild(el("option", { value: String(k) }, "layer " + (k + 1))));
  const kindSel = el("select", { id: "kind" });
  kindSel.appendChild(el("option", { value: "h" }, "h (hidden state)"));
  if (D.layers[0].c) kindSel.appendChild(el("option", { value: "c" }, "tanh(c) (LSTM cell)"));
  const unitIn = el("input", { type: "number", id: "unit", min: "0", max: String(H - 1), value: "0" });
  const lS = el("label"); add(lS, modeS, document.createTextNode(" surprise"));
  const lN = el("label"); add(lN, modeN, document.createTextNode(" one neuron:"));
  const lU = el("label"); add(lU, document.createTextNode("unit "), unitIn,
                              el("span", { class: "muted" }, " of 0\u2013" + (H - 1)));
  const legend = el("div", { class: "legend" });
  const legendL = el("span"), legendBar = el("span", { class: "bar" }), legendR = el("span");
  add(legend, legendL, legendBar, legendR);
  add(controls, el("b", null, "Colour by"), lS, lN, layerSel, kindSel, lU, legend);
  add(main, controls);
  const help = el("div", { class: "help", id: "help" });
  add(main, help);

  // the text, one span per token
  const textBox = el("div", { id: "text" });
  const spans = [];
  D.pieces.forEach((p, i) => {
    const s = el("span", { "data-i": String(i) });
    const row = D.row[i];
    if (p === "") { s.textContent = "\u23ce"; s.className = "end"; }  // the end of a last line: its end token
    else s.textContent = p;
    if (D.unknown[i]) s.classList.add("unk");
    if (row < 0 && D.step[i] < 0) s.classList.add("off");
    spans.push(s);
    textBox.appendChild(s);
  });
  add(main, textBox);

  // the hover box, in the blog's layout: the character, then the model's guesses for it, most likely first
  const box = el("div", { id: "box" });
  document.body.appendChild(box);
  let pinned = -1, hot = null;
  function showBox(i) {
    const row = D.row[i], s = spans[i];
    while (box.firstChild) box.removeChild(box.firstChild);
    const piece = D.pieces[i];
    add(box, el("div", { class: "actual" }, piece === "" ? "\u23ce end" : shown(piece)));
    if (row < 0) {
      add(box, el("div", { class: "foot" }, D.step[i] >= 0 ? "Not scored: the first token is only context."
                                                             : "Not scored (an empty line)."));
    } else {
      add(box, el("div", { class: "head" }, "the model's guesses here:"));
      for (let j = 0; j < K; j++) {
        const id = D.top[row * K + j], p = D.topP[row * K + j];
        const g = el("div", { class: "guess" });
        g.style.background = "rgba(46, 158, 91, " + Math.min(0.75, 0.1 + p).toFixed(3) + ")";
        if (D.rank[row] === j + 1) g.classList.add("true");
        add(g, el("span", { class: "tok" }, shown(D.vocab[id])), el("span", { class: "p" }, pct(p)));
        box.appendChild(g);
      }
      const lp = D.logprob[row], p = Math.exp(lp);
      if (D.rank[row] > K) {  // the true token was not among the guesses: show where it stood
        add(box, el("div", { class: "head" }, "\u2026 and at rank " + D.rank[row] + ":"));
        const g = el("div", { class: "guess true" });
        g.style.background = "rgba(46, 158, 91, " + Math.min(0.75, 0.1 + p).toFixed(3) + ")";
        add(g, el("span", { class: "tok" }, piece === "" ? "end" : shown(piece)), el("span", { class: "p" }, pct(p)));
        box.appendChild(g);
      }
      const foot = el("div", { class: "foot" });
      foot.textContent = (D.unknown[i] ? "unknown to the model, scored as \u2018unknown\u2019. " : "") +
        "p = " + pct(p) + ", rank " + D.rank[row] + ", " + nats(-lp / LN2) + " bits (" +
        nats(-lp) + " nats)";
      box.appendChild(foot);
    }
    if (mode() === "neuron" && D.step[i] >= 0) {
      const v = (unitValues(+layerSel.value, kindSel.value, unit())[D.step[i]] - 128) / 127;
      add(box, el("div", { class: "foot" }, "unit " + unit() + " = " + v.toFixed(2)));
    }
    if (hot) hot.classList.remove("hot");
    hot = s; s.classList.add("hot");
    box.style.display = "block";
    const r = s.getBoundingClientRect();
    const left = Math.min(window.scrollX + r.left, window.scrollX + document.documentElement.clientWidth -
                          box.offsetWidth - 8);
    box.style.left = Math.max(4, left) + "px";
    box.style.top = (window.scrollY + r.bottom + 4) + "px";
  }
  function hideBox() { box.style.display = "none"; if (hot) hot.classList.remove("hot"); hot = null; }
  textBox.addEventListener("mouseover", e => {
    const i = e.target.dataset ? e.target.dataset.i : undefined;
    if (i !== undefined && pinned < 0) showBox(+i);
  });
  textBox.addEventListener("mouseleave", () => { if (pinned < 0) hideBox(); });
  textBox.addEventListener("click", e => {  // a tap pins the box; a second tap on it lets go
    const i = e.target.dataset ? e.target.dataset.i : undefined;
    if (i === undefined) return;
    if (pinned === +i) { pinned = -1; hideBox(); } else { pinned = +i; showBox(+i); }
  });
  textBox.addEventListener("scroll", () => { if (pinned < 0) hideBox(); else showBox(pinned); });

  // ------------------------------------------------------------ colouring
  const mode = () => modeN.checked ? "neuron" : "surprise";
  const unit = () => Math.max(0, Math.min(H - 1, parseInt(unitIn.value, 10) || 0));
  function gradient(stops) { legendBar.style.background = "linear-gradient(to right, " + stops + ")"; }
  function recolour() {
    if (mode() === "surprise") {
      spans.forEach((s, i) => {
        const row = D.row[i];
        s.style.background = row < 0 ? "" : surpriseColour(-D.logprob[row] / LN2);
      });
      legendL.textContent = "expected (0 bits)"; legendR.textContent = "surprising (8+ bits)";
      gradient("#fff, " + surpriseColour(8));
      help.textContent = "Each character is shaded by how surprised the model was to see it, -log\u2082 p. " +
        "Hover over (or tap) a character to see what the model guessed there; a dashed outline marks a " +
        "character the model never saw. Choose \u201cone neuron\u201d to see a unit's value instead.";
    } else {
      const vals = unitValues(+layerSel.value, kindSel.value, unit());
      spans.forEach((s, i) => {
        const st = D.step[i];
        s.style.background = st < 0 ? "" : valueColour((vals[st] - 128) / 127);
      });
      legendL.textContent = "\u22121"; legendR.textContent = "+1";
      gradient(valueColour(-1) + ", #fff, " + valueColour(1));
      help.textContent = "Each character is coloured by unit " + unit() + " of layer " +
        (+layerSel.value + 1) + " (" + (kindSel.value === "c" ? "tanh of its cell state c" : "its hidden state h") +
        ") just after the model read it: blue \u22121, white 0, red +1. \u201cUnits worth a look\u201d below " +
        "lists units that follow something in the text.";
    }
    for (const tr of lookRows) tr.classList.toggle("sel", mode() === "neuron" && +tr.dataset.layer ===
      +layerSel.value && tr.dataset.kind === kindSel.value && +tr.dataset.unit === unit());
  }
  modeS.addEventListener("change", recolour);
  modeN.addEventListener("change", recolour);
  for (const c of [layerSel, kindSel, unitIn]) {
    c.addEventListener("change", () => { modeN.checked = true; recolour(); });
    c.addEventListener("input", () => { modeN.checked = true; recolour(); });
  }

  // ------------------------------------------------------------ units worth a look, and gate saturation
  const cols = el("div", { class: "cols" });
  const left = el("div"), right = el("div");
  add(cols, left, right);
  add(main, cols);
  add(left, el("h2", null, "Units worth a look"));
  add(left, el("div", { class: "muted small" }, "Per layer, the units whose value rises and falls with a " +
      "simple feature of this text (the correlation r, from \u22121 to 1). Click one to colour the text by it."));
  const table = el("table", { id: "look" });
  const headRow = el("tr");
  for (const h of ["layer", "unit", "state", "follows", "r"]) headRow.appendChild(el("th", null, h));
  table.appendChild(headRow);
  const lookRows = [];
  for (const u of D.look) {
    const tr = el("tr", { class: "look" });
    tr.dataset.layer = String(u.layer); tr.dataset.kind = u.kind; tr.dataset.unit = String(u.unit);
    add(tr, el("td", null, String(u.layer + 1)), el("td", null, String(u.unit)),
        el("td", { class: "muted" }, u.kind === "c" ? "tanh(c)" : "h"), el("td", null, u.feature),
        el("td", null, (u.r >= 0 ? "+" : "") + u.r.toFixed(2)));
    tr.addEventListener("click", () => {
      layerSel.value = String(u.layer); kindSel.value = u.kind; unitIn.value = String(u.unit);
      modeN.checked = true; recolour();
    });
    lookRows.push(tr);
    table.appendChild(tr);
  }
  if (!D.look.length) add(left, el("div", { class: "muted" }, "No feature varies in this text."));
  else add(left, table);

  add(right, el("h2", null, "Gate saturation"));
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const gates = Object.keys(D.saturation[0] || {});
  if (!gates.length) {
    add(right, el("div", { class: "muted small" }, "A vanilla RNN has no gates."));
  } else {
    add(right, el("div", { class: "muted small" }, "One dot per unit and gate: the share of steps the gate " +
        "is nearly shut (below " + D.satLow + ", across) and nearly open (above " + D.satHigh + ", up), as in " +
        "Karpathy, Johnson & Fei-Fei (2015). Dots near the left edge or the bottom rarely saturate."));
    const keys = el("div", { class: "keys" });
    for (const g of gates) {
      const k = el("span"); const d = el("span", { class: "dot" }); d.style.background = GATE_COLOURS[g] || "#555";
      add(k, d, document.createTextNode(GATE_NAMES[g] || g)); keys.appendChild(k);
    }
    add(right, keys);
    const plots = el("div", { class: "plots", id: "saturation" });
    const W = 170, P = 26;
    D.saturation.forEach((layer, k) => {
      const box2 = el("div", { class: "plot" });
      const s = svg("svg", { width: W + P + 8, height: W + P + 18, viewBox: "0 0 " + (W + P + 8) + " " + (W + P + 18) });
      s.appendChild(svg("text", { x: P + W / 2, y: 12, "text-anchor": "middle", "font-size": 12 }, "layer " + (k + 1)));
      const g0 = svg("g", { transform: "translate(" + P + ",18)" });
      g0.appendChild(svg("rect", { x: 0, y: 0, width: W, height: W, fill: "#fafbfc", stroke: "#c5ccd8" }));
      g0.appendChild(svg("line", { x1: 0, y1: W, x2: W, y2: 0, stroke: "#e1e5ec" }));
      for (const g of gates) {
        const [lo, hi] = layer[g];
        for (let u = 0; u < lo.length; u++) {
          g0.appendChild(svg("circle", { cx: (lo[u] * W).toFixed(1), cy: ((1 - hi[u]) * W).toFixed(1), r: 2.3,
            fill: GATE_COLOURS[g] || "#555", "fill-opacity": 0.6 }));
        }
      }
      g0.appendChild(svg("text", { x: W / 2, y: W + 14, "text-anchor": "middle", "font-size": 10, fill: "#5b6475" },
                         "share of steps shut \u2192"));
      g0.appendChild(svg("text", { x: -W / 2, y: -8, transform: "rotate(-90)", "text-anchor": "middle",
                                   "font-size": 10, fill: "#5b6475" }, "share open \u2192"));
      for (const [x, label] of [[0, "0"], [W, "1"]]) {
        g0.appendChild(svg("text", { x: x, y: W + 14, "text-anchor": "middle", "font-size": 9, fill: "#8a93a3" }, label));
      }
      s.appendChild(g0);
      box2.appendChild(s);
      plots.appendChild(box2);
    });
    add(right, plots);
  }
  add(main, el("p", { class: "muted small" }, "Made by charrnn annotate. The page is self-contained: it loads " +
      "nothing from anywhere. Scores start from no context: " +
      "a stream model reads the first token as context only; a lines model scores each line from its start " +
      "token through its end (\u23ce)."));
  recolour();
  document.body.dataset.ready = "1";
})();
