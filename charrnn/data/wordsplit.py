"""Word-level splitting compiled with numba: the fast path beside vocab.py's WORD_PATTERN (the reference).

Preparing a word-level corpus splits its text twice (counting, then encoding), and the regular expression
splits about 10 MB a second, making a Python string of every token. Here a compiled loop finds the
tokens' boundaries in the text's code points and the distinct tokens among them with a hash table, and
Python makes a string of each distinct token only: the caller counts and looks up those.

- Every code point's class (a word character, the newline, other whitespace, anything else) comes from a
  table built once (`classes`) by running the regular expressions WORD_PATTERN is made of over every code
  point, so the tokens are WORD_PATTERN.findall's by construction.
- Two tokens are the same token only when their code points are equal: the hash only finds the candidate,
  so a collision can never merge two words.
- Nothing depends on threads or timing: one pass, in the text's order.

tests/test_wordsplit.py holds it to the reference on random text and on every code point.
"""

from __future__ import annotations

import functools
import re

import numba
import numpy as np

WORD, NEWLINE, SPACE, OTHER = 0, 1, 2, 3
_JIT = dict(nogil=True, cache=True, boundscheck=False)
_FNV_OFFSET = np.uint64(14695981039346656037)
_FNV_PRIME = np.uint64(1099511628211)


@functools.cache
def classes() -> np.ndarray:
    """(0x110000,) uint8: the class of every code point: WORD where `\\w` matches it, NEWLINE for "\\n",
    SPACE where `[^\\S\\n]` matches it, else OTHER (WORD_PATTERN's alternatives). About 0.1 s, once."""
    every = "".join(map(chr, range(0x110000)))  # lone surrogates included: a str may hold them
    table = np.full(0x110000, OTHER, dtype=np.uint8)
    for pattern, kind in ((r"\w+", WORD), (r"[^\S\n]+", SPACE)):
        for match in re.finditer(pattern, every):  # runs of neighbouring code points: a few thousand
            table[match.start():match.end()] = kind
    table[ord("\n")] = NEWLINE
    return table


@numba.njit(**_JIT)
def _token_spans(cps, table):
    """(starts, ends) of WORD_PATTERN's tokens: runs of WORD, a NEWLINE, runs of SPACE, a single OTHER."""
    n = cps.size
    starts = np.empty(n, dtype=np.int64)
    ends = np.empty(n, dtype=np.int64)
    k = 0
    i = 0
    while i < n:
        kind = table[cps[i]]
        j = i + 1
        if kind == WORD or kind == SPACE:
            while j < n and table[cps[j]] == kind:
                j += 1
        starts[k] = i
        ends[k] = j
        k += 1
        i = j
    return starts[:k], ends[:k]


@numba.njit(**_JIT)
def _distinct(cps, starts, ends):
    """For the spans (starts, ends) of cps: the span index of each distinct one's first occurrence, in
    order of first appearance; how many spans equal each; and each span's index among the distinct ones.
    An open-addressing table of FNV-1a hashes finds the candidates and the code points decide. The table
    grows with the distinct spans, not the spans, so that it stays in cache (a text of 2.4 million tokens
    has some 13 thousand distinct ones)."""
    k = starts.size
    size = 1 << 12
    slots = np.full(size, -1, dtype=np.int64)
    first = np.empty(k, dtype=np.int64)
    counts = np.zeros(k, dtype=np.int64)
    hashes = np.empty(k, dtype=np.uint64)
    inverse = np.empty(k, dtype=np.int64)
    m = 0
    for t in range(k):
        s = starts[t]
        length = ends[t] - s
        h = _FNV_OFFSET
        for i in range(s, s + length):
            h = (h ^ np.uint64(cps[i])) * _FNV_PRIME
        mask = np.uint64(size - 1)
        slot = np.int64(h & mask)
        while True:
            u = slots[slot]
            if u < 0:
                slots[slot] = m
                first[m] = t
                counts[m] = 1
                hashes[m] = h
                inverse[t] = m
                m += 1
                if 2 * m > size:  # at most half full: double the table and place every distinct span again
                    size *= 2
                    mask = np.uint64(size - 1)
                    slots = np.full(size, -1, dtype=np.int64)
                    for v in range(m):
                        slot = np.int64(hashes[v] & mask)
                        while slots[slot] >= 0:
                            slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)
                        slots[slot] = v
                break
            f = starts[first[u]]
            if hashes[u] == h and ends[first[u]] - f == length:
                same = True
                for i in range(length):
                    if cps[f + i] != cps[s + i]:
                        same = False
                        break
                if same:
                    counts[u] += 1
                    inverse[t] = u
                    break
            slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)
    return first[:m], counts[:m], inverse


def distinct_tokens(piece: str, cps: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """vocab.distinct_tokens, compiled: (the distinct tokens in order of first appearance, (d,) int64 how
    many times each appears, (n,) int64 each of the n tokens' index among them). cps: the piece's code
    points (vocab._codepoints)."""
    starts, ends = _token_spans(cps, classes())
    first, counts, inverse = _distinct(cps, starts, ends)
    return [piece[a:b] for a, b in zip(starts[first].tolist(), ends[first].tolist())], counts, inverse
