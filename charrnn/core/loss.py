"""The softmax cross-entropy: the one log-softmax and NLL of every head, and its gradient.

Training (model.forward/backward), scoring (inference.score_chunk), every
task's head (the classifier's, the tagger's) and annotate score their logits
here, so that a language model's `eval` prints the number training minimized.

The row maximum is subtracted first (so exp never overflows), then
    nll = log(sum(exp(z))) - z[target],   z = logits - max(logits)
and the gradient of (sum of nll) / count w.r.t. the logits is
(softmax - onehot) / count on the scored rows.

Shapes: N rows (positions or lines), V outputs (vocabulary or labels).
"""

from __future__ import annotations

import numpy as np


def softmax_nll(logits, targets=None, *, probs: bool = True):
    """The NLL of each row's target, and the softmax, computed in place in `logits`.

    - logits: (N, V) float array, overwritten
    - targets: (N,) integer ids in [0, V), or None for no NLL
    - probs: leave the softmax in `logits` (False: leave exp(z) unnormalized, one pass less)
    Returns (p, nll): p is `logits` itself, holding the softmax (or exp(z)); nll (N,) or None.
    """
    logits -= logits.max(axis=1, keepdims=True)
    picked = None if targets is None else logits[np.arange(logits.shape[0]), targets]  # (N,)
    np.exp(logits, out=logits)
    sums = logits.sum(axis=1)  # (N,)
    nll = None if targets is None else np.log(sums) - picked
    if probs:
        logits /= sums[:, None]
    return logits, nll


def log_softmax(logits):
    """Log-probabilities (N, V) of logits (N, V), a new array (logits are left as they were)."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def mean_nll(probs, targets) -> float:
    """The mean NLL (nats) of the targets (N,) under probabilities already computed (N, C), such as
    a whole set's predictions (a classifier's, a tagger's); nan for no rows."""
    targets = np.asarray(targets, dtype=np.int64)
    if not targets.size:
        return float("nan")
    picked = probs[np.arange(targets.size), targets]
    return float(-np.log(np.maximum(picked, 1e-300)).mean())


def softmax_nll_backward(p, targets, count: int, weight=None):
    """d (sum of the scored rows' nll) / count w.r.t. the logits, computed in place in `p`.

    - p: (N, V) the softmax from softmax_nll, overwritten
    - targets: (N,) ids; count: the mean's denominator (0: every gradient is 0)
    - weight: (N,) 1 for a scored row, 0 for one left out, or None to score all
    Returns p, holding (softmax - onehot) * weight / count.
    """
    p[np.arange(p.shape[0]), targets] -= 1.0
    if weight is not None:
        p *= weight[:, None]
    p *= p.dtype.type(1.0 / count) if count else p.dtype.type(0.0)
    return p
