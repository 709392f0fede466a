"""The language model: embedding -> stacked recurrent layers -> linear head -> softmax.

Parameters live in one flat dict `name -> ndarray` with PyTorch's names and
layouts (see `param_shapes`), so a state dict loads into torch.nn.Embedding,
torch.nn.LSTM / GRU / RNN(batch_first=True) and torch.nn.Linear unchanged.

Shape legend: B batch, T time steps, V vocabulary, E embedding, H hidden,
L layers, G gates per cell (1 rnn, 3 gru, 4 lstm).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import cells
from .errors import ConfigError

CELLS = ("rnn", "lstm", "gru")
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int                    # V: number of token ids, specials included
    cell: str = "lstm"                 # "rnn" (tanh), "lstm" or "gru"
    layers: int = 2                    # L: stacked recurrent layers
    hidden: int = 256                  # H: hidden units per layer
    embed: int = 64                    # E: embedding width
    dropout: float = 0.0               # inverted dropout between layers, training only
    dtype: str = "float32"             # "float32" (fast) or "float64" (gradient checks)
    forget_bias: float | None = None   # LSTM: set b_ih's forget slice to this (b_hh's to 0); None keeps the uniform init

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose float32 or float64")
        for name in ("vocab_size", "layers", "hidden", "embed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")

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


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in PyTorch's naming and layout."""
    V, E, H, G = config.vocab_size, config.embed, config.hidden, config.gates
    shapes = {"embedding.weight": (V, E)}
    for k in range(config.layers):
        n_in = E if k == 0 else H
        shapes[f"rnn.weight_ih_l{k}"] = (G * H, n_in)
        shapes[f"rnn.weight_hh_l{k}"] = (G * H, H)
        shapes[f"rnn.bias_ih_l{k}"] = (G * H,)
        shapes[f"rnn.bias_hh_l{k}"] = (G * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
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
    if config.cell == "lstm" and config.forget_bias is not None:
        H = config.hidden
        for k in range(config.layers):
            params[f"rnn.bias_ih_l{k}"][H : 2 * H] = config.forget_bias
            params[f"rnn.bias_hh_l{k}"][H : 2 * H] = 0.0
    return params


def zero_state(config: ModelConfig, batch: int) -> tuple[np.ndarray, ...]:
    """The all-zero state: (h,) or (h, c) for lstm, each of shape (L, B, H)."""
    n = 2 if config.cell == "lstm" else 1
    return tuple(np.zeros((config.layers, batch, config.hidden), dtype=config.dtype) for _ in range(n))


def _check_tokens(tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.dtype.kind not in "iu":
        raise ConfigError(f"token ids must be integers, got dtype {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ConfigError(f"token ids must lie in [0, {vocab_size}), got range [{tokens.min()}, {tokens.max()}]")
    return tokens


def _uses_table(config, n_tokens: int) -> bool:
    """Whether layer 0 projects through a (V, G*H) table: when V is small next to the batch."""
    return config.vocab_size <= n_tokens


def _input_projection(params, config, tokens_tm):
    """Layer 0's W_ih x + bias for time-major token ids (T, B) -> (T, B, G*H).

    When the vocabulary is small, project the whole embedding table once (V, G*H)
    and gather rows: far cheaper than a (T*B, E) @ (E, G*H) product.
    """
    emb, W = params["embedding.weight"], params["rnn.weight_ih_l0"]
    b = cells.input_bias(config.cell, params["rnn.bias_ih_l0"], params["rnn.bias_hh_l0"])
    if _uses_table(config, tokens_tm.size):
        table = emb @ W.T  # (V, G*H)
        table += b
        return table[tokens_tm]  # (T, B, G*H)
    T, B = tokens_tm.shape
    xp = emb[tokens_tm.reshape(-1)] @ W.T  # (T*B, G*H)
    xp += b
    return xp.reshape(T, B, -1)


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
    if _uses_table(config, tokens.size):
        order = np.argsort(tokens, kind="stable")
        sorted_tokens, rows = tokens[order].astype(np.intp), d_xp_flat[order]  # (T*B,), (T*B, G*H)
        bounds = np.flatnonzero(np.diff(sorted_tokens, prepend=-1, append=config.vocab_size))
        d_table = np.zeros((config.vocab_size, d_xp_flat.shape[1]), dtype=d_xp_flat.dtype)  # (V, G*H)
        for start, stop in zip(bounds[:-1], bounds[1:]):
            rows[start:stop].sum(axis=0, out=d_table[sorted_tokens[start]])
        return d_table.T @ emb, d_table @ W  # (G*H, E), (V, E)
    d_W = d_xp_flat.T @ emb[tokens]  # (G*H, E)
    d_emb = np.zeros_like(emb)
    np.add.at(d_emb, tokens, d_xp_flat @ W)  # rows (T*B, E) added to their tokens
    return d_W, d_emb


def _dropout_mask(shape, p, rng, dtype):
    """Inverted dropout: keep with probability 1-p and scale by 1/(1-p)."""
    keep = rng.random(shape, dtype=np.float64 if dtype == np.float64 else np.float32) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


def forward(params, config, inputs, targets=None, mask=None, state=None, *,
            dropout_rng=None, want_logits=False):
    """Run the model over a batch of token ids.

    - params: parameter dict (see param_shapes)
    - inputs: token ids, of shape (B, T)
    - targets: next-token ids, of shape (B, T), or None to skip the loss
    - mask: (B, T), nonzero where a position is scored, or None to score all
    - state: initial state, tuple of (L, B, H) arrays, or None for zeros
    - dropout_rng: a Generator to train with dropout (config.dropout > 0); None evaluates
    - want_logits: also return the logits
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
    p = config.dropout if dropout_rng is not None else 0.0
    tokens_tm = inputs.T  # (T, B)

    x = None
    layers, dropouts, final = [], [], [[] for _ in state]
    for k in range(config.layers):
        if k == 0:
            xp = _input_projection(params, config, tokens_tm)  # (T, B, G*H)
        else:
            xp = x.reshape(T * B, -1) @ params[f"rnn.weight_ih_l{k}"].T  # (T*B, G*H): one product
            xp += cells.input_bias(config.cell, params[f"rnn.bias_ih_l{k}"], params[f"rnn.bias_hh_l{k}"])
            xp = xp.reshape(T, B, -1)
        hs, layer_state, layer_cache = cells.forward(
            config.cell, xp, tuple(s[k] for s in state),
            params[f"rnn.weight_hh_l{k}"], params[f"rnn.bias_hh_l{k}"])
        layer_cache["x"] = x  # input to this layer (None for layer 0)
        layers.append(layer_cache)
        for acc, s in zip(final, layer_state):
            acc.append(s)
        if p > 0.0:
            drop = _dropout_mask(hs.shape, p, dropout_rng, dtype)
            x = hs * drop  # (T, B, H)
        else:
            drop = None
            x = hs
        dropouts.append(drop)
    final_state = tuple(np.stack(acc) for acc in final)

    top = x.reshape(T * B, config.hidden)
    logits = top @ params["head.weight"].T  # (T*B, V)
    logits += params["head.bias"]
    cache = {"inputs": inputs, "layers": layers, "dropouts": dropouts, "top": top,
             "B": B, "T": T, "nll_sum": 0.0, "count": 0}
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
    # log-softmax with the row maximum subtracted; `probs` is reused as d logits in backward
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)  # (T*B, V)
    sums = probs.sum(axis=1)  # (T*B,)
    nll = np.log(sums) - logits[np.arange(T * B), tgt]  # (T*B,)
    probs /= sums[:, None]
    if weight is None:
        count = T * B
        nll_sum = float(nll.sum(dtype=np.float64))
    else:
        count = int(weight.sum())
        nll_sum = float((nll * weight).sum(dtype=np.float64))
    loss = nll_sum / count if count else 0.0
    cache.update(probs=probs, tgt=tgt, weight=weight, nll_sum=nll_sum, count=count)
    return loss, final_state, cache


def backward(params, config, cache, d_state=None):
    """Gradients of the mean loss from `forward`.

    - params, config: as given to forward
    - cache: from forward (with targets)
    - d_state: gradient w.r.t. the final state, tuple of (L, B, H) arrays, or None (truncated BPTT)
    Returns (grads, d_state0):
    - grads: dict with the same keys and shapes as params
    - d_state0: gradient w.r.t. the initial state, tuple of (L, B, H) arrays
    """
    B, T, H = cache["B"], cache["T"], config.hidden
    count, weight, tgt = cache["count"], cache["weight"], cache["tgt"]
    dtype = np.dtype(config.dtype)
    grads = {}

    # softmax cross-entropy: d logits = (softmax - onehot) / count on scored rows
    d_logits = cache.pop("probs")  # (T*B, V), reused in place
    d_logits[np.arange(T * B), tgt] -= 1.0
    if weight is not None:
        d_logits *= weight[:, None]
    d_logits *= dtype.type(1.0 / count) if count else dtype.type(0.0)
    grads["head.weight"] = d_logits.T @ cache["top"]  # (V, H)
    grads["head.bias"] = d_logits.sum(axis=0)  # (V,)
    d_x = (d_logits @ params["head.weight"]).reshape(T, B, H)  # (T, B, H)

    d_state0 = [[None] * config.layers for _ in range(2 if config.cell == "lstm" else 1)]
    for k in range(config.layers - 1, -1, -1):
        layer = cache["layers"][k]
        if cache["dropouts"][k] is not None:
            d_x *= cache["dropouts"][k]
        d_layer_state = None if d_state is None else tuple(s[k] for s in d_state)
        d_xp, d_s0, g = cells.backward(d_x, d_layer_state, layer)  # d_xp (T, B, G*H)
        grads[f"rnn.weight_hh_l{k}"] = g["W_hh"]
        grads[f"rnn.bias_hh_l{k}"] = g["b_hh"]
        for acc, s in zip(d_state0, d_s0):
            acc[k] = s
        d_xp_flat = d_xp.reshape(T * B, -1)  # (T*B, G*H)
        # rnn/lstm: b_ih and b_hh enter the same sum, so their gradients are equal
        grads[f"rnn.bias_ih_l{k}"] = d_xp_flat.sum(axis=0) if config.cell == "gru" else g["b_hh"].copy()
        W_ih = params[f"rnn.weight_ih_l{k}"]
        if k > 0:
            grads[f"rnn.weight_ih_l{k}"] = d_xp_flat.T @ layer["x"].reshape(T * B, H)  # (G*H, H)
            d_x = (d_xp_flat @ W_ih).reshape(T, B, H)  # (T, B, H)
        else:
            tokens = cache["inputs"].T.reshape(-1)  # (T*B,)
            grads["rnn.weight_ih_l0"], grads["embedding.weight"] = _embedding_backward(
                params, config, tokens, d_xp_flat)
    ordered = {name: grads[name].astype(dtype, copy=False) for name in params}
    return ordered, tuple(np.stack(acc) for acc in d_state0)


def step(params, config, tokens, state):
    """One time step for sampling, through the same cell code as `forward`.

    - tokens: token ids, of shape (B,)
    - state: tuple of (L, B, H) arrays
    Returns (logits, state): logits of shape (B, V); the new state, tuple of (L, B, H) arrays.
    """
    tokens = _check_tokens(tokens, config.vocab_size)
    x = None
    new = [[] for _ in state]
    for k in range(config.layers):
        if k == 0:
            xp = params["embedding.weight"][tokens] @ params["rnn.weight_ih_l0"].T  # (B, G*H)
        else:
            xp = x @ params[f"rnn.weight_ih_l{k}"].T  # (B, G*H)
        xp += cells.input_bias(config.cell, params[f"rnn.bias_ih_l{k}"], params[f"rnn.bias_hh_l{k}"])
        layer_state = cells.step(config.cell, xp, tuple(s[k] for s in state),
                                 params[f"rnn.weight_hh_l{k}"], params[f"rnn.bias_hh_l{k}"])
        for acc, s in zip(new, layer_state):
            acc.append(s)
        x = layer_state[0]
    logits = x @ params["head.weight"].T  # (B, V)
    logits += params["head.bias"]
    return logits, tuple(np.stack(acc) for acc in new)


def loss_and_grads(params, config, inputs, targets, mask=None, state=None, dropout_rng=None):
    """forward + backward for one chunk: returns (loss, grads, final_state)."""
    loss, final_state, cache = forward(params, config, inputs, targets, mask, state,
                                       dropout_rng=dropout_rng)
    grads, _ = backward(params, config, cache)
    return loss, grads, final_state


# ---------------------------------------------------------------- prepared steps and forward-only scoring
# Sampling and eval run the model many times with the same parameters. What
# does not change between calls is prepared once (`prepare`): layer 0's input
# projection as a (V, G*H) table with its bias folded in, so a step's layer-0
# product becomes a row lookup; each layer's input bias; the LSTM constants,
# whose input scaling is folded into the LSTM's weights, biases and table.
# Steps then write into preallocated buffers. The cell equations stay in
# cells.py: these functions call its step kernels, so there is one copy of them.

# Layer 0's table is used up to this size (word vocabularies can be large).
_TABLE_BYTES = 64 << 20


@dataclass(frozen=True)
class Prepared:
    """What `step_prepared` and `score_chunk` reuse across calls; built by `prepare`."""

    config: ModelConfig
    embedding: np.ndarray          # (V, E)
    table: np.ndarray | None       # (V, G*H): embedding @ W_ih_l0.T + input bias, or None when too large
    w_ih_t: tuple                  # per layer: W_ih transposed, contiguous, (E or H, G*H)
    b_in: tuple                    # per layer: input bias (G*H,) (see cells.input_bias)
    w_hh_t: tuple                  # per layer: W_hh transposed, contiguous, (H, G*H), as cells' kernels take it
    b_hn: tuple                    # per layer: gru's b_hn (H,), else None
    head_w_t: np.ndarray           # head.weight transposed, contiguous, (H, V)
    head_b: np.ndarray             # (V,)
    # For the LSTM, table, w_ih_t, b_in and w_hh_t are scaled column-wise by
    # lstm_constants' `pre` (0.5 on i, f, o), so its steps take pre=None.


def prepare(params, config) -> Prepared:
    """Precompute what every step needs from the parameters.

    - params: parameter dict (see param_shapes); config: its ModelConfig
    Returns a Prepared: copies (transposed weights, the table), so prepare again
    after the parameters change. Contiguous transposes: BLAS multiplies them
    faster than transposed views.
    """
    L, H, G, V = config.layers, config.hidden, config.gates, config.vocab_size
    dtype = np.dtype(config.dtype)
    # (G*H,) per gate column: the LSTM's fused nonlinearity halves i, f, o first
    scale = cells.lstm_constants(H, dtype)[0] if config.cell == "lstm" else np.ones(G * H, dtype)
    b_in = tuple(scale * cells.input_bias(config.cell, params[f"rnn.bias_ih_l{k}"], params[f"rnn.bias_hh_l{k}"])
                 for k in range(L))
    w_ih_t = tuple(np.multiply(params[f"rnn.weight_ih_l{k}"].T, scale, order="C") for k in range(L))
    table = None
    if V * G * H * dtype.itemsize <= _TABLE_BYTES:
        table = params["embedding.weight"] @ w_ih_t[0]  # (V, G*H)
        table += b_in[0]
    return Prepared(
        config=config,
        embedding=params["embedding.weight"],
        table=table,
        w_ih_t=w_ih_t,
        b_in=b_in,
        w_hh_t=tuple(np.multiply(params[f"rnn.weight_hh_l{k}"].T, scale, order="C") for k in range(L)),
        b_hn=tuple(params[f"rnn.bias_hh_l{k}"][2 * H :] if config.cell == "gru" else None for k in range(L)),
        head_w_t=np.ascontiguousarray(params["head.weight"].T),
        head_b=params["head.bias"],
    )


@dataclass(frozen=True)
class StepWork:
    """Preallocated buffers for `step_prepared` at one batch size B; see `step_work`."""

    xp: tuple                  # per layer: (B, G*H) input projection
    gates: np.ndarray          # (B, G*H) activated gates (scratch)
    scratch: np.ndarray        # (B, H): lstm's tanh(c'), gru's W_hn h + b_hn
    g: np.ndarray              # (B, H): lstm's tanh gate (scratch)
    emb: np.ndarray | None     # (B, E) embedded tokens when there is no table
    logits: np.ndarray         # (B, V)


def step_work(prepared: Prepared, batch: int) -> StepWork:
    """Buffers for steps of `batch` samples."""
    c = prepared.config
    GH, dtype = c.gates * c.hidden, np.dtype(c.dtype)
    return StepWork(
        xp=tuple(np.empty((batch, GH), dtype) for _ in range(c.layers)),
        gates=np.empty((batch, GH), dtype),
        scratch=np.empty((batch, c.hidden), dtype),
        g=np.empty((batch, c.hidden), dtype),
        emb=None if prepared.table is not None else np.empty((batch, c.embed), dtype),
        logits=np.empty((batch, c.vocab_size), dtype),
    )


def step_prepared(prepared: Prepared, tokens, state, out, work: StepWork) -> np.ndarray:
    """One time step into preallocated buffers: the same numbers as `step`, with fewer passes.

    - prepared: from `prepare`; work: from `step_work(prepared, B)`
    - tokens: (B,) integer token ids in [0, V) (not checked: the caller draws them from the model)
    - state: tuple of (L, B, H) arrays, read only
    - out: tuple of (L, B, H) arrays that receive the new state; must not overlap `state`
      (a caller alternates two such tuples)
    Returns the logits, (B, V): work.logits, overwritten by the next call.
    """
    cell, L = prepared.config.cell, len(prepared.w_hh_t)
    xp0 = work.xp[0]
    if prepared.table is not None:
        if len(tokens) == 1:  # one stream: the table row itself (the step kernels only read xp)
            token = int(tokens[0])
            xp0 = prepared.table[token : token + 1]  # (1, G*H)
        else:
            np.take(prepared.table, tokens, axis=0, out=xp0, mode="clip")  # (B, G*H)
    else:
        np.take(prepared.embedding, tokens, axis=0, out=work.emb, mode="clip")  # (B, E)
        np.matmul(work.emb, prepared.w_ih_t[0], out=xp0)  # (B, G*H)
        xp0 += prepared.b_in[0]
    h_out = out[0]
    for k in range(L):
        xp = work.xp[k] if k else xp0
        if k:
            np.matmul(h_out[k - 1], prepared.w_ih_t[k], out=xp)  # (B, G*H)
            xp += prepared.b_in[k]
        if cell == "lstm":
            cells._lstm_step(xp, state[0][k], state[1][k], prepared.w_hh_t[k], work.gates, out[1][k],
                             work.scratch, h_out[k], None, work.g)
        elif cell == "gru":
            cells._gru_step(xp, state[0][k], prepared.w_hh_t[k], prepared.b_hn[k], work.gates, work.scratch,
                            h_out[k])
        else:
            cells._rnn_step(xp, state[0][k], prepared.w_hh_t[k], h_out[k])
    logits = work.logits
    np.matmul(h_out[L - 1], prepared.head_w_t, out=logits)  # (B, V)
    logits += prepared.head_b
    return logits


def score_chunk(prepared: Prepared, inputs, targets, mask=None, state=None):
    """Forward-only negative log-likelihood of a chunk, keeping nothing for a backward pass.

    The same cell kernels as `forward`, with one reused gate buffer per layer
    instead of the (T, B, G*H) caches that backward needs.
    - prepared: from `prepare`
    - inputs, targets: token ids, of shape (B, T)
    - mask: (B, T), nonzero where a position is scored, or None to score all
    - state: initial state, tuple of (L, B, H) arrays, or None for zeros
    Returns (nll_sum, count, state): the total NLL in nats (float), the number of
    scored tokens (int), and the final state, tuple of (L, B, H) arrays.
    """
    config = prepared.config
    inputs = _check_tokens(inputs, config.vocab_size)
    targets = _check_tokens(targets, config.vocab_size)
    if inputs.ndim != 2 or targets.shape != inputs.shape:
        raise ConfigError(f"inputs and targets must have one shape (B, T), got {inputs.shape} and {targets.shape}")
    B, T = inputs.shape
    H, GH, dtype = config.hidden, config.gates * config.hidden, np.dtype(config.dtype)
    if state is None:
        state = zero_state(config, B)
    tokens_tm = np.ascontiguousarray(inputs.T)  # (T, B)
    final = [[] for _ in state]
    gates = np.empty((B, GH), dtype)
    scratch, g = np.empty((B, H), dtype), np.empty((B, H), dtype)
    x = None  # (T, B, H): the layer below's hidden states
    for k in range(config.layers):
        if k == 0 and prepared.table is not None:
            xp = np.take(prepared.table, tokens_tm, axis=0)  # (T, B, G*H)
        else:
            below = prepared.embedding[tokens_tm.reshape(-1)] if k == 0 else x.reshape(T * B, H)
            xp = below @ prepared.w_ih_t[k]  # (T*B, G*H): one product for the chunk
            xp += prepared.b_in[k]
            xp = xp.reshape(T, B, GH)
        hs = np.empty((T + 1, B, H), dtype)  # hs[0] is h0, so step t reads hs[t]
        hs[0] = state[0][k]
        W_hh_t = prepared.w_hh_t[k]
        if config.cell == "lstm":
            c_prev, c_next = state[1][k].astype(dtype, copy=True), np.empty((B, H), dtype)
            for t in range(T):
                cells._lstm_step(xp[t], hs[t], c_prev, W_hh_t, gates, c_next, scratch, hs[t + 1],
                                 None, g)
                c_prev, c_next = c_next, c_prev
            final[1].append(c_prev)
        elif config.cell == "gru":
            for t in range(T):
                cells._gru_step(xp[t], hs[t], W_hh_t, prepared.b_hn[k], gates, scratch, hs[t + 1])
        else:
            for t in range(T):
                cells._rnn_step(xp[t], hs[t], W_hh_t, hs[t + 1])
        final[0].append(hs[T].copy())
        x = hs[1:]
        del xp  # free the projection before the next layer makes its own
    logits = x.reshape(T * B, H) @ prepared.head_w_t  # (T*B, V), time-major rows
    logits += prepared.head_b
    tgt = targets.T.reshape(-1)  # (T*B,)
    # log-softmax with the row maximum subtracted: nll = log(sum(exp(z))) - z[target]
    logits -= logits.max(axis=1, keepdims=True)
    picked = logits[np.arange(T * B), tgt]  # (T*B,)
    np.exp(logits, out=logits)
    nll = np.log(logits.sum(axis=1)) - picked  # (T*B,)
    if mask is None:
        count, nll_sum = T * B, float(nll.sum(dtype=np.float64))
    else:
        mask = np.asarray(mask)
        if mask.shape != inputs.shape:
            raise ConfigError(f"mask shape {mask.shape} differs from inputs shape {inputs.shape}")
        keep = mask.T.reshape(-1) != 0  # (T*B,)
        count, nll_sum = int(keep.sum()), float(nll[keep].sum(dtype=np.float64))
    return nll_sum, count, tuple(np.stack(acc) for acc in final)
