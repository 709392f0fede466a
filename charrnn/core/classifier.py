"""The character-level classifier: embedding -> recurrent layers (one or two directions) -> pooling -> head.

The many-to-one architecture of the course notes: a whole line is read, its
per-step outputs are pooled over time into one vector, and a linear head
scores the labels (softmax cross-entropy). With `bidirectional`, every layer
runs a second recurrence right to left, and each layer's output is the two
directions' states side by side, (T, B, 2H), as torch.nn.LSTM(bidirectional=
True) computes them: the layer above reads both. Any cell can be used; each
recurrence is the backends' sequence_forward/backward (model.recurrence()),
the same functions the language model runs.

Lines differ in length. A batch is right-padded; position t of row b is real
when t < lengths[b]. The left-to-right recurrence never lets a padded step
reach a real one. The right-to-left one runs on each row reversed within its
own length (padding stays at the end), so it starts at the row's last real
character, and its outputs are put back in the original order by the same
permutation (it is its own inverse).

Pooling (config.pool):
- "mean" (the default): the mean of the top layer's outputs over the real
  steps. Every step's output reaches the loss directly, so the gradient need
  not travel back through the whole line (a reasoned default, not yet
  measured against "last" on a quiet machine).
- "last": the final state of each direction, PyTorch's h_n: the left-to-right
  output at the row's last real step, the right-to-left output at step 0.

Parameters follow PyTorch's names: `rnn.weight_ih_l{k}` ..., the right-to-left
direction with the suffix `_reverse`, `head.weight` (C, D*H), `head.bias` (C,).

Shapes: B batch, T time steps (the longest line), E embedding, H hidden,
L layers, D directions (1 or 2), C labels.
"""

from __future__ import annotations

import numpy as np

from . import model
from .loss import mean_nll, softmax_nll, softmax_nll_backward  # mean_nll: also classifier's, for its callers
from .cells import EXTRA, STATES
from ..errors import ConfigError

POOLS = ("mean", "last")
SUFFIXES = ("", "_reverse")  # the parameter name suffix of each direction


def directions(config) -> int:
    return 2 if config.bidirectional else 1


def batch(ids, offsets: np.ndarray, rows):
    """A right-padded batch of lines: (tokens (B, T) int64, lengths (B,) int64); padding is token 0.

    - ids: (N,) the lines' ids back to back; offsets: (n_lines + 1,); rows: (B,) line indices
    """
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    starts = np.asarray(offsets)[rows]
    lengths = np.asarray(offsets)[rows + 1] - starts  # (B,)
    if rows.size == 0 or lengths.min() < 1:
        raise ConfigError("a classifier batch needs at least one line, and every line at least one token")
    pos = np.arange(int(lengths.max()))
    inside = pos < lengths[:, None]  # (B, T)
    tokens = np.zeros(inside.shape, dtype=np.int64)
    tokens[inside] = np.asarray(ids[(starts[:, None] + pos)[inside]], dtype=np.int64)
    return tokens, lengths


def reverse_index(lengths, T: int):
    """(T, B) time indices that reverse each row within its length, padding left in place; its own inverse."""
    t = np.arange(T)[:, None]  # (T, 1)
    L = np.asarray(lengths)[None, :]  # (1, B)
    return np.where(t < L, L - 1 - t, t)  # (T, B)


def _take_time(x, index):
    """x (T, B, ...) gathered along time per column: out[t, b] = x[index[t, b], b]."""
    return x[index, np.arange(x.shape[1])[None, :]]


# ---------------------------------------------------------------- the stack, both directions


