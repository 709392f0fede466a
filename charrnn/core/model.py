"""The language model: embedding -> stacked recurrent layers -> linear head -> softmax.

Parameters live in one flat dict `name -> ndarray` with PyTorch's names and
layouts (see `param_shapes`), so a state dict loads into torch.nn.Embedding,
torch.nn.LSTM / GRU / RNN(batch_first=True) and torch.nn.Linear unchanged.

Training, sampling and scoring share one walk through the layer stack
(`walk`): layer 0's input projection (a row gather from a (V, G*H) table when
the vocabulary is small), then each layer's recurrence, run by the compiled
kernels (charrnn/core/kernels.py) or by the NumPy reference (charrnn/core/cells.py),
as `recurrence()` chooses.

Shape legend: B batch, T time steps, V vocabulary, E embedding, H hidden,
L layers, G gates per cell (1 rnn, 3 gru, 4 lstm).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from . import cells
from .loss import softmax_nll, softmax_nll_backward
from .cells import CELLS, EXTRA, GATES, STATES
from ..errors import ConfigError, option

DTYPES = ("float32", "float64")
# "bf16": the matrix products take bfloat16 inputs with float32 accumulation (core/bf16.py); the weights,
# the optimizer's state, the gate math, the loss and clipping stay float32
PRECISIONS = ("float32", "bf16")
KERNELS = ("numba", "numpy")  # CHARRNN_KERNELS: the compiled kernels (default) or the NumPy reference


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int                    # V: number of token ids, specials included
    cell: str = "lstm"                 # "rnn" (tanh), "lstm", "gru", "peephole" (LSTM) or "simple-gru"
    layers: int = 2                    # L: stacked recurrent layers
    hidden: int = 256                  # H: hidden units per layer
    embed: int = 64                    # E: embedding width
    dropout: float = 0.0               # inverted dropout between layers, training only
    dtype: str = "float32"             # "float32" (fast) or "float64" (gradient checks)
    forget_bias: float | None = None   # LSTM: set b_ih's forget slice to this (b_hh's to 0); None keeps the uniform init
    classes: int = 0                   # C: a classifier over C labels (charrnn/core/classifier.py); 0: a language model
    bidirectional: bool = False        # classifier: each layer also reads right to left
    pool: str = "mean"                 # classifier: pool the top outputs over time by "mean" or the "last" state
    precision: str = "float32"         # the matrix products' inputs: "float32", or "bf16" (see PRECISIONS)

    def __post_init__(self):
        for name in self.__dataclass_fields__:  # NumPy scalars (np.int64(8)) count as the numbers they hold
            value = getattr(self, name)
            if isinstance(value, np.generic):
                object.__setattr__(self, name, value.item())  # frozen: as dataclasses do in __init__
        if self.cell not in CELLS:
            raise ConfigError(f"{option('cell')} must be one of {', '.join(CELLS)}, got {self.cell!r:.40}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{option('dtype')} must be float32 or float64, got {self.dtype!r:.40}")
        for name in ("vocab_size", "layers", "hidden", "embed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
                raise ConfigError(f"{name if name == 'vocab_size' else option(name)} must be a positive integer below 2**31, got {value!r:.40}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{option('dropout')} must be in [0, 1), got {self.dropout}")
        if isinstance(self.classes, bool) or not isinstance(self.classes, int) or self.classes < 0 \
                or self.classes == 1:
            raise ConfigError(f"a classifier needs at least 2 labels, got {self.classes!r}")
        if self.bidirectional is not False and not (self.bidirectional is True and self.classes):
            raise ConfigError(f"{option('bidirectional')} layers need a classifier ({option('task', 'classify')}): a "
                              "language model reads left to right, and a right-to-left pass would see the character it must predict")
        if self.pool not in ("mean", "last"):
            raise ConfigError(f"{option('pool')} must be mean or last, got {self.pool!r:.40}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{option('precision')} must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r:.40}")
        if self.precision == "bf16" and (self.dtype != "float32" or self.classes):
            raise ConfigError(f"{option('precision', 'bf16')} is for float32 language models, not "
                              + ("classifiers or taggers" if self.classes else option("dtype", self.dtype)))

    @property
    def gates(self) -> int:
        return GATES[self.cell]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError("model config must be a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad model config: {exc}") from None


def matmul(a: np.ndarray, b: np.ndarray, config: ModelConfig, packed: np.ndarray | None = None) -> np.ndarray:
    """a @ b in the model's precision: NumPy's product, or bfloat16 inputs with float32 accumulation
    (packed: bf16.pack(b), when the caller has it: Weights.bf16)."""
    if config.precision == "bf16":
        from . import bf16

        return bf16.matmul(a, b, packed=packed)
    return a @ b


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in PyTorch's naming and layout.

    A classifier's head scores its C labels; a bidirectional one has each
    layer's right-to-left weights under PyTorch's `_reverse` names, and its
    layers above the first read both directions (D*H wide).
    """
    V, E, H, G = config.vocab_size, config.embed, config.hidden, config.gates
    D = 2 if config.bidirectional else 1
    shapes = {"embedding.weight": (V, E)}
    for k in range(config.layers):
        n_in = E if k == 0 else D * H
        for s in ("", "_reverse")[:D]:
            shapes[f"rnn.weight_ih_l{k}{s}"] = (G * H, n_in)
            shapes[f"rnn.weight_hh_l{k}{s}"] = (G * H, H)
            shapes[f"rnn.bias_ih_l{k}{s}"] = (G * H,)
            shapes[f"rnn.bias_hh_l{k}{s}"] = (G * H,)
            for name in EXTRA[config.cell]:  # e.g. the peepholes rnn.weight_ci_l{k}: torch.nn has no such names
                shapes[f"rnn.weight_{name}_l{k}{s}"] = (H,)
    out = config.classes or V
    shapes["head.weight"] = (out, D * H)
    shapes["head.bias"] = (out,)
    return shapes


