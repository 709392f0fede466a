"""Batches of token ids: contiguous streams for truncated BPTT, and padded, masked line batches.

Every function here is pure: a batch is fully determined by its arguments (a
window number, or a seed and an epoch), so a run resumes exactly from a cursor.

Stream layout: the data (N,) is cut into B contiguous streams of length
S = (N - 1) // B; stream b starts at b*S. Window k of every stream covers the
T inputs x = data[b*S + k*T : b*S + (k+1)*T] and targets y = x shifted by one,
so window k+1 continues window k and the caller carries the hidden state over.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..errors import ConfigError, CorpusError, option


def _check_positive(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def stream_windows(n_tokens: int, batch: int, seq_len: int) -> int:
    """Number of stream windows in one epoch.

    - n_tokens: corpus length N in tokens
    - batch: number of streams B
    - seq_len: window length T
    - returns: S // T with S = (N - 1) // B; raises CorpusError when that is 0
    """
    batch, seq_len = _check_positive("batch size", batch), _check_positive("sequence length", seq_len)
    windows = max(int(n_tokens) - 1, 0) // batch // seq_len
    if windows == 0:
        n = int(n_tokens)
        have = f"the training text is {n:,} token{'' if n == 1 else 's'} long"
        if n < 2:  # nothing to shrink: one token to read and the next to predict is the least a step takes
            raise CorpusError(f"{have}, but training needs at least 2 (one to read, the next to predict); "
                              f"give a longer text")
        need = batch * seq_len + 1
        smaller = " or ".join(option(name) for name, value in (("batch_size", batch), ("seq_len", seq_len)) if value > 1)
        raise CorpusError(f"{have} but batch size {batch} x sequence length {seq_len} needs at least {need:,}; "
                          f"use a smaller {smaller}")
    return windows


def _gather_windows(data, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """x, y of shape (B, length) int64 from rows starting at starts (B,); one fancy index into data."""
    idx = starts[:, None] + np.arange(length + 1)  # (B, T+1)
    chunk = np.asarray(data[idx], dtype=np.int64)  # (B, T+1)
    return np.ascontiguousarray(chunk[:, :-1]), np.ascontiguousarray(chunk[:, 1:])


def stream_batch(data, batch: int, seq_len: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Window `window` of the B contiguous streams.

    - data: (N,) integer ids; an ndarray or np.memmap (only the window's ids are read)
    - batch: number of streams B
    - seq_len: window length T
    - window: window index k, 0 <= k < stream_windows(N, B, T)
    - returns x: (B, T) int64, data[b*S + k*T + t]
    - returns y: (B, T) int64, data[b*S + k*T + t + 1]
    """
    n_windows = stream_windows(len(data), batch, seq_len)
    if not 0 <= window < n_windows:
        raise ConfigError(f"window {window} is out of range; an epoch has {n_windows} windows")
    stream_len = (len(data) - 1) // batch
    starts = np.arange(batch, dtype=np.int64) * stream_len + window * seq_len  # (B,)
    return _gather_windows(data, starts, seq_len)


