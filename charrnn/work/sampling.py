"""Generating text: temperature, top-k, top-p, a prime, stop at EOS, never UNK.

`generate` returns an iterator: each step yields the next token of every
sample, so the caller can stream text as it is made. Randomness comes only
from the Generator passed in: the same model, options and seed give the same
text.

Three ways to turn logits into tokens, all drawing from the distribution that
`next_token_probs` defines:
- `next_token_probs` + `draw` spell it out on a float64 copy: the reference,
  which tests compare with;
- `draw_gumbel`, the loop's usual draw: Gumbel-max with the noise drawn ahead
  in blocks, so a step costs one addition and one argmax;
- `draw_next`, inverse CDF in place on the logits: for top-p, which needs the
  sorted probabilities, and for temperature 0.
In `generate`, UNK and the start token have a head bias of -inf, so no draw
can pick them: the same distribution as rejecting and redrawing them.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile

import numpy as np

from ..step import inference
from ..core import model
from ..files.config import is_number
from ..errors import CharRNNError, CheckpointError, ConfigError, VocabError, option
from ..data.vocab import Vocab, tokenize


def check_options(temperature: float, top_k: int | None, top_p: float | None, length: int, num_samples: int):
    """Raise ConfigError for option values (or types: the API's callers pass anything) no sampling could use."""
    for name, value, integer, optional in (("temperature", temperature, False, False), ("top_k", top_k, True, True),
                                           ("top_p", top_p, False, True), ("length", length, True, False),
                                           ("n", num_samples, True, False)):
        if value is None and optional:
            continue
        if not (is_number(value, integer=integer) if integer else isinstance(value, (int, float, np.number))
                and not isinstance(value, (bool, np.bool_))):
            raise ConfigError(f"{option(name)} must be {'an integer' if integer else 'a number'}, got {value!r:.40}")
    if not 0 <= temperature < math.inf:
        raise ConfigError(f"{option('temperature')} must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"{option('top_k')} must be at least 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ConfigError(f"{option('top_p')} must be in (0, 1], got {top_p}")
    if length < 1:
        raise ConfigError(f"{option('length')} must be at least 1, got {length}")
    if not 1 <= num_samples < 2**31:
        raise ConfigError(f"{option('n')} must be from 1 to 2**31 - 1, got {num_samples}")


def encode_prime(vocab: Vocab, prime: str) -> np.ndarray:
    """The prime's token ids, (n,) int64; VocabError naming any token the model has never seen."""
    if not isinstance(prime, str):
        raise ConfigError(f"the prime must be a str, got {type(prime).__name__}")
    known = set(vocab.tokens[3:])
    unknown = sorted({tok for tok in tokenize(prime, vocab.level) if tok not in known})
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise VocabError(f"the prime contains {len(unknown)} token(s) the model has never seen: {shown}")
    return vocab.encode(prime).astype(np.int64)


# ---------------------------------------------------------------- the reference: probabilities, then a draw


def next_token_probs(logits, temperature: float, top_k: int | None, top_p: float | None, banned):
    """The sampling distribution: logits (n, V) -> probabilities (n, V), float64, rows summing to 1.

    - banned: token ids never to emit (UNK, the start token): their probability is zero,
      which is exactly the distribution of drawing and redrawing until none is drawn
    - temperature 0 puts all mass on the argmax
    - top_k keeps the k largest logits (ties at the k-th are all kept); top_p keeps the
      smallest set of most likely tokens whose mass reaches p (the most likely always)
    """
    logits = np.array(logits, dtype=np.float64)  # (n, V)
    logits[:, banned] = -np.inf
    n = logits.shape[0]
    if temperature == 0:
        probs = np.zeros_like(logits)
        probs[np.arange(n), logits.argmax(axis=1)] = 1.0
        return probs
    _mask_top_k(logits, top_k)
    # subtract the maximum before dividing: a tiny temperature then sends the
    # others to -inf instead of overflowing to inf - inf
    logits -= logits.max(axis=1, keepdims=True)
    logits /= temperature
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    if top_p is not None and top_p < 1:
        _nucleus(probs, top_p)
        probs /= probs.sum(axis=1, keepdims=True)
    return probs


def _mask_top_k(logits, top_k: int | None) -> None:
    """Set, in place, every logit (n, V) below its row's k-th largest to -inf (ties at the k-th all stay)."""
    V = logits.shape[1]
    if top_k is not None and top_k < V:
        kth = np.partition(logits, V - top_k, axis=1)[:, V - top_k : V - top_k + 1]  # (n, 1)
        logits[logits < kth] = -np.inf


def _nucleus(weights, top_p: float) -> None:
    """Zero, in place, the weights (n, V) outside each row's top-p nucleus (weights need not sum to 1)."""
    order = np.argsort(-weights, axis=1, kind="stable")  # (n, V)
    ranked = np.take_along_axis(weights, order, axis=1)  # (n, V)
    cum = np.cumsum(ranked, axis=1, dtype=np.float64)  # (n, V)
    # keep the smallest prefix whose mass reaches top_p: drop a token once the
    # mass before it already does (so the first token is always kept)
    drop = (cum - ranked) >= top_p * cum[:, -1:]  # (n, V)
    rows = np.nonzero(drop)[0]
    weights[rows, order[drop]] = 0


def draw(probs, rng: np.random.Generator) -> np.ndarray:
    """One token id per row of probs (n, V), by inverse CDF; (n,) int64."""
    cdf = np.cumsum(probs, axis=1)  # (n, V)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    ids = (cdf <= u).sum(axis=1)
    # never land on a zero-probability token through rounding at the top end
    return np.minimum(ids, probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=1))


# ---------------------------------------------------------------- inverse CDF in place


def draw_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None,
              top_p: float | None = None, banned=()) -> np.ndarray:
    """One token per row of logits, from the distribution of `next_token_probs`.

    - logits: (n, V) float array; OVERWRITTEN (it ends as unnormalized weights)
    - rng: the Generator; one uniform number per row is drawn (none at temperature 0)
    - temperature, top_k, top_p, banned: as in next_token_probs
    Returns (n,) int64 token ids.
    Inverse CDF: works in the logits' own dtype (float32 for float32 models),
    accumulates the CDF in float64, and sorts only for top-p. generate uses it
    for top-p and temperature 0, and `draw_gumbel` otherwise.
    """
    n = logits.shape[0]
    if len(banned):
        logits[:, banned] = -np.inf
    if temperature == 0:
        return _checked_argmax(logits)
    _mask_top_k(logits, top_k)
    logits -= logits.max(axis=1, keepdims=True)
    if temperature != 1:
        scale = 1.0 / temperature
        if not scale < np.finfo(logits.dtype).max:
            # so cold that every other token's weight underflows to zero
            return _checked_argmax(logits)
        if scale < float(np.finfo(logits.dtype).tiny):
            # so hot that 1 / temperature is no normal number of the logits' dtype (it would round to 0, and
            # -inf * 0 is NaN): scale in float64, where it is a positive number for any finite temperature
            logits = logits.astype(np.float64)
        logits *= scale
    np.exp(logits, out=logits)  # weights in [0, 1], each row's maximum exactly 1
    if top_p is not None and top_p < 1:
        _nucleus(logits, top_p)
    cdf = np.cumsum(logits, axis=1, dtype=np.float64)  # (n, V), unnormalized
    total = cdf[:, -1]  # (n,)
    # NaN anywhere in a row makes its total NaN (and a row's total is >= 1 otherwise)
    if not total.min() >= 1.0:
        raise CheckpointError(_NOT_FINITE)
    u = rng.random(n) * total  # (n,) each below its total: random() < 1 by at least 2**-53
    # the first position whose cumulative weight exceeds u: a token of positive weight
    return (cdf <= u[:, None]).sum(axis=1)


