"""The language model task: predict each next token (many-to-many, equal lengths).

Its examples are the corpus's token ids: one stream (stream mode: B contiguous streams, truncated BPTT)
or lines (lines mode: each line from a start token through its end token, padded and masked). Its head is
model.py's softmax over the vocabulary at every step, its loss the mean NLL per token, and its metrics
(`Score`: loss, perplexity, bits per token, unknown tokens) come from scoring held-out ids here: the same
functions score a run's validation split and `charrnn eval`'s files (work/evaluate.py reads the files).

Scoring is forward-only, in chunks of `chunk` steps with the state carried, so
the result does not depend on the chunk size and memory stays bounded for
long files (128 steps a chunk by default: each chunk pays for packing the step
weights, kernels.py, and for handing its row blocks to threads; 32 scored about
a fifth slower). Stream text is cut into at most `streams` contiguous pieces, each
at least MIN_STREAM tokens long, scored side by side (each piece starts from a
zero state, as in training); every token after the first is scored exactly
once. The model runs through `inference.score_chunk`, which keeps no backward
caches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import model
from ..data import batches
from ..errors import CheckpointError, ConfigError, option
from ..files import corpus
from ..step import distributed, inference, parallel
from .base import Batch, Task, summed_over_ranks

# The shortest piece a stream is cut into (see stream_count). Each piece starts
# with no context: on tinyshakespeare's held-out tenth a 2 x 128 LSTM scored
# 1.8895 nats in one piece, 1.8931 in pieces of 1000 (111 of them), 1.8980 in
# pieces of 435 and 1.9242 in pieces of 108.
MIN_STREAM = 1000

UNKNOWN_SHARE = 0.01  # mostly_unseen: more of a score's tokens than this are unknown ...
UNKNOWN_TRAINED = 5   # ... and more than this many times the share of <unk> in the model's training tokens


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
        """exp(loss): inf when that is beyond the float range (a loss above about 709.78 nats), nan when
        nothing was scored or the loss is nan."""
        return exp_or_inf(self.loss) if self.tokens else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.loss / math.log(2)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "bits_per_token": self.bits_per_token,
                "tokens": self.tokens, "unknown": self.unknown}

    def __repr__(self) -> str:
        """What `charrnn eval` reports, not the sum it is computed from: print(model.score(text)) reads
        <Score loss 1.4644 nats/token, perplexity 4.325, 2.113 bits/token, 1,000 tokens (0 unknown)>."""
        return (f"<Score loss {self.loss:.4f} nats/token, perplexity {self.perplexity:.4g}, "
                f"{self.bits_per_token:.4f} bits/token, {self.tokens:,} tokens ({self.unknown:,} unknown)>")


def exp_or_inf(x: float) -> float:
    """math.exp(x), but inf where the result is beyond the float range instead of an OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def stream_count(n_targets: int, streams: int, min_length: int = MIN_STREAM) -> int:
    """How many side-by-side pieces to cut n_targets scored positions into.

    At most `streams`, and few enough that each piece is at least `min_length`
    long: every piece starts from a zero state and predicts its first tokens
    with little context, so short pieces would make a short text score worse
    than the model is. Above 16 the count is rounded down to a multiple of 16
    (longer pieces still): BLAS multiplies such row counts faster, for the
    reference LSTM 96 rows in 136 us against 111 in 172. min_length 0:
    exactly min(streams, n_targets). Always at least 1.
    """
    if min_length > 0:
        streams = min(streams, n_targets // min_length)
        if streams > 16:
            streams -= streams % 16
    return max(1, min(streams, n_targets))


class _Blocks:
    """B rows scored chunk after chunk as row blocks on threads, each block carrying its own state."""

    def __init__(self, weights, batch: int, threads: int):
        self.weights, self.rows = weights, parallel.row_blocks(batch, threads)
        self.states = [None] * len(self.rows)

    def score(self, x, y, mask):
        """(nll_sum, count) of the chunk x, y (B, t) with mask (B, t) or None; the states move on."""
        def block(p):
            rows = self.rows[p]
            return inference.score_chunk(self.weights, x[rows], y[rows], None if mask is None else mask[rows],
                                         self.states[p])

        nll, count = 0.0, 0
        for p, (block_nll, block_count, state) in enumerate(parallel.run_blocks(block, len(self.rows))):
            nll, count, self.states[p] = nll + block_nll, count + block_count, state  # in block order
        return nll, count


def score_stream(params, config, ids, *, streams: int = 128, chunk: int = 128, unk: int | None = None,
                 min_length: int = MIN_STREAM, threads: int = 2) -> Score:
    """Score a token sequence: every ids[i], i >= 1, is predicted from what precedes it in its stream.

    - params, config: the model
    - ids: (N,) token ids (ndarray or memmap)
    - streams: the most pieces scored side by side (see stream_count); chunk: time steps per forward call
    - min_length: the shortest piece (see stream_count); 0 cuts exactly min(streams, N - 1) pieces
    - unk: the UNK id, to count unknown tokens (None: not counted)
    - threads: the streams are scored in this many row blocks, one thread each (see parallel.py)
    Returns a Score.
    """
    n_targets = len(ids) - 1
    if n_targets < 1:
        return Score(0.0, 0, 0)
    if chunk < 1 or streams < 1:
        raise ConfigError(f"chunk and streams must be at least 1, got {chunk} and {streams}")
    B = stream_count(n_targets, streams, min_length)
    S = math.ceil(n_targets / B)  # positions per stream; the last stream is padded and masked
    starts = np.arange(B) * S  # (B,)
    weights = model.prepare(params, config)
    blocks = _Blocks(weights, B, threads)
    nll, count, unknown = 0.0, 0, 0
    for t0 in range(0, S, chunk):
        pos = starts[:, None] + np.arange(t0, min(t0 + chunk, S))  # (B, t)
        valid = pos < n_targets  # (B, t)
        pos = np.where(valid, pos, 0)
        x = np.asarray(ids[pos], dtype=np.int64)  # (B, t)
        y = np.asarray(ids[pos + 1], dtype=np.int64)  # (B, t)
        corpus.release_pages(ids)  # a memory-mapped file's pages read so far (a no-op for an array)
        chunk_nll, chunk_count = blocks.score(x, y, None if valid.all() else valid)
        nll += chunk_nll
        count += chunk_count
        if unk is not None:
            unknown += int(np.count_nonzero((y == unk) & valid))
    return Score(nll, count, unknown)


def score_lines(params, config, ids, offsets, bos: int, eos: int, *, batch: int = 128, chunk: int = 128,
                unk: int | None = None, threads: int = 2) -> Score:
    """Score lines: each from a start token through its EOS, as training in lines mode does.

    - params, config: the model
    - ids: (n,) concatenated line ids; offsets: (n_lines + 1,) boundaries
    - bos, eos: the special ids; batch: lines scored side by side; chunk: time steps per forward call
    - unk: the UNK id, to count unknown tokens (None: not counted)
    - threads: each batch of lines is scored in this many row blocks, one thread each
    Returns a Score; each line contributes len(line) + 1 scored tokens (its EOS included).
    """
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk}")
    weights = model.prepare(params, config)
    nll, count, unknown = 0.0, 0, 0
    n_lines = len(offsets) - 1
    if batch < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch}")
    for start in range(0, n_lines, batch):  # in file order, one batch at a time (no index of every line)
        index = np.arange(start, min(start + batch, n_lines), dtype=np.int64)
        x, y, mask = batches.line_batch(ids, offsets, index, bos, eos)
        corpus.release_pages(ids)
        blocks = _Blocks(weights, x.shape[0], threads)
        for t0 in range(0, x.shape[1], chunk):
            sl = slice(t0, t0 + chunk)
            chunk_nll, chunk_count = blocks.score(x[:, sl], y[:, sl], mask[:, sl])
            nll += chunk_nll
            count += chunk_count
        if unk is not None:
            unknown += int(np.count_nonzero((y == unk) & mask))
    return Score(nll, count, unknown)



