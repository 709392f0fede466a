"""Forward-only use of a model: one step at a time (sampling) and chunk scores (eval).

Both run `model.walk`, the same walk through the layers that training runs,
with keep=False: no caches for a backward pass, and the step buffers reused.
Prepare the weights once with `model.prepare` and pass them to every call.

Shapes: B batch, T time steps, V vocabulary, H hidden, L layers.
"""

from __future__ import annotations

import numpy as np

from ..core import loss, model
from ..errors import ConfigError
from ..core.model import Weights


def step(weights: Weights, tokens, state):
    """One time step: the next-token logits of B streams.

    - weights: from model.prepare
    - tokens: (B,) integer token ids in [0, V) (not checked: the caller draws them from the model)
    - state: tuple of (L, B, H) arrays
    Returns (logits (B, V), new state tuple of (L, B, H) arrays).
    """
    top, state, _ = model.walk(weights, np.asarray(tokens)[None, :], state, keep=False)
    logits = model.matmul(top[0], weights.head_w_t, weights.config, model.bf16_operand(weights, "head"))  # (B, V)
    logits += weights.head_b
    return logits, state


def score_chunk(weights: Weights, inputs, targets, mask=None, state=None):
    """Negative log-likelihood of a chunk, keeping nothing for a backward pass.

    - weights: from model.prepare
    - inputs, targets: token ids, of shape (B, T)
    - mask: (B, T), nonzero where a position is scored, or None to score all
    - state: initial state, tuple of (L, B, H) arrays, or None for zeros
    Returns (nll_sum, count, state): the total NLL in nats (float), the number of
    scored tokens (int), and the final state, tuple of (L, B, H) arrays.
    """
    config = weights.config
    inputs = model._check_tokens(inputs, config.vocab_size)
    targets = model._check_tokens(targets, config.vocab_size)
    if inputs.ndim != 2 or targets.shape != inputs.shape:
        raise ConfigError(f"inputs and targets must have one shape (B, T), got {inputs.shape} and {targets.shape}")
    B, T = inputs.shape
    if state is None:
        state = model.zero_state(config, B)
    top, state, _ = model.walk(weights, np.ascontiguousarray(inputs.T), state, keep=False)
    logits = model.matmul(top.reshape(T * B, -1), weights.head_w_t, weights.config,
                          model.bf16_operand(weights, "head"))  # (T*B, V), time-major rows
    logits += weights.head_b
    tgt = targets.T.reshape(-1)  # (T*B,)
    _, nll = loss.softmax_nll(logits, tgt, probs=False)  # (T*B,)
    if mask is None:
        return float(nll.sum(dtype=np.float64)), T * B, state
    mask = np.asarray(mask)
    if mask.shape != inputs.shape:
        raise ConfigError(f"mask shape {mask.shape} differs from inputs shape {inputs.shape}")
    keep = mask.T.reshape(-1) != 0  # (T*B,)
    return float(nll[keep].sum(dtype=np.float64)), int(keep.sum()), state