_NOT_FINITE = "the model's scores are not finite numbers (NaN or infinity): its weights are broken"


def _checked_argmax(scores) -> np.ndarray:
    """Each row's argmax of scores (n, V); CheckpointError when a picked score is NaN or infinite.

    argmax returns a NaN's position when a row has one, and a row that is all
    -inf has nothing that could be drawn.
    """
    ids = scores.argmax(axis=1)  # (n,)
    picked = scores[0, ids[0]] if len(ids) == 1 else scores[np.arange(len(ids)), ids].min()
    if not -np.inf < picked < np.inf:
        raise CheckpointError(_NOT_FINITE)
    return ids


def generate(params, config, vocab: Vocab, *, rng: np.random.Generator, num_samples: int = 1,
             length: int = 500, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, prime: str = "", lines: bool = False):
    """Sample `num_samples` continuations together; returns an iterator of (tokens, alive) per step.

    - params, config: the model; vocab: its vocabulary
    - rng: the only source of randomness
    - length: the most tokens per sample; temperature, top_k, top_p: see next_token_probs
    - prime: text the state is conditioned on (not yielded); lines: the model was trained on lines
    Yields per step:
    - tokens: (n,) int64, this step's token of each sample (EOS where a sample just ended)
    - alive: (n,) bool, which samples were still generating at this step
    A sample ends at EOS (not part of its text) or after `length` tokens. UNK and
    the start token are never drawn. In lines mode generation starts from the
    start token, as training did; in stream mode from a newline when the
    vocabulary has one. Options and the prime are checked before this returns,
    so a bad one raises here, before anything is generated.
    """
    check_options(temperature, top_k, top_p, length, num_samples)
    start = encode_prime(vocab, prime)
    if lines:
        start = np.concatenate([[vocab.bos], start])
    elif start.size == 0:
        newline = vocab.encode("\n") if "\n" in vocab.tokens else np.array([vocab.eos])
        start = newline[-1:].astype(np.int64)
    return _steps(params, config, vocab, rng, num_samples, length, temperature, top_k, top_p, start)


