"""Scoring held-out text: mean negative log-likelihood, perplexity, bits per token.

Scoring is forward-only, in chunks of `chunk` steps with the state carried, so
the result does not depend on the chunk size and memory stays bounded for
long files. Stream text is cut into `streams` contiguous pieces scored side by
side (each piece starts from a zero state, as in training); every token after
the first is scored exactly once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import batches, model


@dataclass(frozen=True)
class Score:
    nll_sum: float     # total negative log-likelihood in nats
    tokens: int        # number of tokens scored
    unknown: int       # how many of the scored tokens were UNK

    @property
    def loss(self) -> float:
        """Mean NLL per token in nats (nan when nothing was scored)."""
        return self.nll_sum / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "tokens": self.tokens, "unknown": self.unknown}


def score_stream(params, config, ids, *, streams: int = 128, chunk: int = 256, unk: int | None = None) -> Score:
    """Score a token sequence: every ids[i], i >= 1, is predicted from what precedes it in its stream.

    - ids: (N,) token ids (ndarray or memmap)
    - streams: pieces scored side by side; chunk: time steps per forward call
    - unk: the UNK id, to count unknown tokens (None: not counted)
    """
    n_targets = len(ids) - 1
    if n_targets < 1:
        return Score(0.0, 0, 0)
    B = min(streams, n_targets)
    S = math.ceil(n_targets / B)  # positions per stream; the last stream is padded and masked
    starts = np.arange(B) * S  # (B,)
    state, nll, count, unknown = None, 0.0, 0, 0
    for t0 in range(0, S, chunk):
        pos = starts[:, None] + np.arange(t0, min(t0 + chunk, S))  # (B, t)
        valid = pos < n_targets  # (B, t)
        pos = np.where(valid, pos, 0)
        x = np.asarray(ids[pos], dtype=np.int64)
        y = np.asarray(ids[pos + 1], dtype=np.int64)
        _, state, cache = model.forward(params, config, x, y, valid, state)
        nll += cache["nll_sum"]
        count += cache["count"]
        if unk is not None:
            unknown += int(np.count_nonzero((y == unk) & valid))
    return Score(nll, count, unknown)


def score_lines(params, config, ids, offsets, bos: int, eos: int, *, batch: int = 128, chunk: int = 256,
                unk: int | None = None) -> Score:
    """Score lines: each from a start token through its EOS, as training in lines mode does.

    - ids: (n,) concatenated line ids; offsets: (n_lines + 1,) boundaries
    """
    nll, count, unknown = 0.0, 0, 0
    for index in batches.line_batches_in_order(len(offsets) - 1, batch):
        x, y, mask = batches.line_batch(ids, offsets, index, bos, eos)
        state = None
        for t0 in range(0, x.shape[1], chunk):
            sl = slice(t0, t0 + chunk)
            _, state, cache = model.forward(params, config, x[:, sl], y[:, sl], mask[:, sl], state)
            nll += cache["nll_sum"]
            count += cache["count"]
        if unk is not None:
            unknown += int(np.count_nonzero((y == unk) & mask))
    return Score(nll, count, unknown)
