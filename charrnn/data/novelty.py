"""Is a sample new or copied? Indexes over a run's stored training ids (`charrnn sample --novelty`).

Nothing here scans the training text per sample; each index is built once:
- lines mode, `LineIndex`: a 64-bit polynomial hash of every line, sorted (in
  memory, or by models.line_index from `line_hash_runs` merged on disk); a
  sample line is looked up by binary search and confirmed by comparing ids.
- stream mode, `StreamIndex`: every training position sorted by the next k
  tokens packed into one integer, ties by position (`gram_order` in memory;
  `sorted_run` and `merge_runs`, the pieces of the external merge sort that
  builds it in bounded memory for the run). A sample's matches at a start position are one range of that
  order, found by binary search; longer matches extend those candidates a
  token at a time, all together. The longest stretch is the best over the
  start positions that could still beat it.
The math is on arrays only and touches no files (models.novelty_index spills the runs
and stores the stream index beside the run's training ids).
"""

from __future__ import annotations

import numpy as np

_HASH_BASE = np.uint64(0x100000001B3)  # an odd multiplier: hashes are polynomials mod 2**64
_LINE_CHUNK = 1 << 22                   # tokens hashed per pass (bounds the temporaries)


# ---------------------------------------------------------------- lines mode: exact copies


def _line_hashes(ids, offsets) -> np.ndarray:
    """Hash of each line ids[offsets[i]:offsets[i+1]]: sum over t of (id_t + 1) * BASE**t mod 2**64; (n_lines,)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.uint64)
    if n <= 0:
        return out
    longest = int(np.diff(offsets).max())
    powers = np.ones(max(longest, 1), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(1, len(powers)):
            powers[t] = powers[t - 1] * _HASH_BASE
        first = 0
        while first < n:
            # whole lines, about _LINE_CHUNK tokens at a time
            last = int(np.searchsorted(offsets, offsets[first] + _LINE_CHUNK, side="right")) - 1
            last = min(max(last, first + 1), n)
            a, b = offsets[first], offsets[last]
            lens = np.diff(offsets[first : last + 1])
            chunk = np.asarray(ids[a:b]).astype(np.uint64) + np.uint64(1)
            within = np.arange(b - a, dtype=np.int64) - np.repeat(offsets[first:last] - a, lens)
            chunk *= powers[within]
            nonempty = lens > 0
            starts = (offsets[first:last] - a)[nonempty]
            if starts.size:
                out[first:last][nonempty] = np.add.reduceat(chunk, starts)
            first = last
    return out


class LineIndex:
    """The lines of a split (ids + offsets as a run stores them), for asking whether a line is one of them."""

    def __init__(self, ids, offsets, hashes=None, order=None):
        """- hashes, order: the sorted line hashes and the lines in that order, as line_hash_runs and
          merge_sorted make them on disk (memory-mapped); None: computed here, in memory"""
        self.ids = ids
        self.offsets = offsets
        if hashes is None:
            hashes = _line_hashes(ids, offsets)
            order = np.argsort(hashes, kind="stable")
            hashes = hashes[order]
        self.order, self.hashes = order, hashes

    def __contains__(self, line) -> bool:
        """line: (n,) token ids of one line, no BOS or EOS."""
        line = np.asarray(line)
        (h,) = _line_hashes(line, [0, len(line)])
        lo, hi = np.searchsorted(self.hashes, h, side="left"), np.searchsorted(self.hashes, h, side="right")
        for i in np.asarray(self.order[lo:hi], dtype=np.int64):  # equal hashes: confirm by the ids (a
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])             # collision is not a copy)
            if b - a == len(line) and np.array_equal(self.ids[a:b], line):
                return True
        return False


def line_hash_runs(ids, offsets, run_lines: int):
    """Yield (hashes, lines) of each run of run_lines lines: their hashes sorted, with the line numbers in
    that order (ties by line number), for merge_sorted; one run's lines in memory at a time."""
    n = len(offsets) - 1
    for start in range(0, n, run_lines):
        stop = min(n, start + run_lines)
        part = np.asarray(offsets[start : stop + 1], dtype=np.int64)
        hashes = _line_hashes(ids, part)
        order = np.argsort(hashes, kind="stable")
        yield hashes[order], order + start


