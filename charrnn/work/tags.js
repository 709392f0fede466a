"use strict";
// The tagger's annotate page: each token coloured by its predicted tag, every tag's probability on hover.
// The text is untrusted: it is read from the JSON data block and written with textContent only.
(function () {
  const D = JSON.parse(document.getElementById("data").textContent);
  const C = D.tags.length;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function add(parent, ...kids) { for (const k of kids) parent.appendChild(k); return parent; }
  const fmt = p => (p === null || !Number.isFinite(p)) ? "n/a" : p.toFixed(3);
  // a tag's colour: spread around the hue circle; "O" (outside any entity) stays uncoloured
  function colour(t) {
    if (D.tags[t] === "O") return "transparent";
    return "hsl(" + Math.round((t * 137.508) % 360) + ", 75%, 82%)";
  }

  const main = el("main");
  add(document.body, main);
  add(main, el("h1", null, D.title));
  add(main, el("p", "muted small", D.model + " \u00b7 " + D.checkpoint + " \u00b7 " + D.source));
  if (D.cut) add(main, el("p", "notice", "Only the first " + D.sequences.length + " sequences are shown; " +
                          D.cut + " more characters are cut."));
  const legend = el("div", "legend");
  legend.id = "legend";
  for (let t = 0; t < C; t++) {
    const key = el("span", "tag", D.tags[t]);
    key.style.background = colour(t);
    key.dataset.t = String(t);
    add(legend, key);
  }
  add(main, legend);

  const box = el("div", "box");
  box.id = "box";
  box.hidden = true;
  const text = el("div");
  text.id = "text";
  let at = 0;
  for (const [tokens, best, probs] of D.sequences) {
    const line = el("div", "seq");
    tokens.forEach((token, i) => {
      if (i && D.level === "word") add(line, document.createTextNode(" "));
      const span = el("span", null, token);
      span.dataset.i = String(at + i);
      span.dataset.t = String(best[i]);
      span.style.background = colour(best[i]);
      span.title = probs[i].map((p, t) => [p, t]).sort((a, b) => (b[0] ?? -1) - (a[0] ?? -1))
        .map(([p, t]) => D.tags[t] + "  " + fmt(p)).join("\n");
      span.addEventListener("mouseenter", () => {
        box.textContent = "";
        add(box, el("b", null, token + " \u2192 " + D.tags[best[i]]));
        for (const row of span.title.split("\n")) add(box, el("div", null, row));
        box.hidden = false;
      });
      add(line, span);
    });
    at += tokens.length;
    add(text, line);
  }
  add(main, text, box);
  document.body.dataset.ready = "1";
})();