def stream_eval_batches(data, batch: int, seq_len: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All of a held-out array as stream windows in order, for evaluation.

    Uses the stream layout with B' = min(batch, N - 1) streams; the last window
    of each stream may be shorter than T, so every position of the streams is
    scored once. The final (N - 1) - B'*S targets (fewer than B') are not scored.
    - data: (N,) integer ids, N >= 2; an ndarray or np.memmap
    - batch: most streams B
    - seq_len: longest window T
    - yields x: (B', T') int64 and y: (B', T') int64, T' <= T, streams continuing across yields
    """
    batch, seq_len = _check_positive("batch size", batch), _check_positive("sequence length", seq_len)
    n = len(data)
    if n < 2:
        raise CorpusError(f"the evaluation text is {n} tokens long; it needs at least 2")
    batch = min(batch, n - 1)
    stream_len = (n - 1) // batch
    base = np.arange(batch, dtype=np.int64) * stream_len  # (B',)
    for t0 in range(0, stream_len, seq_len):
        yield _gather_windows(data, base + t0, min(seq_len, stream_len - t0))


def line_batches(n_lines: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """One epoch's batches of line indices, in a shuffled order fixed by (seed, epoch).

    - n_lines: number of lines
    - batch: lines per batch B
    - seed: run seed, a non-negative integer
    - epoch: epoch number, a non-negative integer
    - returns: list of ceil(n_lines / B) int64 arrays of shape (B,) (the last may be shorter)
    """
    batch = _check_positive("batch size", batch)
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be non-negative, got seed {seed} and epoch {epoch}")
    order = np.random.default_rng([int(seed), int(epoch)]).permutation(int(n_lines))
    return [order[i : i + batch] for i in range(0, int(n_lines), batch)]


def line_batches_in_order(n_lines: int, batch: int) -> list[np.ndarray]:
    """Batches of line indices in file order, for evaluation.

    - n_lines: number of lines
    - batch: lines per batch B
    - returns: list of int64 arrays of shape (B,) (the last may be shorter) covering 0..n_lines-1
    """
    batch = _check_positive("batch size", batch)
    order = np.arange(int(n_lines), dtype=np.int64)
    return [order[i : i + batch] for i in range(0, int(n_lines), batch)]


def line_batch(ids, offsets: np.ndarray, line_indices, bos: int, eos: int):
    """A padded batch of lines: predict each line from BOS, then predict EOS.

    - ids: (total_tokens,) integer ids of all lines back to back (ndarray or np.memmap)
    - offsets: (n_lines + 1,) int64; line i is ids[offsets[i]:offsets[i + 1]]
    - line_indices: (B,) indices of the lines in this batch
    - bos, eos: the special ids; eos also pads
    - returns x: (B, Tmax) int64, [bos] + line, then eos padding; Tmax = 1 + longest line
    - returns y: (B, Tmax) int64, line + [eos], then eos padding
    - returns mask: (B, Tmax) bool, True at the len(line) + 1 scored positions
    """
    rows = np.asarray(line_indices, dtype=np.int64).reshape(-1)  # (B,)
    if rows.size == 0:
        raise ConfigError("a line batch needs at least one line")
    offsets = np.asarray(offsets)
    starts = offsets[rows]  # (B,)
    lengths = offsets[rows + 1] - starts  # (B,)
    t_max = 1 + int(lengths.max())
    x = np.full((rows.size, t_max), eos, dtype=np.int64)  # (B, Tmax)
    y = np.full((rows.size, t_max), eos, dtype=np.int64)  # (B, Tmax)
    x[:, 0] = bos
    pos = np.arange(t_max - 1)  # (Tmax-1,)
    inside = pos < lengths[:, None]  # (B, Tmax-1)
    # One gather for every token of the batch, in row-major order to match the boolean assignments.
    tokens = np.asarray(ids[(starts[:, None] + pos)[inside]], dtype=np.int64)
    x[:, 1:][inside] = tokens
    y[:, :-1][inside] = tokens
    mask = np.arange(t_max) <= lengths[:, None]  # (B, Tmax)
    return x, y, mask


# Length buckets: an epoch's shuffled lines are cut into pools of this many batches; each pool is sorted by
# length and cut into batches, and the batches of the whole epoch are shuffled. A batch then holds lines of
# nearly one length (little padding), while every epoch still mixes them afresh.
BUCKET_POOL = 32


def bucketed_line_batches(lengths, batch: int, seed: int, epoch: int, pool: int = BUCKET_POOL) -> list[np.ndarray]:
    """One epoch's batches of line indices, each of lines of similar length, in an order fixed by (seed, epoch).

    - lengths: (n_lines,) each line's length in tokens (what decides its padding)
    - batch: lines per batch B; seed, epoch: non-negative integers; pool: batches per sorted pool
    - returns: a list of int64 arrays covering every line once; at most one per pool holds fewer than B
      lines, and the shuffle draws only from (seed, epoch), so the batches are a function of the
      lengths, the settings and the seed
    """
    batch, pool = _check_positive("batch size", batch), _check_positive("bucket pool", pool)
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be non-negative, got seed {seed} and epoch {epoch}")
    lengths = np.asarray(lengths).reshape(-1)
    rng = np.random.default_rng([int(seed), int(epoch), 1])  # a stream of its own beside line_batches'
    order = rng.permutation(lengths.size)
    out = []
    for start in range(0, lengths.size, batch * pool):
        chunk = order[start:start + batch * pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]  # ties keep the shuffled order
        out += [chunk[i:i + batch] for i in range(0, chunk.size, batch)]
    return [out[i] for i in rng.permutation(len(out))]