def _steps(params, config, vocab, rng, n, length, temperature, top_k, top_p, start):
    weights = model.prepare(params, config)
    # UNK and the start token are never drawn: a head bias of -inf gives them
    # zero weight at every step, with no pass over the logits to ban them
    head_b = weights.head_b.copy()
    head_b[[vocab.unk, vocab.bos]] = -np.inf
    weights = dataclasses.replace(weights, head_b=head_b)
    state = model.zero_state(config, n)
    for token in start:
        logits, state = inference.step(weights, np.full(n, token), state)
    noise = hot = None
    if temperature > 0 and (top_p is None or top_p >= 1):
        dtype = np.dtype(config.dtype)
        # temperature * G overflows the dtype for a hot enough temperature (G, the Gumbel noise, reaches
        # about 709): then argmax(z / T + G), the same draw, in float64, where z / T stays finite
        hot = not temperature * _GUMBEL_MAX < float(np.finfo(dtype).max)
        noise = gumbel_noise(rng, (n, config.vocab_size), 1.0 if hot else temperature,
                             np.float64 if hot else dtype)
    alive = np.ones(n, dtype=bool)
    eos = vocab.eos
    for _ in range(length):
        if hot:
            tokens = draw_gumbel(logits.astype(np.float64) / temperature, next(noise), top_k)
        elif noise is not None:
            tokens = draw_gumbel(logits, next(noise), top_k)
        else:
            tokens = draw_next(logits, rng, temperature, top_k, top_p)
        yield tokens, alive
        if n == 1:  # one stream: a scalar test; `alive` stays all true while it runs
            if tokens[0] == eos:
                return
        else:
            alive = alive & (tokens != eos)  # a new array: the one yielded keeps its values
            if not alive.any():
                return
        logits, state = inference.step(weights, tokens, state)


