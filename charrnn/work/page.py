"""The annotate page: one self-contained HTML file showing an Annotation.

Everything is inline (CSS, JS and the data), nothing is fetched, so the page
opens offline and can be mailed. The CSS and the script are files beside this
module (page.css, page.js), package data that editors and linters can read. The text is untrusted (a corpus scraped from
the web may hold `</script>` or `<img onerror=...>`), so:
- the data is embedded as JSON in a `<script type="application/json">` block,
  with every `<`, `>` and `&` and every non-ASCII character (U+2028 included)
  escaped as \\uXXXX, so no byte of the text can close the block;
- the script builds the page with createElement and textContent only, never
  innerHTML, so text is never parsed as markup;
- a Content-Security-Policy allows only this page's one script (by its hash),
  no network at all (default-src 'none').

Activations are stored as 8 bits per value (round(127 v) for v in [-1, 1]),
unit-major and base64-encoded, decoded lazily per layer: 5,000 steps of a
2 x 256 LSTM are 5 MB of page. The page is written in pieces (page_parts): its
memory is the annotation's, not several copies of the page.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import math
from importlib import resources

import numpy as np

from . import annotate
from ..files import atomic
from .annotate import FEATURES, SATURATED_HIGH, SATURATED_LOW, Annotation
from .evaluate import json_safe


def quantize(values: np.ndarray) -> str:
    """(S, H) values in [-1, 1] -> base64 of uint8 (H, S), unit-major: 128 + round(127 v)."""
    return base64.b64encode(np.ascontiguousarray(annotate.quantize(values).T).tobytes()).decode("ascii")


def _base64_parts(q: np.ndarray, size: int = 3 << 20):
    """base64 of an array's bytes, in pieces (3-byte groups encode on their own, so the pieces join up)."""
    data = memoryview(np.ascontiguousarray(q)).cast("B")
    for i in range(0, len(data), size):
        yield base64.b64encode(data[i : i + size]).decode("ascii")


def _data_items(ann: Annotation, *, title: str, model_line: str, checkpoint: str, source: str):
    """The page's data as (key, value) pairs, in order, each value made when its turn comes; the
    activations ("layers") come as a list of {kind: (H, S) uint8} left to the caller to encode."""
    in_vocab = set(ann.tokens[3:])
    s = ann.score
    yield "title", title
    yield "model", model_line
    yield "checkpoint", checkpoint
    yield "source", source
    yield "cut", ann.cut
    yield "chars", ann.text_chars
    yield "cell", ann.cell_type
    yield "vocab", list(ann.tokens)
    yield "pieces", ann.pieces
    yield "row", ann.piece_row.tolist()
    yield "step", ann.piece_step.tolist()
    yield "unknown", [bool(p) and p not in in_vocab for p in ann.pieces]  # a token the model never saw
    yield "logprob", [round(float(x), 6) for x in ann.logprob]
    yield "rank", ann.rank.tolist()
    yield "k", int(ann.top_ids.shape[1])
    yield "top", ann.top_ids.reshape(-1).tolist()
    yield "topP", [round(float(x), 5) for x in ann.top_probs.reshape(-1)]
    yield "steps", len(ann.step_piece)
    yield "hidden", int(ann.quantized[0]["h"].shape[0])
    yield "layers", ann.quantized
    yield "look", [{**u, "r": round(u["r"], 3)} for u in ann.units_worth_a_look()]
    yield "saturation", [{gate: [np.round(left, 4).tolist(), np.round(right, 4).tolist()]
                          for gate, (left, right) in layer.items()} for layer in ann.saturation()]
    yield "satLow", SATURATED_LOW
    yield "satHigh", SATURATED_HIGH
    yield "features", list(FEATURES)
    yield "totals", {"tokens": s.tokens, "loss": _finite(s.loss), "perplexity": _finite(s.perplexity),
                     "bits": _finite(s.bits_per_token), "unknown": s.unknown}


def page_data(ann: Annotation, *, title: str, model_line: str, checkpoint: str, source: str) -> dict:
    """The JSON the page's script reads, as one dict (the page itself is written in pieces, see _data_json)."""
    data = dict(_data_items(ann, title=title, model_line=model_line, checkpoint=checkpoint, source=source))
    data["layers"] = [{kind: "".join(_base64_parts(q)) for kind, q in layer.items()} for layer in data["layers"]]
    return data


