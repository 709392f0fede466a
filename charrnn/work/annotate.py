"""Looking inside a model: each token's probability, rank and top-k guesses, and every unit's value.

`annotate(model, text)` scores a text as one stream from no context, as
`charrnn eval` does: a stream model reads the text's first token as context
(it is not scored) and predicts each later one; a lines model scores each
non-empty line from its start token through its end token. On the way it
records, at every step, each layer's hidden state h, tanh(c) for the LSTM,
and the gate values, from the readable reference steps in cells.py (their
caches hold the gates), so nothing here depends on how the compiled kernels
lay out their caches. It also computes simple features of the text (inside
quotes, position in the line, ...), which units correlate with them, and how
often each gate saturates (Karpathy, Johnson & Fei-Fei 2015, figure 3).

Why float64: the weights are upcast exactly and every step runs in float64,
so the numbers shown are the stored model's own function, with no rounding of
our own on top. For a float64 model that is eval's arithmetic (the mean
surprisal equals eval's loss to rounding, ~1e-15). A float32 model is scored
by eval in float32, so the two differ by eval's float32 rounding: about 1e-7
nats on tests/test_annotate.py's models, inside the 1e-6 the test pins. A
bf16 model (`--precision bf16`) is scored by eval with its products' inputs
rounded to bfloat16; here its float32 weights run unrounded, and the two
differ by that rounding: 5e-5 nats on README's Python example, inside the
1e-3 tests/test_readme.py pins.
The cost is small: a 5,000-character text is 5,000 small NumPy steps per layer.

Memory: the steps run a chunk at a time (CHUNK steps, every layer, each
layer's state carried on), and what is kept grows with the text only by what
is shown: per token its log-probability, rank and top-k; per step each
layer's h and tanh(c) at the page's 8 bits (`Annotation.quantized`). The gates
are only counted (their saturation) and the units only summed up against the
features (their correlations), during that one pass. The float64 h, tanh(c)
and gates are computed again, the same way, when asked for (`hidden`,
`cell`, `gates`, `states`; `each_step_states` a chunk at a time). A 2 x 256
LSTM holds about 1.5 KB per character, so tinyshakespeare's held-out split
(111,540 characters) annotates in about 0.3 GB.

Shapes: N scored tokens, S steps (tokens read), P pieces of text, H hidden,
L layers, V vocabulary, k top guesses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core import cells, loss
from ..files import corpus
from ..core.cells import EXTRA, STATES
from ..errors import ConfigError, CorpusError, option
from .evaluate import Score
from ..data.vocab import UNK, tokenize

MAX_CHARS = 5_000  # the default cut: the page stays responsive, the activations small

# Each cell's gates as the page names them, and their fields in cells.*_step_forward's cache (a named tuple).
GATES_IN_CACHE = {"lstm": {"i": "i", "f": "f", "g": "g", "o": "o"}, "gru": {"r": "r", "z": "z", "n": "n"}, "rnn": {},
                  "peephole": {"i": "i", "f": "f", "g": "g", "o": "o"}, "simple-gru": {"c~": "c_tilde", "u": "u"}}
# The sigmoid gates, whose saturation the paper plots (g, n and c~ are tanh candidates, not gates).
SATURATING = {"lstm": ("i", "f", "o"), "peephole": ("i", "f", "o"), "gru": ("r", "z"), "simple-gru": ("u",)}
SATURATED_LOW, SATURATED_HIGH = 0.1, 0.9

FEATURES = ("inside quotes", "inside brackets", "position in line", "start of word", "uppercase", "whitespace")
_OPEN, _CLOSE = "([{", ")]}"


@dataclass
class Row:
    """One scored token."""
    piece: int                        # its position in Annotation.pieces
    token: str                        # its text (the text itself, also for an unknown token; "" for an end)
    id: int                           # its id (UNK for a character the model never saw)
    logprob: float                    # natural log of the probability the model gave it
    rank: int                         # 1 when it was the model's first guess
    top: list[tuple[str, float]]      # the model's k most likely tokens here, with their probabilities
    unknown: bool                     # the model's vocabulary lacks it (it was scored as UNK)
    end: bool = False                 # the end-of-line token (lines models)

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    @property
    def surprisal(self) -> float:
        """-log p in nats."""
        return -self.logprob

    @property
    def bits(self) -> float:
        """-log2 p."""
        return -self.logprob / math.log(2)


class Rows(Sequence):
    """The Rows of an Annotation, made when asked for from its arrays (a Row object per token would be
    most of the memory of a long text)."""

    def __init__(self, ann: "Annotation"):
        self._ann = ann

    def __len__(self):
        return len(self._ann.logprob)

    def __getitem__(self, n):
        if isinstance(n, slice):
            return [self[i] for i in range(*n.indices(len(self)))]
        a = self._ann
        n = range(len(self))[n]  # IndexError past the end, negative indices from the end
        p, tid = int(a.row_piece[n]), int(a.target[n])
        return Row(piece=p, token=a.pieces[p], id=tid, logprob=float(a.logprob[n]), rank=int(a.rank[n]),
                   top=[(a.tokens[i], float(q)) for i, q in zip(a.top_ids[n], a.top_probs[n])],
                   unknown=tid == UNK, end=tid == a.eos)


@dataclass(eq=False)
class Annotation:
    """What `annotate` computes; iterate it for the Rows (one per scored token).

    What grows with the text is held compactly: per token its log-probability, rank and top-k, per step
    each layer's h and tanh(c) at the page's 8 bits (`quantized`), and no gates at all (their saturation
    and the units' correlations with the features are summed up during the one pass). The float64
    activations (`hidden`, `cell`, `gates`, `states`) are computed again from the weights when asked for.
    """
    pieces: list[str]                 # the text cut into tokens (P,); an end of line without "\n" is ""
    piece_row: np.ndarray             # (P,) the Row scoring each piece, -1 for none
    piece_step: np.ndarray            # (P,) the step that read each piece, -1 for none (lines: ends)
    logprob: np.ndarray               # (N,) float64
    rank: np.ndarray                  # (N,) int64
    top_ids: np.ndarray               # (N, k) int64, most likely first
    top_probs: np.ndarray             # (N, k) float64
    target: np.ndarray                # (N,) int64: the id each row scores
    quantized: list[dict]             # per layer {"h", "c" (LSTMs)}: (H, S) uint8, 128 + round(127 v), unit-major
    step_piece: np.ndarray            # (S,) the piece each step read, -1 for a start token
    features: dict                    # name -> (S,) float64 feature of what each step read (NaN: a start token)
    score: Score                      # totals, the same figures as `charrnn eval`
    tokens: tuple[str, ...]           # the vocabulary, in id order
    cell_type: str
    cut: int = 0                      # characters cut off the end of the text (max_chars)
    text_chars: int = 0               # characters annotated
    eos: int = -1                     # the end token's id
    _r: list = field(default_factory=list, repr=False)          # per layer (kinds, H, F) correlations
    _saturation: list = field(default_factory=list, repr=False)
    _walk: object = field(default=None, repr=False)            # () -> the steps again, see _walk
    _full: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        self.rows = Rows(self)
        self.row_piece = np.flatnonzero(self.piece_row >= 0)  # (N,) the piece each row scores

    def __iter__(self):
        return iter(self.rows)

    def summary(self) -> str:
        """The totals as `charrnn annotate` reports them after writing the page."""
        s = self.score
        return f"{s.tokens:,} tokens, loss {s.loss:.4f} nats ({s.bits_per_token:.3f} bits) per token"

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def _activations(self):
        if self._full is None:
            chunks = list(self._walk())
            layers = len(chunks[0][1])
            hidden = [np.concatenate([h[k] for _, h, _, _ in chunks]) for k in range(layers)]
            cell = None if chunks[0][2] is None else \
                [np.concatenate([c[k] for _, _, c, _ in chunks]) for k in range(layers)]
            gates = [{name: np.concatenate([g[k][name] for _, _, _, g in chunks]) for name in chunks[0][3][k]}
                     for k in range(layers)]
            self._full = hidden, cell, gates
        return self._full

    @property
    def hidden(self) -> list[np.ndarray]:
        """Per layer (S, H) float64: h after each step (computed on first use: 8 bytes per unit and step)."""
        return self._activations()[0]

    @property
    def cell(self) -> list[np.ndarray] | None:
        """LSTMs: per layer (S, H) float64 tanh(c) after each step; None for the other cells."""
        return self._activations()[1]

    @property
    def gates(self) -> list[dict]:
        """Per layer {gate name: (S, H) float64}: the gate values at each step."""
        return self._activations()[2]

    def states(self, step: int) -> list[dict]:
        """The activations after one step: per layer {"h": (H,), "tanh_c": (H,) (LSTMs), "gates": {name: (H,)}}."""
        hidden, cell, gates = self._activations()
        return _layer_states(hidden, cell, gates, step)

    def each_step_states(self):
        """states(step) for every step in order, computed a chunk of steps at a time (memory bounded)."""
        for _, hidden, cell, gates in self._walk():
            for t in range(len(hidden[0])):
                yield _layer_states(hidden, cell, gates, t)

    def units_worth_a_look(self, per_layer: int = 6) -> list[dict]:
        """Per layer, the units whose value correlates most with a feature of the text.

        Returns dicts {"layer", "kind" ("h" or "c", meaning tanh(c)), "unit", "feature", "r"}, the
        strongest first within each layer; features that do not vary in this text are left out.
        """
        return _units_worth_a_look(self._r, per_layer)

    def saturation(self) -> list[dict]:
        """Per layer {gate: (left (H,), right (H,))}: the share of steps each unit's gate spends below 0.1
        (left) and above 0.9 (right). Empty dicts for the RNN, which has no gates."""
        return self._saturation


def _layer_states(hidden, cell, gates, step):
    out = []
    for k, h in enumerate(hidden):
        layer = {"h": h[step]}
        if cell is not None:
            layer["tanh_c"] = cell[k][step]
        layer["gates"] = {name: g[step] for name, g in gates[k].items()}
        out.append(layer)
    return out


def quantize(values: np.ndarray) -> np.ndarray:
    """(S, H) values in [-1, 1] -> (S, H) uint8: 128 + round(127 v), the page's 8 bits per value."""
    q = np.clip(np.rint(np.asarray(values, dtype=np.float64) * 127), -127, 127).astype(np.int16) + 128
    return q.astype(np.uint8)


class _Pearson:
    """Pearson's r of every unit with every feature, summed up a chunk of steps at a time.

    The features are known before the pass, so their means are too: the cross term is sum v (f - mean f),
    with no cancellation; each unit's spread is merged across chunks (Chan, Golub & LeVeque's pairwise
    update), so the result equals `correlations` on the whole (S, H) to rounding."""

    def __init__(self, H: int, feats: np.ndarray):
        keep = ~np.isnan(feats).any(axis=1)
        f = feats[keep]
        mean = f.mean(axis=0) if len(f) else np.zeros(feats.shape[1])
        self.centred = np.where(keep[:, None], feats - mean, 0.0)  # (S, F); 0 on left-out steps
        self.keep = keep
        self.fn = np.sqrt((self.centred * self.centred).sum(axis=0))  # (F,)
        self.n = 0
        self.mean, self.m2 = np.zeros(H), np.zeros(H)
        self.cross = np.zeros((H, feats.shape[1]))
        self.low, self.high = np.full(H, np.inf), np.full(H, -np.inf)

    def add(self, s0: int, values: np.ndarray):
        keep = self.keep[s0 : s0 + len(values)]
        v = values[keep]
        m = len(v)
        if not m:
            return
        self.cross += v.T @ self.centred[s0 : s0 + len(values)][keep]
        mean_b = v.mean(axis=0)
        m2_b = ((v - mean_b) ** 2).sum(axis=0)
        delta, n = mean_b - self.mean, self.n
        self.mean = self.mean + delta * (m / (n + m))
        self.m2 = self.m2 + m2_b + delta * delta * (n * m / (n + m))
        self.n = n + m
        self.low, self.high = np.minimum(self.low, v.min(axis=0)), np.maximum(self.high, v.max(axis=0))

    def r(self) -> np.ndarray:
        """(H, F); NaN for a unit or feature that does not vary."""
        vn = np.where(self.low < self.high, np.sqrt(self.m2), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.cross / np.outer(vn, self.fn)
        r[~np.isfinite(r)] = np.nan
        return r


def annotate(model, text: str, *, top_k: int = 5, max_chars: int | None = MAX_CHARS) -> Annotation:
    """Score `text` token by token and record every unit (see the module docstring).

    - model: an api.Model (params, config, vocab, lines)
    - text: the text; newlines are normalized; cut to max_chars characters (None: no limit)
    - top_k: how many guesses to keep per token
    Returns an Annotation. ConfigError when there is nothing to score or top_k < 1.
    """
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ConfigError(f"{option('top_k')} must be at least 1, got {top_k}")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 1):
        raise ConfigError(f"{option('max_chars')} must be at least 1, got {max_chars}")
    text = corpus.normalize_newlines(text)
    cut = 0
    if max_chars is not None and len(text) > max_chars:
        cut, text = len(text) - max_chars, text[:max_chars]
    vocab, config = model.vocab, model.config
    pieces, piece_row, piece_step, sequences = _layout(text, vocab, model.lines)
    if not any(len(targets) for _, targets, _ in sequences):
        raise CorpusError("nothing to annotate: the text needs at least two tokens"
                          + (" (or one non-empty line)" if model.lines else ""))
    k = min(top_k, config.vocab_size)
    weights = _float64_layers(model.params, config)
    step_piece = np.concatenate([steps for _, _, steps in sequences]).astype(np.int64)
    target = np.concatenate([targets for _, targets, _ in sequences]).astype(np.int64)  # (N,)
    features = _features(text, pieces, step_piece)
    S, N, H = len(step_piece), len(target), config.hidden

    def walk():
        return _walk(weights, config, sequences)

    lstm = STATES[config.cell] == 2
    kinds = ("h", "c") if lstm else ("h",)
    quantized = [{kind: np.empty((H, S), np.uint8) for kind in kinds} for _ in range(config.layers)]
    feats = np.stack([features[name] for name in FEATURES], axis=1)  # (S, F)
    pearson = [{kind: _Pearson(H, feats) for kind in kinds} for _ in range(config.layers)]
    saturating = [name for name in GATES_IN_CACHE.get(config.cell, {}) if name in SATURATING.get(config.cell, ())]
    shut = [{name: np.zeros(H, np.int64) for name in saturating} for _ in range(config.layers)]
    opened = [{name: np.zeros(H, np.int64) for name in saturating} for _ in range(config.layers)]
    logprob, rank = np.empty(N), np.empty(N, np.int64)
    top_ids, top_probs = np.empty((N, k), np.int64), np.empty((N, k))
    n = 0  # rows so far
    for s0, hidden, cell, gates, scored in _scored(walk(), sequences):
        for layer in range(config.layers):
            for kind, values in (("h", hidden[layer]), ("c", None if cell is None else cell[layer])):
                if kind in kinds:
                    quantized[layer][kind][:, s0 : s0 + len(values)] = quantize(values).T
                    pearson[layer][kind].add(s0, values)
            for name in saturating:
                shut[layer][name] += (gates[layer][name] < SATURATED_LOW).sum(axis=0)
                opened[layer][name] += (gates[layer][name] > SATURATED_HIGH).sum(axis=0)
        if not scored:
            continue
        logits = hidden[-1][:scored] @ weights["head_w"].T + weights["head_b"]  # (T, V)
        logp = loss.log_softmax(logits)  # (T, V)
        tgt = target[n : n + scored]
        picked = logp[np.arange(scored), tgt]
        logprob[n : n + scored] = picked
        rank[n : n + scored] = 1 + (logp > picked[:, None]).sum(axis=1)
        ids = np.argsort(-logp, axis=1, kind="stable")[:, :k]
        top_ids[n : n + scored] = ids
        top_probs[n : n + scored] = np.exp(np.take_along_axis(logp, ids, axis=1))
        n += scored
    assert n == N
    saturation = [{name: (shut[layer][name] / S, opened[layer][name] / S) for name in saturating}
                  for layer in range(config.layers)]
    r = [(kinds, np.stack([pearson[layer][kind].r() for kind in kinds])) for layer in range(config.layers)]
    score = Score(float(-logprob.sum()), N, int(np.count_nonzero(target == UNK)))
    return Annotation(
        pieces=pieces, piece_row=piece_row, piece_step=piece_step, logprob=logprob, rank=rank,
        top_ids=top_ids, top_probs=top_probs, target=target, quantized=quantized, step_piece=step_piece,
        features=features, score=score, tokens=tuple(_token_name(t) for t in vocab.tokens), cell_type=config.cell,
        cut=cut, text_chars=len(text), eos=vocab.eos, _r=r, _saturation=saturation, _walk=walk)


def _token_name(token: str) -> str:
    return {"<eos>": "end", "<unk>": "unknown", "<bos>": "start"}.get(token, token)


def _layout(text: str, vocab, lines: bool):
    """Cut the text into pieces and say which are read and which are scored.

    Returns (pieces, piece_row (P,), piece_step (P,), sequences): each sequence is (input ids (T,),
    target ids (<= T,), the piece each input step reads (T,), -1 for a start token), scored from a
    zero state; rows and steps are numbered in order across sequences.
    """
    pieces, piece_row, piece_step, sequences = [], [], [], []
    n_rows = n_steps = 0
    if not lines:
        pieces = tokenize(text, vocab.level)
        ids = vocab.encode(text).astype(np.int64)
        assert len(ids) == len(pieces)
        P = len(pieces)
        piece_step = list(range(P))
        piece_row = [-1] + list(range(P - 1)) if P else []
        sequences = [(ids, ids[1:], np.arange(P))] if P else []
        return pieces, np.array(piece_row, np.int64), np.array(piece_step, np.int64), sequences
    raw_lines = text.split("\n")
    for j, line in enumerate(raw_lines):
        line_pieces = tokenize(line, vocab.level) if line else []
        has_newline = j < len(raw_lines) - 1
        first = len(pieces)
        pieces += line_pieces
        if line and not line.isspace():  # a line eval scores (corpus.split_lines)
            ids = vocab.encode(line).astype(np.int64)
            T = len(ids) + 1
            piece_step += list(range(n_steps + 1, n_steps + T))  # step n_steps reads the start token
            piece_row += list(range(n_rows, n_rows + len(ids)))
            end_piece = len(pieces)
            pieces.append("\n" if has_newline else "")  # the end token is scored at the line's end
            piece_step.append(-1)
            piece_row.append(n_rows + len(ids))
            sequences.append((np.concatenate([[vocab.bos], ids]), np.concatenate([ids, [vocab.eos]]),
                              np.concatenate([[-1], np.arange(first, end_piece)])))
            n_steps += T
            n_rows += T
        else:
            piece_step += [-1] * len(line_pieces)
            piece_row += [-1] * len(line_pieces)
            if has_newline:
                pieces.append("\n")
                piece_step.append(-1)
                piece_row.append(-1)
    return pieces, np.array(piece_row, np.int64), np.array(piece_step, np.int64), sequences


def _float64_layers(params, config) -> dict:
    f = {name: np.asarray(p, dtype=np.float64) for name, p in params.items()}
    return {"embedding": f["embedding.weight"], "head_w": f["head.weight"], "head_b": f["head.bias"],
            "layers": [(f[f"rnn.weight_ih_l{k}"], f[f"rnn.bias_ih_l{k}"], f[f"rnn.weight_hh_l{k}"],
                        f[f"rnn.bias_hh_l{k}"], tuple(f[f"rnn.weight_{n}_l{k}"] for n in EXTRA[config.cell]))
                       for k in range(config.layers)]}


CHUNK = 1024  # steps computed together: the memory of a pass is a chunk's activations, not the text's


def _walk(weights, config, sequences):
    """Every sequence from a zero state through every layer with cells.step_forward, CHUNK steps at a
    time (each layer's state carried from chunk to chunk). Yields (first step, hidden, cell, gates): per
    layer h (T, H), tanh(c) (T, H) (LSTMs, else None) and {gate: (T, H)}, all float64."""
    chunk = CHUNK
    gate_at = GATES_IN_CACHE.get(config.cell, {})
    lstm = STATES[config.cell] == 2
    H, s0 = config.hidden, 0
    for inputs, _, _ in sequences:
        states = [tuple(np.zeros((1, H)) for _ in range(STATES[config.cell])) for _ in weights["layers"]]
        for t0 in range(0, len(inputs), chunk):
            x = weights["embedding"][inputs[t0 : t0 + chunk]]  # (T, E)
            T = len(x)
            hidden, cell, gates = [], [] if lstm else None, []
            for k, (w_ih, b_ih, w_hh, b_hh, extra) in enumerate(weights["layers"]):
                xp = x @ w_ih.T + b_ih  # (T, G*H): the chunk's input side in one product
                h = np.empty((T, H))
                c = np.empty((T, H)) if lstm else None
                g = {name: np.empty((T, H)) for name in gate_at}
                state = states[k]
                for t in range(T):
                    state, cache = cells.step_forward(config.cell, xp[t : t + 1], state, w_hh, b_hh, extra)
                    h[t] = state[0][0]
                    for name, field in gate_at.items():
                        g[name][t] = getattr(cache, field)[0]
                    if lstm:
                        c[t] = cache.tanh_c[0]  # every cell with a cell state keeps its tanh
                states[k] = state
                hidden.append(h)
                gates.append(g)
                if lstm:
                    cell.append(c)
                x = h
            yield s0, hidden, cell, gates
            s0 += T


def _scored(chunks, sequences):
    """_walk's chunks, each with how many of its first steps predict a target (a stream's last step does not)."""
    ends, targets, s = [], [], 0
    for inputs, tgt, _ in sequences:
        ends.append(s + len(inputs))
        targets.append(s + len(tgt))
        s += len(inputs)
    j = 0
    for s0, hidden, cell, gates in chunks:
        while s0 >= ends[j]:
            j += 1
        T = len(hidden[0])
        yield s0, hidden, cell, gates, max(0, min(T, targets[j] - s0))


def _features(text: str, pieces: list[str], step_piece: np.ndarray) -> dict:
    """Each step's features of the piece it read, as float64 (S,) arrays; NaN where a step read a start token.

    - inside quotes / brackets: after the piece, inside "..." or “...” / inside ( ), [ ], { }
    - position in line: the piece's column (0 at a line's first character)
    - start of word: a letter or digit after a character that is neither (or at the start)
    - uppercase: the piece starts with an uppercase letter; whitespace: the piece is all whitespace
    """
    per_piece = np.zeros((len(pieces), len(FEATURES)))
    inside_quote, depth, column, prev = False, 0, 0, ""
    for p, piece in enumerate(pieces):
        first = piece[:1]
        for ch in piece:
            if ch == '"':
                inside_quote = not inside_quote
            elif ch == "\u201c":
                inside_quote = True
            elif ch == "\u201d":
                inside_quote = False
            elif ch in _OPEN:
                depth += 1
            elif ch in _CLOSE:
                depth = max(0, depth - 1)
        per_piece[p] = (inside_quote, depth > 0, column, first.isalnum() and not prev.isalnum(),
                        first.isupper(), bool(piece) and piece.isspace())
        if piece:
            nl = piece.rfind("\n")
            column = len(piece) - nl - 1 if nl >= 0 else column + len(piece)
            prev = piece[-1]
    values = np.full((len(step_piece), len(FEATURES)), np.nan)
    read = step_piece >= 0
    values[read] = per_piece[step_piece[read]]
    return {name: values[:, j] for j, name in enumerate(FEATURES)}


def correlations(values: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pearson correlation of every unit with every feature: values (S, H), features (S, F) -> (H, F).

    Rows with a NaN feature are left out; a unit or feature that does not vary gives NaN.
    """
    keep = ~np.isnan(features).any(axis=1)
    v, f = values[keep], features[keep]
    v = v - v.mean(axis=0)
    f = f - f.mean(axis=0)
    vn, fn = np.sqrt((v * v).sum(axis=0)), np.sqrt((f * f).sum(axis=0))  # (H,), (F,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (v.T @ f) / np.outer(vn, fn)  # (H, F)
    r[~np.isfinite(r)] = np.nan
    return r


def _units_worth_a_look(correlated: list, per_layer: int) -> list[dict]:
    """Per layer: for each feature its strongest unit first (so one feature cannot fill the list), then the
    strongest of the rest; each unit once, as h or tanh(c), whichever correlates more; by |r|.

    - correlated: per layer (kind names, r (kinds, H, F))"""
    found = []
    for k, (kinds, r) in enumerate(correlated):
        strength = np.where(np.isnan(r), -1.0, np.abs(r))
        kind_of = strength.argmax(axis=0)  # (H, F): the kind that correlates more
        best = strength.max(axis=0)  # (H, F)
        if not (best >= 0).any():
            continue
        picks = []  # (unit, feature)
        for j in np.argsort(-best.max(axis=0), kind="stable"):  # the most clearly tracked features first
            if best[:, j].max() < 0 or len(picks) >= per_layer:
                continue
            taken = {u for u, _ in picks}
            for unit in np.argsort(-best[:, j], kind="stable"):
                if unit not in taken and best[unit, j] >= 0:
                    picks.append((int(unit), int(j)))
                    break
        taken = {u for u, _ in picks}
        for unit in np.argsort(-best.max(axis=1), kind="stable"):
            if len(picks) >= per_layer:
                break
            if int(unit) not in taken and best[unit].max() >= 0:
                picks.append((int(unit), int(best[unit].argmax())))
        rows = [{"layer": k, "kind": kinds[kind_of[u, j]], "unit": u, "feature": FEATURES[j],
                 "r": float(r[kind_of[u, j], u, j])} for u, j in picks]
        rows.sort(key=lambda row: -abs(row["r"]))
        found += rows
    return found