class LanguageModel(Task):
    """Predict every next token: a stream's or a line's (see the module's docstring)."""
    name = "lm"
    noun = "a language model"
    summary = "a language model"
    fine_tunes = True  # unit, modes and levels: the contract's (a token; stream or lines; char or word)
    bf16 = True
    methods = ("sample", "score", "annotate")
    command = "sample"
    chunked = True

    def check_request(self, *, builtin: bool, folder: bool, init_from: bool, options: dict) -> None:
        if "pool" in options:
            raise ConfigError(f"{option('pool')} needs {option('task', 'classify')}: a language model predicts at "
                              "every step, it pools nothing")

    # ------------------------------------------------------------ training

    def batch(self, run, step: int) -> Batch:
        tc = run.tconfig
        epoch, index = divmod(step, run.steps_per_epoch)
        if tc.mode == "stream":
            x, y = batches.stream_batch(run.train_ids, tc.batch_size, tc.seq_len, index)
            return Batch(x, y, None, index == 0)
        order = run.data.epoch_order(run, epoch)
        x, y, mask = batches.line_batch(run.train_ids, run.train_offsets, order[index], run.vocab.bos, run.vocab.eos)
        return Batch(x, y, mask, True)

    def loss_and_grads(self, run, batch: Batch, state, rngs, group=distributed.Solo()):
        """In seq_len chunks with the state carried (truncated BPTT); each chunk's rows in tconfig.threads
        blocks (parallel.py), and under MPI this rank's rows only (group.rows; state holds those rows),
        the ranks' gradients summed in rank order. The loss is the mean NLL over the whole batch's scored
        tokens, and the tokens counted are the whole batch's."""
        x, y, mask = batch.inputs, batch.targets, batch.mask
        T = run.tconfig.seq_len
        total = int(np.count_nonzero(mask)) if mask is not None else y.size
        if group.size > 1:
            rows = group.rows(x.shape[0])
            x, y, mask = x[rows], y[rows], None if mask is None else mask[rows]
            if x.shape[0] == 0:  # a short last batch of lines can leave a rank no rows: it adds zeros
                zeros = {k: np.zeros_like(v) for k, v in run.params.items()}
                return summed_over_ranks(run.params, group, 0.0, zeros, total) + (state, total)
        grads, nll = None, 0.0
        # the weights laid out once for every chunk and block of the step (parallel.prepare)
        weights = parallel.prepare(run.params, run.config, (x.shape[0], min(T, x.shape[1])), run.tconfig.threads)
        for t0 in range(0, x.shape[1], T):
            sl = slice(t0, t0 + T)
            chunk_nll, g, state = parallel.loss_and_grads(
                run.params, run.config, x[:, sl], y[:, sl], None if mask is None else mask[:, sl], state,
                count=total, rngs=rngs, parts=run.tconfig.threads, weights=weights)
            nll += chunk_nll
            if grads is None:
                grads = g
            else:
                for k, v in g.items():
                    grads[k] += v
        if group.size > 1:
            return summed_over_ranks(run.params, group, nll, grads, total) + (state, total)
        return (nll / total if total else 0.0), grads, state, total

    def validation_loss(self, run) -> float:
        """Mean NLL per token on (the first eval_tokens of) the held-out data (whole lines in lines mode)."""
        limit = run.tconfig.eval_tokens
        if run.tconfig.mode == "stream":
            ids = run.val_ids if limit is None else run.val_ids[: limit + 1]
            if len(ids) < 2:
                return math.nan
            return score_stream(run.params, run.config, ids, threads=run.tconfig.threads).loss
        offsets = heldout_lines(run.val_offsets, limit)
        if offsets is None:
            return math.nan
        return score_lines(run.params, run.config, run.val_ids, offsets,
                           run.vocab.bos, run.vocab.eos, threads=run.tconfig.threads).loss


    # ------------------------------------------------------------ what the front ends say of it

    def count_unit(self, level: str) -> str:
        return "char" if level == "char" else "token"

    def outputs(self, config) -> tuple:
        return config.vocab_size, "tokens"  # its softmax is over the whole vocabulary

    def next_line(self, c: str) -> str:
        return f"charrnn sample {c} (new text), charrnn eval {c} (the held-out loss)"

    eval_methods = ("score", "score_file")

    def eval_result(self, value) -> dict:
        return value.as_dict()

    def eval_warning(self, result: dict, meta: dict) -> str | None:
        """When the text is mostly unseen (see mostly_unseen)."""
        if not mostly_unseen(result["unknown"], result["tokens"], meta):
            return None
        return (f"Warning: {result['unknown']:,} of the {result['tokens']:,} tokens scored "
                f"({result['unknown'] / result['tokens']:.1%}) are not in the model's vocabulary. Each is scored as "
                f"the model's probability of its unknown token, which training rarely saw, so the figures below say "
                f"little about this text; train on text like it, or with {option('min_count')} or "
                f"{option('max_vocab')} to give <unk> examples.")

    def eval_lines(self, result: dict, source: str, unit: str, shown) -> list:
        return [f"{shown(source)}: {result['tokens']:,} tokens scored ({result['unknown']:,} unknown)",
                f"loss        {result['loss']:.4f} nats/{unit}",
                f"perplexity  {result['perplexity']:.3f}",
                f"bits        {result['bits_per_token']:.4f} bits/{unit}"]

    def check_data(self, data, config, where: str) -> None:
        self.check_metadata({}, config, where)

    def check_metadata(self, meta: dict, config, where: str) -> None:
        if config.classes:
            raise CheckpointError(f"{where}: a language model's file, but its model has {config.classes} labels")


def mostly_unseen(unknown: int, tokens: int, meta: dict) -> bool:
    """Whether so many of a score's tokens are unknown to the model (meta: its file's metadata) that its
    figures say little about the text: more than UNKNOWN_SHARE of them, and more than UNKNOWN_TRAINED times
    the share of <unk> in the model's training tokens (rare words made <unk> by min_count: a model that
    learned <unk> from them about as often as the text holds it scores such tokens as it learned to)."""
    trained = meta.get("data", {}).get("train_unknown", 0.0)
    trained = trained if isinstance(trained, (int, float)) and math.isfinite(trained) else 0.0
    return unknown > max(UNKNOWN_SHARE, UNKNOWN_TRAINED * trained) * tokens


def heldout_lines(offsets, limit: int | None):
    """The boundaries of the held-out lines an evaluation scores: whole lines up to `limit` tokens (at least
    one line; None: all), or None when there are no lines."""
    if len(offsets) < 2:
        return None
    if limit is not None:
        n_lines = max(1, int(np.searchsorted(offsets, limit, side="right")) - 1)
        offsets = offsets[: n_lines + 1]
    return offsets