def _data_json(ann: Annotation, **labels):
    """json_for_script(page_data(...)) in pieces: one value at a time, the activations' base64 in chunks
    (its alphabet needs no escaping), so the page's memory is not several copies of its own size."""
    yield "{"
    for i, (key, value) in enumerate(_data_items(ann, **labels)):
        yield ("," if i else "") + json_for_script(key) + ":"
        if key != "layers":
            yield json_for_script(value)
            continue
        yield "["
        for k, layer in enumerate(value):
            yield "," if k else ""
            for j, (kind, q) in enumerate(layer.items()):
                yield ("{" if j == 0 else ",") + json_for_script(kind) + ':"'
                yield from _base64_parts(q)
                yield '"'
            yield "}" if layer else "{}"
        yield "]"
    yield "}"


def _finite(x: float):
    return round(x, 6) if math.isfinite(x) else None


def json_for_script(data) -> str:
    """JSON that is safe inside <script type="application/json">: ASCII only, and no < > & at all.

    A number that is not finite (a model whose scores overflow gives a log-probability of -inf or NaN) goes
    in as null, which the page shows as "n/a": JSON has no such numbers."""
    text = json.dumps(json_safe(data), ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def asset(name: str) -> str:
    """The text of one of the page's files beside this module (page.css, page.js: package data, which
    pyproject.toml ships), as the page embeds it: after a newline, so that `<style>` and `<script>` each
    open a line of their own."""
    return "\n" + resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _page(style_name: str, script_name: str, title: str, data_parts):
    """A page as a sequence of strings: the head with its Content-Security-Policy (the one script allowed
    by its hash, no network), the data block (data_parts: pieces of json_for_script's JSON), the script."""
    style, script = asset(style_name), asset(script_name)
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'"
    yield ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
           f"<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\n"
           "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
           f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
           "<script id=\"data\" type=\"application/json\">")
    yield from data_parts
    yield f"</script>\n<script>{script}</script>\n</body>\n</html>\n"


def page_parts(ann: Annotation, *, title: str, model_line: str, checkpoint: str, source: str):
    """The page as a sequence of strings (joined, they are `render`'s page)."""
    yield from _page("page.css", "page.js", title,
                     _data_json(ann, title=title, model_line=model_line, checkpoint=checkpoint, source=source))


def render(ann: Annotation, *, title: str, model_line: str, checkpoint: str, source: str) -> str:
    """The whole page as one string."""
    return "".join(page_parts(ann, title=title, model_line=model_line, checkpoint=checkpoint, source=source))


def write(path: str, ann: Annotation, **labels) -> None:
    """Write the page (labels: title, model_line, checkpoint, source) through atomic.write_file, a piece
    at a time: never half a page (OSError names path), never the whole page in memory."""
    def write_parts(f):
        for part in page_parts(ann, **labels):
            f.write(part.encode("utf-8"))
    atomic.write_file(path, write_parts)



# ---------------------------------------------------------------- a tagger's page


def tag_page_parts(sequences, probs, tags, *, level: str, title: str, model_line: str, checkpoint: str,
                   source: str, cut: int = 0):
    """A tagger's page as a sequence of strings: each token coloured by its most likely tag, every tag's
    probability on hover (tags.js), as safe as the language model's page (the same head and data block).

    - sequences: token lists; probs: (N, C) each token's tag probabilities, the sequences back to back
    - tags: the tag names in id order; level: "char" (tokens shown side by side) or "word" (with spaces)
    - cut: how many characters after these sequences were not shown (a notice says so)
    """
    def data():
        yield "{"
        for key, value in (("title", title), ("model", model_line), ("checkpoint", checkpoint), ("source", source),
                           ("level", level), ("tags", list(tags)), ("cut", cut)):
            yield json_for_script(key) + ":" + json_for_script(value) + ","
        yield '"sequences":['
        at = 0
        for i, tokens in enumerate(sequences):
            p = probs[at:at + len(tokens)]
            at += len(tokens)
            rows = [[_finite4(x) for x in row] for row in p.tolist()]
            yield ("," if i else "") + json_for_script([list(tokens), p.argmax(axis=1).tolist(), rows])
        yield "]}"
    yield from _page("tags.css", "tags.js", title, data())


def _finite4(x: float):
    return round(x, 4) if math.isfinite(x) else None


def write_tags(path: str, sequences, probs, tags, **labels) -> None:
    """Write a tagger's page (tag_page_parts) through atomic.write_file, a piece at a time."""
    def write_parts(f):
        for part in tag_page_parts(sequences, probs, tags, **labels):
            f.write(part.encode("utf-8"))
    atomic.write_file(path, write_parts)
