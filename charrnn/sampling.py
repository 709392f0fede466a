"""Generating text: temperature, top-k, top-p, a prime, stop at EOS, never UNK.

`generate` is a generator: each step yields the next token of every sample, so
the caller can stream text as it is made. Randomness comes only from the
Generator passed in: the same model, options and seed give the same text.
"""

from __future__ import annotations

import numpy as np

from . import model
from .errors import ConfigError, VocabError
from .vocab import Vocab, tokenize


def check_options(temperature: float, top_k: int | None, top_p: float | None, length: int, num_samples: int):
    if not temperature >= 0:
        raise ConfigError(f"--temp must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p}")
    if length < 1:
        raise ConfigError(f"--length must be at least 1, got {length}")
    if num_samples < 1:
        raise ConfigError(f"--num-samples must be at least 1, got {num_samples}")


def encode_prime(vocab: Vocab, prime: str) -> np.ndarray:
    """The prime's token ids; VocabError naming any token the model has never seen."""
    known = set(vocab.tokens[3:])
    unknown = sorted({tok for tok in tokenize(prime, vocab.level) if tok not in known})
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise VocabError(f"the prime contains {len(unknown)} token(s) the model has never seen: {shown}")
    return vocab.encode(prime).astype(np.int64)


def next_token_probs(logits, temperature: float, top_k: int | None, top_p: float | None, banned):
    """Turn logits (n, V) into the sampling distribution (n, V), float64, rows summing to 1.

    - banned: token ids never to emit (UNK, the start token): their probability is zero,
      which is exactly the distribution of drawing and redrawing until none is drawn
    - temperature 0 puts all mass on the argmax
    """
    logits = np.array(logits, dtype=np.float64)  # (n, V)
    logits[:, banned] = -np.inf
    n, V = logits.shape
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(n), logits.argmax(axis=1)] = 1.0
        return probs
    logits /= temperature
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=1)[:, V - top_k : V - top_k + 1]  # (n, 1)
        logits[logits < kth] = -np.inf
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, axis=1, kind="stable")  # (n, V)
        sorted_p = np.take_along_axis(probs, order, axis=1)
        # keep the smallest prefix whose mass reaches top_p (the first token always)
        before = np.cumsum(sorted_p, axis=1) - sorted_p
        drop = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(drop, order, before >= top_p, axis=1)
        probs[drop] = 0.0
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def draw(probs, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of probs (n, V), by inverse CDF; (n,) int64."""
    cdf = np.cumsum(probs, axis=1)  # (n, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    ids = (cdf <= u).sum(axis=1)
    # never land on a zero-probability token through rounding at the top end
    return np.minimum(ids, probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1))


def generate(params, config, vocab: Vocab, *, rng: np.random.Generator, num_samples: int = 1,
             length: int = 500, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, prime: str = "", lines: bool = False):
    """Sample `num_samples` continuations together; yields (tokens, alive) per step.

    - tokens: (n,) int64, this step's token of each sample (EOS where a sample just ended)
    - alive: (n,) bool, which samples were still generating at this step
    A sample ends at EOS (not part of its text) or after `length` tokens.
    In lines mode generation starts from the start token, as training did; in
    stream mode from a newline when the vocabulary has one.
    """
    check_options(temperature, top_k, top_p, length, num_samples)
    start = encode_prime(vocab, prime)
    if lines:
        start = np.concatenate([[vocab.bos], start])
    elif start.size == 0:
        newline = vocab.encode("\n") if "\n" in vocab.tokens else np.array([vocab.eos])
        start = newline[-1:].astype(np.int64)
    banned = [vocab.unk, vocab.bos]
    state = model.zero_state(config, num_samples)
    for token in start:
        logits, state = model.step(params, config, np.full(num_samples, token), state)
    alive = np.ones(num_samples, dtype=bool)
    for _ in range(length):
        tokens = draw(next_token_probs(logits, temperature, top_k, top_p, banned), rng)
        yield tokens, alive.copy()
        alive &= tokens != vocab.eos
        if not alive.any():
            return
        logits, state = model.step(params, config, tokens, state)