# ---------------------------------------------------------------- many samples in bounded memory
# n samples are generated together, as one batch, in groups of at most group_size(n, V) streams, one group
# after the other from the same Generator (so up to that many, -n N gives the same samples as before
# groups existed, and never depends on --length: a shorter --length still gives a prefix). The caller
# streams a group's first sample as it is made; the group's other samples are kept in blocks of
# KEEP_BLOCK_TOKENS tokens, each full block written to a temporary file, and read back in order after.
# So memory holds a block and a step's (streams, V) arrays, whatever -n and --length are.

STEP_NUMBERS = 1 << 22  # a group's streams x V (its logits and noise per step: 16 to 32 MB)
GATE_NUMBERS = 1 << 22  # a group's streams x gates x H (a layer's gate pre-activations per step: 16 to 32 MB)
KEEP_BLOCK_TOKENS = 1 << 22  # tokens of a group's kept samples held in memory (the rest on disk)


def group_size(n: int, vocab_size: int, gate_width: int = 1) -> int:
    """How many of n samples are generated together: all of them, up to STEP_NUMBERS // vocab_size and
    GATE_NUMBERS // gate_width (gates x hidden: a step's widest state arrays, several live at once; a
    2 x 256 LSTM's 63,550 streams, bounded by V alone, peaked at 2.2 GB)."""
    return max(1, min(n, STEP_NUMBERS // max(1, vocab_size), GATE_NUMBERS // max(1, gate_width)))


class KeptTokens:
    """The tokens of streams 1..k-1 of a group of k, step after step: a block in memory, full blocks in a
    temporary file (each written stream-major, so one stream is read back in long runs)."""

    def __init__(self, k: int, dtype, length: int, block_tokens: int | None = None):
        """- k: the group's streams; dtype: the ids'; length: the most steps (a block needs no more rows)"""
        self.width, self.dtype = k - 1, np.dtype(dtype)
        self.rows = max(1, min(length, (block_tokens or KEEP_BLOCK_TOKENS) // max(1, self.width)))
        self.block = np.empty((self.rows, self.width), dtype=self.dtype) if self.width else None  # (rows, k - 1)
        self.filled, self.spilled, self.file = 0, 0, None

    def recording(self, steps):
        """Pass generate's (tokens, alive) steps through, keeping each step's tokens of streams 1..k-1."""
        for tokens, alive in steps:
            if self.width:
                self.block[self.filled] = tokens[1:]
                self.filled += 1
                if self.filled == self.rows:
                    self._spill()
            yield tokens, alive

    def _spill(self) -> None:
        try:
            if self.file is None:
                self.file = tempfile.TemporaryFile(prefix="charrnn-samples-")
            self.file.write(np.ascontiguousarray(self.block.T).tobytes())
        except OSError as exc:
            raise CharRNNError(f"cannot keep the samples after the first in a temporary file "
                               f"({tempfile.gettempdir()}): {exc.strerror or exc}; ask for fewer or shorter "
                               f"samples, or set TMPDIR") from None
        self.spilled += 1
        self.filled = 0

    def stream(self, i: int):
        """Yield stream i's tokens (1 <= i < k) in order, as (m,) arrays of a block each."""
        size = self.rows * self.dtype.itemsize
        for b in range(self.spilled):
            self.file.seek((b * self.width + i - 1) * size)
            yield np.frombuffer(self.file.read(size), dtype=self.dtype)
        yield self.block[: self.filled, i - 1].copy()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


# ---------------------------------------------------------------- Gumbel-max: the loop's usual draw
# argmax(z / T + G) with G independent standard Gumbel variables is a draw
# from softmax(z / T); so is argmax(z + T * G). With the noise drawn ahead in
# blocks, a step's draw is one addition and one argmax: no exponentials, no
# cumulative sums, and no overflow at any temperature.

_NOISE_BLOCK = 1 << 16  # numbers drawn per block (at least one step's worth)
_GUMBEL_MAX = -math.log(np.finfo(np.float64).tiny)  # the largest standard Gumbel number drawn, about 708.4


def gumbel_noise(rng: np.random.Generator, shape, temperature: float, dtype):
    """Endless iterator of (n, V) arrays of temperature * standard Gumbel noise, in `dtype`.

    - rng: the Generator (the noise is all the randomness a Gumbel draw uses)
    - shape: (n, V); temperature > 0
    Blocks have a fixed number of steps for a given shape, so a sample's first
    tokens do not depend on how long it is allowed to run.
    """
    n, V = shape
    steps = max(1, _NOISE_BLOCK // (n * V))
    while True:
        # G = -log(E) for E standard exponential; E = 0 (a chance of about 2**-53)
        # is raised to the smallest double, so the log stays finite
        block = rng.standard_exponential((steps, n, V))  # (steps, n, V)
        np.maximum(block, np.finfo(np.float64).tiny, out=block)
        np.log(block, out=block)
        block *= -temperature
        yield from block.astype(dtype, copy=False)


def draw_gumbel(logits, noise, top_k: int | None = None) -> np.ndarray:
    """One token per row of logits by Gumbel-max: the distribution of next_token_probs without top-p.

    - logits: (n, V); OVERWRITTEN. Banned tokens must already be -inf (generate sets their bias so)
    - noise: (n, V) temperature * standard Gumbel noise (see gumbel_noise)
    - top_k: keep the k largest logits (ties at the k-th all kept), or None
    Returns (n,) int64 token ids.
    """
    _mask_top_k(logits, top_k)
    logits += noise
    return _checked_argmax(logits)


# ---------------------------------------------------------------- writing together with the model


class Session:
    """A text written together with the model (`charrnn sample --interactive`): the text so far and the
    model's state after it. Tokens come from the user (add), or from the model (write).

    - params, config, vocab: the model; lines: it was trained on lines (it starts from the start token)
    - prime: the text to begin with; rng: the only source of randomness
    """

    def __init__(self, params, config, vocab: Vocab, lines: bool, prime: str, rng: np.random.Generator):
        weights = model.prepare(params, config)
        head_b = weights.head_b.copy()
        head_b[[vocab.unk, vocab.bos]] = -np.inf  # never offered, never drawn (as in generate)
        self.weights = dataclasses.replace(weights, head_b=head_b)
        self.vocab, self.rng = vocab, rng
        self.state = model.zero_state(config, 1)
        self.ids: list[int] = []
        if lines:
            start = [vocab.bos]
        else:
            start = [int(vocab.encode("\n")[-1])] if "\n" in vocab.tokens else [vocab.eos]
        self._feed(start)
        self.add(encode_prime(vocab, prime))

    @property
    def text(self) -> str:
        return self.vocab.decode(np.array(self.ids, dtype=np.int64))

    def _feed(self, tokens) -> None:
        for token in tokens:
            self.logits, self.state = inference.step(self.weights, np.array([int(token)]), self.state)

    def add(self, tokens) -> None:
        """Append token ids (the user's) to the text."""
        tokens = [int(t) for t in tokens]
        self.ids.extend(tokens)
        self._feed(tokens)

    def top(self, n: int) -> list[tuple[int, float]]:
        """The n likeliest next tokens under the model (temperature 1), as (id, probability), likeliest first."""
        probs = next_token_probs(self.logits, 1.0, None, None, [self.vocab.unk, self.vocab.bos])[0]  # (V,)
        order = np.argsort(-probs, kind="stable")[:n]
        return [(int(t), float(probs[t])) for t in order if probs[t] > 0]

    def write(self, n: int, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None):
        """Let the model write up to n tokens; returns (tokens written, whether it stopped at EOS)."""
        for wrote in range(n):
            token = int(draw_next(self.logits.copy(), self.rng, temperature, top_k, top_p)[0])
            if token == self.vocab.eos:
                return wrote, True
            self.add([token])
        return n, False