# ---------------------------------------------------------------- stream mode: the longest verbatim stretch


def gram_width(ids) -> tuple[int, int]:
    """(bits per symbol, tokens per key): how many tokens one int64 sort key packs (symbols are id + 1,
    0 standing for "past the end", so a suffix that ends sooner sorts before its extensions)."""
    bits = int(np.max(ids, initial=0) + 1).bit_length()
    return bits, max(1, 62 // bits)


def _pack(ids, bits: int, k: int) -> np.ndarray:
    """(N,) int64 key of each position: its next k tokens, the first in the highest bits."""
    n = len(ids)
    symbols = np.asarray(ids, dtype=np.int64) + 1  # (N,)
    key = symbols << (bits * (k - 1))
    for j in range(1, min(k, n)):
        key[: n - j] |= symbols[j:] << (bits * (k - 1 - j))
    return key


def keys_at(ids, positions, bits: int, k: int) -> np.ndarray:
    """The packed key (as _pack makes it) of each of the given positions of ids; (P,) int64."""
    positions = np.asarray(positions, dtype=np.int64)
    n = len(ids)
    key = np.zeros(len(positions), dtype=np.int64)
    for j in range(k):
        at = positions + j
        inside = at < n
        symbols = np.zeros(len(positions), dtype=np.int64)
        symbols[inside] = np.asarray(ids[at[inside]], dtype=np.int64) + 1
        key |= symbols << (bits * (k - 1 - j))
    return key


def order_dtype(n: int):
    """The dtype of an index over n positions: uint32, int64 from 2**32 tokens on."""
    return np.dtype(np.uint32 if n < 2**32 else np.int64)


def sorted_run(ids, start: int, stop: int, bits: int, k: int) -> np.ndarray:
    """Positions start..stop-1 of ids sorted by their packed key, ties by position; (stop - start,) int64.

    Reads ids[start : stop + k - 1] only, so a run's memory is its own length's, whatever the length of ids.
    """
    window = np.asarray(ids[start : min(len(ids), stop + k - 1)])
    keys = _pack(window, bits, k)[: stop - start]
    return np.argsort(keys, kind="stable").astype(np.int64) + start


def merge_runs(ids, runs, bits: int, k: int, budget: int = 1 << 22):
    """Merge sorted runs of positions (as sorted_run makes them, in position order: each run's positions
    below the next run's) into one order by (packed key, position); yields the order a block at a time
    (merge_sorted, with each position's key packed again from ids)."""
    for _, positions in merge_sorted(runs, lambda r, lo, hi, part: keys_at(ids, part, bits, k), budget):
        yield positions


def merge_sorted(runs, keys_of, budget: int = 1 << 22):
    """Merge sorted runs of positions (each sorted by (key, position), each run's positions below the next
    run's) into one order by (key, position); yields (keys, positions) a block at a time.

    - runs: sequences of positions (memory-mapped files: only a block of each is read at a time)
    - keys_of(r, lo, hi, positions): the keys of run r's positions lo:hi (packed again, or read from a
      file of the run's sorted keys)
    - budget: positions held at once over all runs (with their keys, 16 bytes each): the memory is this
      constant, whatever the number and length of the runs
    Each step takes from every run what is at most the smallest last (key, position) read among the runs
    that have more to read, so nothing taken can be preceded by what is still unread, ties included. The
    parts taken are sorted stably in run order: ties in position order.
    """
    block = max(1, budget // max(1, len(runs)))
    read = [0] * len(runs)           # positions of each run read so far
    held_pos = [None] * len(runs)    # (b,) positions read and not yet given out, per run
    held_key = [None] * len(runs)

    def refill(r):
        part = np.asarray(runs[r][read[r] : read[r] + block], dtype=np.int64)
        held_pos[r], held_key[r] = part, keys_of(r, read[r], read[r] + len(part), part)
        read[r] += len(part)

    for r in range(len(runs)):
        refill(r)
    while True:
        live = [r for r in range(len(runs)) if len(held_pos[r])]
        if not live:
            return
        more = [(held_key[r][-1], held_pos[r][-1]) for r in live if read[r] < len(runs[r])]
        limit = min(more) if more else None  # (key, position): what is still unread sorts after it
        pos_parts, key_parts = [], []
        for r in live:
            take = len(held_key[r])
            if limit is not None:
                lo, hi = np.searchsorted(held_key[r], limit[0], side="left"), np.searchsorted(held_key[r], limit[0],
                                                                                             side="right")
                take = int(lo + np.searchsorted(held_pos[r][lo:hi], limit[1], side="right"))
            pos_parts.append(held_pos[r][:take])
            key_parts.append(held_key[r][:take])
            held_pos[r], held_key[r] = held_pos[r][take:], held_key[r][take:]
            if not len(held_pos[r]) and read[r] < len(runs[r]):
                refill(r)
        keys = np.concatenate(key_parts)
        order = np.argsort(keys, kind="stable")
        yield keys[order], np.concatenate(pos_parts)[order]


def gram_order(ids) -> np.ndarray:
    """The training positions sorted by the next gram_width(ids)[1] tokens, ties by position: the index,
    in memory (models.novelty_index builds it in bounded runs merged from disk instead; the same order).

    - ids: (N,) non-negative token ids
    - returns: (N,) uint32 (int64 from 2**32 tokens on); one sort of packed keys, no per-position Python work
    """
    bits, k = gram_width(ids)
    return sorted_run(ids, 0, len(ids), bits, k).astype(order_dtype(len(ids)))


class StreamIndex:
    """The training ids with their gram_order, for the longest stretch of a sample found verbatim in them.

    A start position's matches of up to k tokens are one contiguous range of the
    order (found by binary search on the packed keys); longer matches extend
    those candidates a token at a time, all at once, keeping those that still agree.
    """

    def __init__(self, ids, order=None):
        self.ids = ids
        self.n = len(ids)
        self.bits, self.k = gram_width(ids) if self.n else (1, 1)
        self.top = (1 << self.bits) - 2  # the largest id a key can hold; larger ones occur nowhere in ids
        self.order = gram_order(ids) if order is None else order
        if len(self.order) != self.n:
            raise ValueError("the index does not belong to these ids")

    def _key(self, pos: int) -> int:
        key = 0
        for token in np.asarray(self.ids[pos : pos + self.k], dtype=np.int64):
            key = (key << self.bits) | (int(token) + 1)
        return key << (self.bits * (self.k - min(self.k, self.n - pos)))

    def _bound(self, key: int) -> int:
        """The first place in the order whose position's key is >= key."""
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if self._key(int(self.order[mid])) < key:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def _range(self, gram) -> tuple[int, int]:
        """[lo, hi) of the order: the positions whose next len(gram) <= k tokens are gram."""
        prefix = 0
        for token in gram:
            if not 0 <= token <= self.top:
                return 0, 0
            prefix = (prefix << self.bits) | (int(token) + 1)
        shift = self.bits * (self.k - len(gram))
        return self._bound(prefix << shift), self._bound((prefix + 1) << shift)

    def longest_match(self, sample) -> tuple[int, int]:
        """The longest stretch of sample found verbatim in the ids: (length, start in sample), (0, 0) if none.

        - sample: (m,) token ids
        """
        sample = np.asarray(sample, dtype=np.int64)
        m, best, where = len(sample), 0, 0
        if self.n == 0:
            return 0, 0
        for i in range(m):
            if m - i <= best:
                break
            width = min(self.k, m - i)
            lo, hi = self._range(sample[i : i + width])
            if lo == hi:
                # no match of `width` tokens here: the longest, if it could beat the best, is shorter
                for shorter in range(width - 1, best, -1):
                    lo, hi = self._range(sample[i : i + shorter])
                    if lo < hi:
                        best, where = shorter, i
                        break
                continue
            length = width
            if length == self.k and m - i > length:
                length = self._extend(self.order[lo:hi].astype(np.int64), sample[i:], length)
            if length > best:
                best, where = length, i
        return best, where

    def _extend(self, starts, rest, length: int) -> int:
        """How far the candidates (training positions agreeing with rest on `length` tokens) agree with rest."""
        while length < len(rest):
            ahead = starts + length
            keep = ahead < self.n
            starts, ahead = starts[keep], ahead[keep]
            starts = starts[np.asarray(self.ids[ahead] if isinstance(self.ids, np.ndarray) else
                                       np.take(self.ids, ahead)) == rest[length]]
            if starts.size == 0:
                break
            length += 1
        return length
