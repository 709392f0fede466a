"""Scoring held-out text: mean negative log-likelihood, perplexity, bits per token.

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
import tempfile
from dataclasses import dataclass

import numpy as np

from ..data import batches
from ..core import classifier, model
from ..files import corpus, textfile
from ..step import inference, parallel
from ..errors import ConfigError

# The shortest piece a stream is cut into (see stream_count). Each piece starts
# with no context: on tinyshakespeare's held-out tenth a 2 x 128 LSTM scored
# 1.8895 nats in one piece, 1.8931 in pieces of 1000 (111 of them), 1.8980 in
# pieces of 435 and 1.9242 in pieces of 108.
MIN_STREAM = 1000


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


def json_safe(value):
    """value with every float that is not finite (NaN, an infinite loss or perplexity) made None, in dicts, lists
    and tuples at any depth: JSON has no such numbers (json.dumps would write NaN, which no JSON reader takes)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


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


def score_ids(params, config, vocab, ids, offsets=None) -> Score:
    """Score encoded ids with the vocabulary's specials: as lines when offsets are given, else as one stream."""
    if offsets is not None:
        return score_lines(params, config, ids, offsets, vocab.bos, vocab.eos, unk=vocab.unk)
    return score_stream(params, config, ids, unk=vocab.unk)


def score_text(params, config, vocab, text: str, lines: bool) -> Score:
    """Score a text: each non-empty line as one example (lines), or the whole text as one stream."""
    if lines:
        return score_ids(params, config, vocab, *corpus.encode_lines(vocab, corpus.split_lines(text)))
    return score_ids(params, config, vocab, vocab.encode(text))


def score_file(params, config, vocab, path, lines: bool, errors: str = "strict",
               chunk_bytes: int = textfile.CHUNK_BYTES, encoding: str = corpus.DEFAULT_ENCODING) -> Score:
    """score_text of a file's text, without holding it: the file is read and encoded in chunks (as
    textfile prepares a corpus) into a temporary file of ids, scored memory-mapped. The same Score as
    score_text(corpus.read_text(path, errors)); a pipe or device (which cannot be read twice), or a file
    in an encoding that cannot be read in chunks (UTF-16, UTF-32), is spooled first (textfile.open_source)."""
    tf = textfile.open_source(path, errors, chunk_bytes, long_lines=True, encoding=encoding)
    with tempfile.TemporaryFile(prefix="charrnn-eval-") as ids_file, \
            tempfile.TemporaryFile(prefix="charrnn-eval-") as offsets_file:
        n = n_lines = 0
        if lines:
            offsets_file.write(np.zeros(1, dtype=np.int64).tobytes())
            for part in textfile.line_blocks(tf, vocab.level):
                ids, offsets = corpus.encode_lines(vocab, part)
                ids_file.write(ids.tobytes())
                offsets_file.write((offsets[1:] + n).tobytes())
                n, n_lines = n + ids.size, n_lines + len(part)
        else:
            for piece in textfile.text_pieces(tf, vocab.level):
                ids = vocab.encode(piece)
                ids_file.write(ids.tobytes())
                n += ids.size
        ids_file.flush()
        offsets_file.flush()
        ids = np.memmap(ids_file, dtype=vocab.dtype, mode="r", shape=(n,)) if n else np.empty(0, vocab.dtype)
        if not lines:
            return score_ids(params, config, vocab, ids)
        offsets = np.memmap(offsets_file, dtype=np.int64, mode="r", shape=(n_lines + 1,))
        return score_ids(params, config, vocab, ids, offsets)


# ---------------------------------------------------------------- classifiers


def classify_texts(params, config, vocab, texts: list[str]) -> np.ndarray:
    """Label probabilities (n, C) of each text (each at least one character), forward only."""
    ids, offsets = corpus.encode_lines(vocab, texts)
    if len(texts) and np.diff(offsets).min() < 1:
        raise ConfigError("every text to classify needs at least one token")
    return classifier.predict(params, config, ids, offsets)


def score_labelled(params, config, vocab, label_names, text: str, where: str) -> dict:
    """A classifier's accuracy, macro-F1, loss and confusion matrix on `label<TAB>text` lines.

    - label_names: the model's labels in id order; where: the text's name, for errors
    Returns classifier.metrics' dict plus "labels" (the names, the confusion matrix's order).
    """
    names, texts = corpus.split_labelled(text, where, min_labels=1)
    tags = corpus.label_ids(names, list(label_names), where)
    probs = classify_texts(params, config, vocab, texts)
    return {**classifier.metrics(probs, tags, config.classes), "labels": list(label_names)}


def score_heldout_labelled(params, config, label_names, ids, offsets, tags) -> dict:
    """score_labelled on encoded lines (a run's stored validation split): ids, offsets, (n,) label ids."""
    probs = classifier.predict(params, config, ids, offsets)
    return {**classifier.metrics(probs, tags, config.classes), "labels": list(label_names)}