def stack_forward(params, config, tokens, lengths, *, keep=True, dropout_rng=None):
    """Run the layers over a padded batch.

    - params: parameter dict (see model.param_shapes); config: a classifier ModelConfig
    - tokens: (B, T) token ids; lengths: (B,) real steps per row
    - keep: keep what stack_backward needs; dropout_rng: a Generator for dropout between layers, or None
    Returns (Y, cache): the top layer's outputs (T, B, D*H) in original time order (after dropout), and
    the cache (None unless keep).
    """
    rec = model.recurrence()
    tokens = model._check_tokens(tokens, config.vocab_size)
    B, T = tokens.shape
    D, H = directions(config), config.hidden
    dtype = np.dtype(config.dtype)
    rev = reverse_index(lengths, T) if D == 2 else None
    p = config.dropout if dropout_rng is not None else 0.0
    tokens_tm = tokens.T  # (T, B)
    x = params["embedding.weight"][tokens_tm]  # (T, B, E)
    layers = []
    for k in range(config.layers):
        outs, recs = [], []
        for d in range(D):
            s = SUFFIXES[d]
            W_ih = params[f"rnn.weight_ih_l{k}{s}"]
            x_d = x if d == 0 else _take_time(x, rev)  # (T, B, in), right to left within each row
            xp = x_d.reshape(T * B, -1) @ W_ih.T  # (T*B, G*H)
            xp += params[f"rnn.bias_ih_l{k}{s}"]
            state0 = tuple(np.zeros((B, H), dtype) for _ in range(STATES[config.cell]))
            extra = tuple(params[f"rnn.weight_{n}_l{k}{s}"] for n in EXTRA[config.cell])
            hs, _, rec_cache = rec.sequence_forward(
                config.cell, xp.reshape(T, B, -1), state0, params[f"rnn.weight_hh_l{k}{s}"],
                params[f"rnn.bias_hh_l{k}{s}"], keep=keep, extra=extra)
            outs.append(hs if d == 0 else _take_time(hs, rev))  # (T, B, H), original order
            recs.append(rec_cache)
        y = outs[0] if D == 1 else np.concatenate(outs, axis=2)  # (T, B, D*H)
        drop = model._dropout_mask(y.shape, p, dropout_rng, dtype) if p > 0.0 else None
        if keep:
            layers.append(model.Layer(x, recs, drop))
        x = y if drop is None else y * drop
    cache = {"tokens_tm": tokens_tm, "rev": rev, "layers": layers, "config": config} if keep else None
    return x, cache


def stack_backward(params, d_Y, cache):
    """Backpropagate through stack_forward.

    - d_Y: gradient w.r.t. the top layer's outputs, (T, B, D*H)
    Returns the gradients of every `embedding.*` and `rnn.*` parameter, a dict.
    """
    config, rev = cache["config"], cache["rev"]
    rec = model.recurrence()
    T, B, _ = d_Y.shape
    D, H = directions(config), config.hidden
    grads = {}
    d_y = d_Y
    for k in range(config.layers - 1, -1, -1):
        layer = cache["layers"][k]
        if layer.drop is not None:
            d_y = d_y * layer.drop
        x = layer.x  # (T, B, in)
        d_x = np.zeros_like(x)
        for d in range(D):
            s = SUFFIXES[d]
            d_hs = d_y[:, :, d * H:(d + 1) * H]
            if d == 1:
                d_hs = _take_time(d_hs, rev)  # into the reversed order the recurrence ran in
            d_xp, _, g = rec.sequence_backward(np.ascontiguousarray(d_hs), None, layer.rec[d])
            grads[f"rnn.weight_hh_l{k}{s}"] = g["W_hh"]
            grads[f"rnn.bias_hh_l{k}{s}"] = g["b_hh"]
            for n in EXTRA[config.cell]:
                grads[f"rnn.weight_{n}_l{k}{s}"] = g[n]
            d_xp_flat = d_xp.reshape(T * B, -1)  # (T*B, G*H)
            grads[f"rnn.bias_ih_l{k}{s}"] = d_xp_flat.sum(axis=0)
            x_d = x if d == 0 else _take_time(x, rev)
            grads[f"rnn.weight_ih_l{k}{s}"] = d_xp_flat.T @ x_d.reshape(T * B, -1)  # (G*H, in)
            d_x_d = (d_xp_flat @ params[f"rnn.weight_ih_l{k}{s}"]).reshape(x.shape)  # (T, B, in)
            d_x += d_x_d if d == 0 else _take_time(d_x_d, rev)
        d_y = d_x
    d_emb = np.zeros_like(params["embedding.weight"])
    np.add.at(d_emb, cache["tokens_tm"].reshape(-1), d_y.reshape(T * B, -1))  # rows (T*B, E) to their tokens
    grads["embedding.weight"] = d_emb
    return grads