def init_params(config: ModelConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fresh parameters, drawn from `rng`, in `config.dtype`.

    Recurrent weights and biases and the head are uniform(-1/sqrt(H), 1/sqrt(H))
    (the seed article's rule and PyTorch's); the embedding is N(0, 1) as in
    torch.nn.Embedding.
    """
    dtype = np.dtype(config.dtype)
    bound = 1.0 / np.sqrt(config.hidden)
    params = {}
    for name, shape in param_shapes(config).items():
        if name == "embedding.weight":
            params[name] = rng.standard_normal(shape).astype(dtype)
        else:
            params[name] = rng.uniform(-bound, bound, shape).astype(dtype)
    if config.cell in ("lstm", "peephole") and config.forget_bias is not None:
        H = config.hidden
        for k in range(config.layers):
            for s in ("", "_reverse") if config.bidirectional else ("",):
                params[f"rnn.bias_ih_l{k}{s}"][H : 2 * H] = config.forget_bias
                params[f"rnn.bias_hh_l{k}{s}"][H : 2 * H] = 0.0
    return params


def zero_state(config: ModelConfig, batch: int) -> tuple[np.ndarray, ...]:
    """The all-zero state: (h,) or (h, c) for lstm and peephole, each of shape (L, B, H)."""
    return tuple(np.zeros((config.layers, batch, config.hidden), dtype=config.dtype)
                 for _ in range(STATES[config.cell]))



@functools.cache
def recurrence():
    """The module that runs each layer's recurrence: `kernels` (compiled) or `cells` (the reference).

    CHARRNN_KERNELS=numpy chooses the reference. When numba cannot be loaded
    the reference runs too, after one warning that says why. Imported on first
    use, so that commands doing no model math never load numba.
    """
    choice = os.environ.get("CHARRNN_KERNELS", "numba").strip().lower() or "numba"
    if choice not in KERNELS:
        raise ConfigError(f"CHARRNN_KERNELS must be numba or numpy, got {choice!r}")
    if choice == "numpy":
        return cells
    try:
        from . import kernels
    except Exception as exc:  # numba missing, or broken on this machine
        warnings.warn(f"the compiled kernels are unavailable ({type(exc).__name__}: {exc}); "
                      f"running the NumPy reference, which is slower", RuntimeWarning, stacklevel=2)
        return cells
    return kernels


def fast_precision() -> str:
    """The products' precision a fresh float32 language model takes when none is given: "bf16" where this
    machine runs it compiled (the kernels and the AVX512-BF16 tiles: at equal steps the same loss as float32,
    in less time, bench/precision.py), else "float32". A saved setting: the run's numbers then follow it on
    any machine."""
    from . import bf16
    return "bf16" if recurrence() is not cells and bf16.microkernels() is not None else "float32"


def _check_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu":
        raise ConfigError(f"token ids must be integers, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ConfigError(f"token ids must lie in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]")
    return tokens


# ---------------------------------------------------------------- the walk through the layers

# Layer 0's table is used up to this size (word vocabularies can be large).
_TABLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Weights:
    """The parameters laid out for `walk`; built by `prepare`, read only."""

    config: ModelConfig
    embedding: np.ndarray          # (V, E)
    table: np.ndarray | None       # (V, G*H): embedding @ W_ih_l0.T + b_ih_l0, or None
    w_ih: tuple                    # per layer: W_ih (G*H, E or H)
    b_ih: tuple                    # per layer: (G*H,)
    w_hh: tuple                    # per layer: W_hh (G*H, H)
    w_hh_t: tuple                  # per layer: W_hh transposed, contiguous (H, G*H): the step product's operand
    b_hh: tuple                    # per layer: (G*H,)
    head_w_t: np.ndarray           # head.weight transposed, contiguous (H, V)
    head_b: np.ndarray             # (V,)
    extra: tuple = ()              # per layer: the cell's EXTRA parameters, a tuple of (H,) arrays
    bf16: dict | None = None       # --precision bf16: the forward products' weights packed once (bf16.pack):
                                   # "w_ih{k}" (W_ih.T), "w_hh_t{k}", "head"; None in float32


def prepare(params, config, *, table: bool = True) -> Weights:
    """Lay the parameters out for `walk`.

    - params: parameter dict (see param_shapes); config: its ModelConfig
    - table: build layer 0's (V, G*H) table (unless over _TABLE_BYTES)
    Returns Weights holding copies (transposes, the table): prepare again after
    the parameters change.
    """
    L, G, H, V = config.layers, config.gates, config.hidden, config.vocab_size
    w_ih = tuple(params[f"rnn.weight_ih_l{k}"] for k in range(L))
    b_ih = tuple(params[f"rnn.bias_ih_l{k}"] for k in range(L))
    w_hh = tuple(params[f"rnn.weight_hh_l{k}"] for k in range(L))
    lookup = None
    if table and V * G * H * np.dtype(config.dtype).itemsize <= _TABLE_BYTES:
        lookup = matmul(params["embedding.weight"], w_ih[0].T, config)  # (V, G*H)
        lookup += b_ih[0]
    w_hh_t = tuple(np.ascontiguousarray(w.T) for w in w_hh)
    head_w_t = np.ascontiguousarray(params["head.weight"].T)
    packed = None
    if config.precision == "bf16":  # once, not per product: sampling's single steps would repack every token
        from . import bf16

        packed = {"head": bf16.pack(head_w_t)}
        for k in range(L):
            packed[f"w_ih{k}"] = bf16.pack(w_ih[k].T)
            packed[f"w_hh_t{k}"] = bf16.pack(w_hh_t[k])
    return Weights(
        config=config, embedding=params["embedding.weight"], table=lookup, w_ih=w_ih, b_ih=b_ih, w_hh=w_hh,
        w_hh_t=w_hh_t, b_hh=tuple(params[f"rnn.bias_hh_l{k}"] for k in range(L)),
        head_w_t=head_w_t, head_b=params["head.bias"],
        extra=tuple(tuple(params[f"rnn.weight_{n}_l{k}"] for n in EXTRA[config.cell]) for k in range(L)),
        bf16=packed)


class Layer(NamedTuple):
    """What a layer's backward pass needs of its forward pass."""

    x: np.ndarray | None              # its input (T, B, H); None for layer 0, which reads token ids
    rec: object                       # the recurrence's cache (kernels.Chunk or cells.Steps), or a list of
                                      # them, one per direction (the classifier)
    drop: np.ndarray | None           # the dropout mask of its output, or None


def walk(weights: Weights, tokens_tm, state, *, keep: bool, dropout_rng=None, table: bool = True):
    """Run the layer stack over time-major token ids, up to (not including) the head.

    - weights: from prepare; tokens_tm: token ids, of shape (T, B), already checked
    - state: initial state, tuple of (L, B, H) arrays
    - keep: keep what `backward` needs (training), or nothing (sampling, scoring)
    - dropout_rng: a Generator to drop out each layer's output (config.dropout > 0), or None
    - table: project layer 0 through weights.table when it has one (False: by the product)
    Returns (top, state, layers):
    - top: the last layer's output after dropout, of shape (T, B, H)
    - state: final state, tuple of (L, B, H) arrays
    - layers: per layer a Layer (its input, the recurrence's cache, the dropout mask);
      empty when keep is False
    """
    config, rec = weights.config, recurrence()
    if config.precision != "float32" and rec is cells:
        raise ConfigError(f"{option('precision', config.precision)} needs the compiled kernels: unset CHARRNN_KERNELS")
    T, B = tokens_tm.shape
    dtype = np.dtype(config.dtype)
    p = config.dropout if dropout_rng is not None else 0.0
    x, layers, final = None, [], [[] for _ in state]
    for k in range(config.layers):
        if k == 0 and table and weights.table is not None:
            xp = weights.table[tokens_tm]  # (T, B, G*H): a row gather
        else:
            below = weights.embedding[tokens_tm.reshape(-1)] if k == 0 else x.reshape(T * B, -1)
            xp = matmul(below, weights.w_ih[k].T, config, bf16_operand(weights, f"w_ih{k}"))  # (T*B, G*H): one product
            xp += weights.b_ih[k]
            xp = xp.reshape(T, B, -1)
        hs, layer_state, rec_cache = rec.sequence_forward(
            config.cell, xp, tuple(s[k] for s in state), weights.w_hh[k], weights.b_hh[k],
            keep=keep, W_hh_t=weights.w_hh_t[k], extra=weights.extra[k], **_precision(weights, k))
        del xp  # free the projection before the next layer makes its own
        for acc, s in zip(final, layer_state):
            acc.append(s)
        drop = _dropout_mask(hs.shape, p, dropout_rng, dtype) if p > 0.0 else None
        if keep:
            layers.append(Layer(x, rec_cache, drop))
        x = hs if drop is None else hs * drop  # (T, B, H)
    return x, tuple(np.stack(acc) for acc in final), layers


def _precision(weights, k: int) -> dict:
    """The recurrence's precision keywords (and layer k's packed W_hh.T): only where it is not float32
    (cells.py takes none)."""
    config = weights.config
    if config.precision == "float32":
        return {}
    return {"precision": config.precision, "packed": bf16_operand(weights, f"w_hh_t{k}")}


def bf16_operand(weights, name: str):
    """The packed bf16 operand `name` of weights.bf16, or None (float32, or weights without it)."""
    return None if weights.bf16 is None else weights.bf16.get(name)


def _dropout_mask(shape, p, rng, dtype):
    """Inverted dropout: keep with probability 1-p and scale by 1/(1-p)."""
    keep = rng.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


# ---------------------------------------------------------------- training: loss and gradients


def forward(params, config, inputs, targets=None, mask=None, state=None, *,
            dropout_rng=None, want_logits=False, weights=None):
    """Run the model over a batch of token ids.

    - params: parameter dict (see param_shapes)
    - inputs: token ids, of shape (B, T)
    - targets: next-token ids, of shape (B, T), or None to skip the loss
    - mask: (B, T), nonzero where a position is scored, or None to score all
    - state: initial state, tuple of (L, B, H) arrays, or None for zeros
    - dropout_rng: a Generator to train with dropout (config.dropout > 0); None evaluates
    - want_logits: also return the logits
    - weights: `prepare(params, config)`, laid out once for every block of a step (see
      parallel.prepare), or None to lay them out here
    Returns (loss, state, cache):
    - loss: mean negative log-likelihood per scored token in nats (0.0 when nothing is scored or no targets)
    - state: final state, tuple of (L, B, H) arrays
    - cache: what `backward` needs; cache["logits"] (B, T, V) when want_logits;
      cache["nll_sum"] and cache["count"]: total NLL and the number of scored tokens
    """
    inputs = _check_tokens(inputs, config.vocab_size)
    if inputs.ndim != 2:
        raise ConfigError(f"inputs must have shape (B, T), got {inputs.shape}")
    B, T = inputs.shape
    dtype = np.dtype(config.dtype)
    if state is None:
        state = zero_state(config, B)
    tokens_tm = inputs.T  # (T, B)
    table = uses_table(config, tokens_tm.size)  # decided by this block's own size, whoever prepared the weights
    if weights is None:
        weights = prepare(params, config, table=table)
    x, final_state, layers = walk(weights, tokens_tm, state, keep=True, dropout_rng=dropout_rng, table=table)

    top = x.reshape(T * B, config.hidden)
    logits = matmul(top, weights.head_w_t, config, bf16_operand(weights, "head"))  # (T*B, V)
    logits += params["head.bias"]
    cache = {"inputs": inputs, "layers": layers, "top": top, "B": B, "T": T, "nll_sum": 0.0, "count": 0}
    if want_logits:
        cache["logits"] = logits.reshape(T, B, -1).transpose(1, 0, 2).copy()  # (B, T, V)
    if targets is None:
        return 0.0, final_state, cache

    targets = _check_tokens(targets, config.vocab_size)
    if targets.shape != inputs.shape:
        raise ConfigError(f"targets shape {targets.shape} differs from inputs shape {inputs.shape}")
    tgt = targets.T.reshape(-1)  # (T*B,)
    weight = None
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != inputs.shape:
            raise ConfigError(f"mask shape {mask.shape} differs from inputs shape {inputs.shape}")
        weight = (mask.T.reshape(-1) != 0).astype(dtype)  # (T*B,)
    probs, nll = softmax_nll(logits, tgt)  # (T*B, V), (T*B,): probs is reused as d logits in backward
    if weight is None:
        count = T * B
        nll_sum = float(nll.sum(dtype=np.float64))
    else:
        count = int(weight.sum())
        nll_sum = float((nll * weight).sum(dtype=np.float64))
    loss = nll_sum / count if count else 0.0
    cache.update(probs=probs, tgt=tgt, weight=weight, nll_sum=nll_sum, count=count)
    return loss, final_state, cache


def backward(params, config, cache, d_state=None, count=None):
    """Gradients of the mean loss from `forward`.

    - params, config: as given to forward
    - cache: from forward (with targets)
    - d_state: gradient w.r.t. the final state, tuple of (L, B, H) arrays, or None (truncated BPTT)
    - count: the mean's denominator, when it is not this chunk's own count of scored
      tokens (a batch taken in chunks or row blocks: see parallel.py)
    Returns (grads, d_state0):
    - grads: dict with the same keys and shapes as params
    - d_state0: gradient w.r.t. the initial state, tuple of (L, B, H) arrays
    """
    B, T, H = cache["B"], cache["T"], config.hidden
    weight, tgt = cache["weight"], cache["tgt"]
    count = cache["count"] if count is None else count
    dtype = np.dtype(config.dtype)
    rec = recurrence()
    grads = {}

    d_logits = softmax_nll_backward(cache.pop("probs"), tgt, count, weight)  # (T*B, V), in place
    grads["head.weight"] = matmul(d_logits.T, cache["top"], config)  # (V, H)
    grads["head.bias"] = d_logits.sum(axis=0)  # (V,)
    d_x = matmul(d_logits, params["head.weight"], config).reshape(T, B, H)  # (T, B, H)

    d_state0 = [[None] * config.layers for _ in range(STATES[config.cell])]
    for k in range(config.layers - 1, -1, -1):
        layer = cache["layers"][k]
        if layer.drop is not None:
            d_x *= layer.drop
        d_layer_state = None if d_state is None else tuple(s[k] for s in d_state)
        d_xp, d_s0, g = rec.sequence_backward(d_x, d_layer_state, layer.rec)  # d_xp (T, B, G*H)
        grads[f"rnn.weight_hh_l{k}"] = g["W_hh"]
        grads[f"rnn.bias_hh_l{k}"] = g["b_hh"]
        for name in EXTRA[config.cell]:
            grads[f"rnn.weight_{name}_l{k}"] = g[name]
        for acc, s in zip(d_state0, d_s0):
            acc[k] = s
        d_xp_flat = d_xp.reshape(T * B, -1)  # (T*B, G*H)
        # every cell but gru: b_ih and b_hh enter the same sum, so their gradients are equal
        grads[f"rnn.bias_ih_l{k}"] = d_xp_flat.sum(axis=0) if config.cell == "gru" else g["b_hh"].copy()
        W_ih = params[f"rnn.weight_ih_l{k}"]
        if k > 0:
            grads[f"rnn.weight_ih_l{k}"] = matmul(d_xp_flat.T, layer.x.reshape(T * B, H), config)  # (G*H, H)
            d_x = matmul(d_xp_flat, W_ih, config).reshape(T, B, H)  # (T, B, H)
        else:
            tokens = cache["inputs"].T.reshape(-1)  # (T*B,)
            grads["rnn.weight_ih_l0"], grads["embedding.weight"] = _embedding_backward(
                params, config, tokens, d_xp_flat)
    ordered = {name: grads[name].astype(dtype, copy=False) for name in params}
    return ordered, tuple(np.stack(acc) for acc in d_state0)


# ---------------------------------------------------------------- layer 0's input side


def uses_table(config, n_tokens: int) -> bool:
    """Whether layer 0 projects through a (V, G*H) table: when V is small next to the batch."""
    return config.vocab_size <= n_tokens


def _embedding_backward(params, config, tokens, d_xp_flat):
    """Gradients of layer 0's input side from d xp (T*B, G*H): (d W_ih_l0, d embedding).

    - tokens: (T*B,) time-major token ids
    With the table path, d table (V, G*H) sums d xp's rows by token: the rows
    are sorted by token once, so each token's rows form one contiguous block
    with one sum (np.add.at over 6400 x 1024 rows is ten times slower, and a
    one-hot product costs V times the rows). The two small products then give
    both gradients.
    """
    emb, W = params["embedding.weight"], params["rnn.weight_ih_l0"]
    if uses_table(config, tokens.size):
        order = np.argsort(tokens, kind="stable")
        sorted_tokens, rows = tokens[order].astype(np.intp), d_xp_flat[order]  # (T*B,), (T*B, G*H)
        bounds = np.flatnonzero(np.diff(sorted_tokens, prepend=-1, append=config.vocab_size))
        d_table = np.zeros((config.vocab_size, d_xp_flat.shape[1]), dtype=d_xp_flat.dtype)  # (V, G*H)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            rows[start:stop].sum(axis=0, out=d_table[sorted_tokens[start]])
        return matmul(d_table.T, emb, config), matmul(d_table, W, config)  # (G*H, E), (V, E)
    d_W = matmul(d_xp_flat.T, emb[tokens], config)  # (G*H, E)
    d_emb = np.zeros_like(emb)
    np.add.at(d_emb, tokens, matmul(d_xp_flat, W, config))  # rows (T*B, E) added to their tokens
    return d_W, d_emb