# ---------------------------------------------------------------- pooling over time


def pool_forward(Y, lengths, how: str, D: int):
    """Pool the top layer's outputs over each row's real steps.

    - Y: (T, B, D*H); lengths: (B,); how: "mean" or "last"; D: directions
    Returns (pooled (B, D*H), cache).
    """
    T, B, DH = Y.shape
    lengths = np.asarray(lengths)
    if how == "mean":
        inside = (np.arange(T)[:, None] < lengths[None, :]).astype(Y.dtype)  # (T, B)
        weight = inside / lengths[None, :].astype(Y.dtype)  # (T, B): 1/len on real steps
        return np.einsum("tb,tbh->bh", weight, Y), ("mean", weight, Y.shape, D)
    if how != "last":
        raise ConfigError(f"unknown pooling {how!r}; choose mean or last")
    H = DH // D
    cols = np.arange(B)
    parts = [Y[lengths - 1, cols, :H]]  # left to right: its last real step
    if D == 2:
        parts.append(Y[0, :, H:])  # right to left: its last step is position 0
    return np.concatenate(parts, axis=1), ("last", lengths, Y.shape, D)


def pool_backward(d_pooled, cache):
    """d_pooled (B, D*H) -> d_Y (T, B, D*H)."""
    how, aux, shape, D = cache
    if how == "mean":
        return aux[:, :, None] * d_pooled[None, :, :]
    B, H = shape[1], shape[2] // D
    d_Y = np.zeros(shape, d_pooled.dtype)
    d_Y[aux - 1, np.arange(B), :H] = d_pooled[:, :H]
    if D == 2:
        d_Y[0, :, H:] = d_pooled[:, H:]
    return d_Y


# ---------------------------------------------------------------- loss, gradients, predictions


def forward(params, config, tokens, lengths, labels=None, *, dropout_rng=None, keep=True):
    """Score a padded batch of lines.

    - tokens: (B, T) token ids; lengths: (B,); labels: (B,) label ids, or None to skip the loss
    - dropout_rng: a Generator to train with dropout; keep: keep what `backward` needs
    Returns (loss, probs, cache): the mean NLL per line in nats (0.0 without labels), the label
    probabilities (B, C), and the cache (None unless keep).
    """
    if config.classes < 2:
        raise ConfigError("this model is a language model, not a classifier")
    lengths = np.asarray(lengths, dtype=np.int64)
    Y, stack_cache = stack_forward(params, config, tokens, lengths, keep=keep, dropout_rng=dropout_rng)
    pooled, pool_cache = pool_forward(Y, lengths, config.pool, directions(config))  # (B, D*H)
    logits = pooled @ params["head.weight"].T + params["head.bias"]  # (B, C)
    loss = 0.0
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != lengths.shape or labels.min() < 0 or labels.max() >= config.classes:
            raise ConfigError(f"labels must be (B,) ids in [0, {config.classes})")
    probs, nll = softmax_nll(logits, labels)  # (B, C), (B,) or None
    if nll is not None:
        loss = float(nll.mean(dtype=np.float64))
    cache = None
    if keep:
        cache = {"stack": stack_cache, "pool": pool_cache, "pooled": pooled, "probs": probs, "labels": labels}
    return loss, probs, cache


def backward(params, config, cache, count: int | None = None):
    """Gradients of the loss from `forward` (with labels): a dict with params' keys and shapes.

    - count: the number of lines the loss is a mean over (a whole batch's, when this is one block
      of its rows, so that the blocks' gradients add); None: this batch's B
    """
    labels, probs = cache["labels"], cache["probs"]
    B = labels.size
    d_logits = softmax_nll_backward(probs.copy(), labels, B if count is None else count)  # (B, C)
    grads = {"head.weight": d_logits.T @ cache["pooled"], "head.bias": d_logits.sum(axis=0)}
    d_Y = pool_backward(d_logits @ params["head.weight"], cache["pool"])  # (T, B, D*H)
    grads.update(stack_backward(params, d_Y, cache["stack"]))
    dtype = np.dtype(config.dtype)
    return {name: grads[name].astype(dtype, copy=False) for name in params}


def loss_and_grads(params, config, tokens, lengths, labels, dropout_rng=None, count=None):
    """forward + backward for one batch: returns (loss, grads), the loss a mean over its B lines
    and the gradients of its sum over `count` lines (None: B; see backward)."""
    loss, _, cache = forward(params, config, tokens, lengths, labels, dropout_rng=dropout_rng)
    return loss, backward(params, config, cache, count)


def predict(params, config, ids, offsets, batch_size: int = 64, max_tokens: int = 32_768):
    """Label probabilities of every line, (n_lines, C), forward only.

    - ids, offsets: the lines back to back (see corpus.encode_lines); every line at least one token
    Lines are batched in order of length, so that little is padding; a batch holds up to
    batch_size lines and about max_tokens padded tokens.
    """
    offsets = np.asarray(offsets)
    n = len(offsets) - 1
    probs = np.zeros((n, config.classes), dtype=np.float64)
    order = np.argsort(np.diff(offsets), kind="stable")
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and stop - start < batch_size and (stop + 1 - start) * (
                offsets[order[stop] + 1] - offsets[order[stop]]) <= max_tokens:
            stop += 1
        rows = order[start:stop]
        tokens, lengths = batch(ids, offsets, rows)
        _, p, _ = forward(params, config, tokens, lengths, keep=False)
        probs[rows] = p
        start = stop
    return probs


# Up to this many labels, metrics also gives the confusion matrix as a dense table (and `charrnn eval`
# prints it); above, only its non-zero cells: a dense table of C x C counts grows with the square of the
# labels (10,000 labels: 10^8 numbers at every evaluation, and a 700 MB table printed).
DENSE_CONFUSION_LABELS = 50


def metrics(probs, labels, n_classes: int) -> dict:
    """Accuracy, macro-F1, mean NLL (nats) and the confusion matrix of predictions.

    - probs: (N, C) label probabilities; labels: (N,) true label ids
    Returns {"lines", "accuracy", "macro_f1", "loss", "pairs", "confusion"}: pairs lists the confusion
    matrix's non-zero cells [true id, predicted id, lines] in (true, predicted) order (at most one per
    line, so its size follows the input, never C x C); confusion is the dense matrix (confusion[i][j]
    counts lines of label i predicted as j) for at most DENSE_CONFUSION_LABELS labels, else None.
    A label never true nor predicted is left out of the macro mean.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    cells, counts = np.unique(labels * n_classes + predicted, return_counts=True)  # the non-zero cells
    tp = np.bincount(labels[labels == predicted], minlength=n_classes).astype(np.float64)
    support = np.bincount(labels, minlength=n_classes)
    claimed = np.bincount(predicted, minlength=n_classes)
    present = (support + claimed) > 0
    f1 = np.where(present, 2 * tp / np.maximum(support + claimed, 1), 0.0)
    confusion = None
    if n_classes <= DENSE_CONFUSION_LABELS:
        dense = np.zeros(n_classes * n_classes, dtype=np.int64)
        dense[cells] = counts
        confusion = dense.reshape(n_classes, n_classes).tolist()
    return {"lines": int(labels.size),
            "accuracy": float(tp.sum() / labels.size) if labels.size else float("nan"),
            "macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
            "loss": mean_nll(probs, labels),
            "pairs": [[int(c // n_classes), int(c % n_classes), int(k)] for c, k in zip(cells, counts)],
            "confusion": confusion}
