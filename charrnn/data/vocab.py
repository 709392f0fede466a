"""Vocabulary: tokens (characters, or words as an option), special ids, encode/decode, JSON form.

Ids 0, 1, 2 are always the specials EOS, UNK and BOS; regular tokens follow in
sorted order, so ids never depend on hashing or on the order text was seen in.
A fine-tuned model's vocabulary may be extended (`extend_vocab`): the new tokens
follow the old ones, sorted among themselves, so no id changes meaning.

Word level splits text with `WORD_PATTERN`: runs of word characters, single
newlines, runs of other whitespace, and single punctuation characters. Every
character belongs to exactly one token, so "".join(tokenize(t, "word")) == t.

Decoding: EOS and BOS decode to "" (they mark boundaries, not text); UNK
decodes to U+FFFD (the replacement character), so lost text stays visible.
"""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from itertools import repeat
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, VocabError

EOS, UNK, BOS = 0, 1, 2
SPECIAL_IDS = {"eos": EOS, "unk": UNK, "bos": BOS}
SPECIAL_TOKENS = ("<eos>", "<unk>", "<bos>")
LEVELS = ("char", "word")
UNK_TEXT = "\ufffd"

# Newlines are single tokens so line structure is learned as its own token and
# so a chunk boundary placed before a newline is always a token boundary.
WORD_PATTERN = re.compile(r"\w+|\n|[^\S\n]+|[^\w\s]")

# Characters per chunk when encoding or counting: bounds temporaries on huge texts.
_CHUNK = 1 << 20


def id_dtype(size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id of a vocabulary.

    - size: number of tokens, specials included
    - returns: np.dtype uint8 (size <= 256), uint16 (<= 65536) or uint32
    """
    if size <= 1 << 8:
        return np.dtype(np.uint8)
    if size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def tokenize(text: str, level: str) -> list[str]:
    """Split text into tokens; "".join(result) == text at both levels.

    - text: the text
    - level: "char" (one token per character) or "word" (see WORD_PATTERN)
    - returns: list of token strings
    """
    _check_level(level, ConfigError)
    if level == "char":
        return list(text)
    return WORD_PATTERN.findall(text)


def distinct_tokens(piece: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The word-level tokens of piece, by their distinct values: (the distinct tokens in order of first
    appearance, (d,) int64 how many times each appears, (n,) int64 each of piece's n tokens' index among
    them, so that [distinct[i] for i in inverse] == tokenize(piece, "word")). Compiled (wordsplit.py)
    unless CHARRNN_KERNELS=numpy or numba cannot load; distinct_tokens_reference defines it."""
    fast = _word_kernels()
    return distinct_tokens_reference(piece) if fast is None else fast.distinct_tokens(piece, _codepoints(piece))


def distinct_line_tokens(lines: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """distinct_tokens of lines (none holding a newline) split as one text joined by newlines, the joins
    left out: (the distinct tokens, their counts (a "\n" that only joins counts 0), the lines' tokens'
    indices among them back to back, (len(lines),) each line's number of tokens). One split for a block of
    lines, where a split per line cost a call each."""
    tokens, counts, inverse = distinct_tokens("\n".join(lines))
    if "\n" not in tokens:
        return tokens, counts, inverse, np.full(min(len(lines), 1), inverse.size, dtype=np.int64)
    joins = inverse == tokens.index("\n")
    counts = counts.copy()
    counts[tokens.index("\n")] = 0
    per_line = np.diff(np.concatenate([[-1], np.flatnonzero(joins), [inverse.size]])) - 1
    return tokens, counts, inverse[~joins], per_line


def distinct_tokens_reference(piece: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """distinct_tokens by WORD_PATTERN and a dictionary: the reference."""
    index: dict = {}
    inverse = np.fromiter((index.setdefault(t, len(index)) for t in WORD_PATTERN.findall(piece)), dtype=np.int64)
    return list(index), np.bincount(inverse, minlength=len(index)).astype(np.int64), inverse


@functools.cache
def _word_kernels():
    """The compiled word splitter (wordsplit.py), or None: CHARRNN_KERNELS=numpy, or numba does not load
    (training then says so once: model.recurrence)."""
    if os.environ.get("CHARRNN_KERNELS", "numba").strip().lower() == "numpy":
        return None
    try:
        from . import wordsplit
    except Exception:  # numba missing, or broken on this machine: the reference gives the same tokens
        return None
    return wordsplit


def _check_level(level, error) -> None:
    if level not in LEVELS:
        raise error(f"unknown vocabulary level {level!r}; expected 'char' or 'word'")


def _chunks(text: str, level: str):
    """Yield consecutive pieces of text, about _CHUNK characters, cut on token boundaries."""
    n, start = len(text), 0
    while start < n:
        end = start + _CHUNK
        if end >= n:
            end = n
        elif level == "word":
            # A newline is always a token of its own, so cutting before one never splits a token.
            nl = text.find("\n", end)
            end = n if nl < 0 else max(nl, start + 1)
        yield text[start:end]
        start = end


def _codepoints(piece: str) -> np.ndarray:
    """Code points of a string, shape (len(piece),) uint32 (uint8 for ASCII text), without a Python loop."""
    if piece.isascii():
        return np.frombuffer(piece.encode("ascii"), dtype=np.uint8)
    # surrogatepass: a lone surrogate is still one character, so it gets an id (UNK) instead of an error.
    return np.frombuffer(piece.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@dataclass(frozen=True)
class Vocab:
    """A token <-> id mapping; ids 0, 1, 2 are EOS, UNK, BOS.

    - tokens: token strings in id order, the three specials first
    - level: "char" or "word"
    """

    tokens: tuple[str, ...]
    level: str
    # Lookup structures built once from `tokens`; not part of identity.
    _index: dict = field(init=False, repr=False, compare=False)
    _char_table: np.ndarray | None = field(init=False, repr=False, compare=False)
    _decode_table: np.ndarray = field(init=False, repr=False, compare=False)  # code points (char) or strings (word)
    _ascii_table: bytes | None = field(init=False, repr=False, compare=False)  # byte -> id, for bytes.translate

    def __post_init__(self):
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        _check_level(self.level, VocabError)
        if tokens[:3] != SPECIAL_TOKENS:
            raise VocabError(
                f"vocabulary must start with the special tokens {list(SPECIAL_TOKENS)} "
                f"(ids 0, 1, 2); got {list(tokens[:3])}"
            )
        for i, tok in enumerate(tokens[3:], start=3):
            if not isinstance(tok, str) or not tok:
                raise VocabError(f"vocabulary token {i} is {tok!r}; tokens must be non-empty strings")
            if self.level == "char" and len(tok) != 1:
                raise VocabError(f"character vocabulary token {i} is {tok!r}; it must be one character")
        index = {tok: i for i, tok in enumerate(tokens)}
        if len(index) != len(tokens):
            # one pass with a set (tokens.count per token would be quadratic: a crafted file of many copies)
            seen, dupes = set(), set()
            for t in tokens:
                (dupes if t in seen else seen).add(t)
            raise VocabError(f"vocabulary has {len(tokens) - len(index):,} duplicate tokens, such as "
                             f"{sorted(dupes)[:5]}")
        object.__setattr__(self, "_index", index)

        table = None
        if self.level == "char":
            cps = np.array([ord(t) for t in tokens[3:]], dtype=np.int64)
            # Dense code point -> id table; its last slot is UNK and catches every
            # code point above the largest known one (at most 1.1M entries).
            top = int(cps.max()) + 1 if cps.size else 0
            table = np.full(top + 1, UNK, dtype=id_dtype(len(tokens)))
            table[cps] = np.arange(3, len(tokens))
            # id -> code point; EOS and BOS map to 0 but are filtered out before use.
            dec = np.concatenate([[0, ord(UNK_TEXT), 0], cps]).astype(np.uint32)
        else:
            dec = np.array(("", UNK_TEXT, "") + tokens[3:], dtype=object)
        object.__setattr__(self, "_char_table", table)
        # ids of one byte: an ASCII piece encodes with bytes.translate, an order of magnitude faster than np.take
        ascii_table = None
        if table is not None and table.dtype == np.uint8:
            ascii_table = table[np.minimum(np.arange(256), table.size - 1)].tobytes()
        object.__setattr__(self, "_ascii_table", ascii_table)
        object.__setattr__(self, "_decode_table", dec)

    @property
    def eos(self) -> int:
        return EOS

    @property
    def unk(self) -> int:
        return UNK

    @property
    def bos(self) -> int:
        return BOS

    @property
    def size(self) -> int:
        return len(self.tokens)

    @property
    def special(self) -> dict:
        return dict(SPECIAL_IDS)

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(self.size)

    def encode_tokens(self, tokens) -> np.ndarray:
        """(n,) ids of n tokens taken whole (a tagger's words: never split), UNK for a token not in the vocabulary."""
        return np.fromiter(map(self._index.get, tokens, repeat(UNK)), dtype=self.dtype, count=len(tokens))

    def encode(self, text: str) -> np.ndarray:
        """Map text to ids; tokens not in the vocabulary become UNK.

        - text: the text
        - returns: ids of shape (n_tokens,), dtype id_dtype(size)
        """
        if self.level == "char":
            out = np.empty(len(text), dtype=self.dtype)
            table = self._char_table
            last = table.size - 1
            pos = 0
            for piece in _chunks(text, "char"):
                if self._ascii_table is not None and piece.isascii():  # isascii is O(1) for a str
                    out[pos : pos + len(piece)] = np.frombuffer(piece.encode("ascii").translate(self._ascii_table),
                                                                dtype=np.uint8)
                    pos += len(piece)
                    continue
                cps = _codepoints(piece)
                np.take(table, np.minimum(cps, np.uint32(last)), out=out[pos : pos + cps.size])
                pos += cps.size
            return out
        parts = []
        for piece in _chunks(text, "word"):
            tokens, _, inverse = distinct_tokens(piece)  # each distinct token looked up once
            parts.append(self.encode_tokens(tokens)[inverse])
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def decode(self, ids) -> str:
        """Map ids back to text; EOS and BOS give "", UNK gives U+FFFD.

        - ids: an int or a sequence / array of ints, any shape (read in C order)
        - returns: the text
        """
        arr = np.asarray(ids).reshape(-1)
        if arr.size == 0:
            return ""
        if arr.dtype.kind not in "iu":
            raise VocabError(f"token ids must be integers, got dtype {arr.dtype}")
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.size:
            bad = lo if lo < 0 else hi
            raise VocabError(f"token id {bad} is outside the vocabulary (0..{self.size - 1})")
        if self.level == "word":
            return "".join(self._decode_table[arr])
        # Char level: ids -> code points -> one UTF-32 decode per chunk, no per-character Python work.
        parts = []
        for i in range(0, arr.size, _CHUNK):
            chunk = arr[i : i + _CHUNK]
            cps = self._decode_table[chunk]
            cps = cps[(chunk != EOS) & (chunk != BOS)]
            parts.append(cps.tobytes().decode("utf-32-le", "surrogatepass"))
        return "".join(parts)

    def to_dict(self) -> dict:
        """JSON-able form: {"level": str, "tokens": [str, ...], "special": {"eos": 0, "unk": 1, "bos": 2}}."""
        return {"level": self.level, "tokens": list(self.tokens), "special": dict(SPECIAL_IDS)}

    @classmethod
    def from_dict(cls, d) -> Vocab:
        """Rebuild and validate a vocabulary from to_dict's form.

        - d: dict with "level", "tokens", "special"; unknown keys are ignored
        - returns: Vocab; raises VocabError naming the first problem found
        """
        if not isinstance(d, dict):
            raise VocabError(f"vocabulary must be a JSON object, got {type(d).__name__}")
        for key in ("level", "tokens", "special"):
            if key not in d:
                raise VocabError(f"vocabulary is missing the {key!r} field")
        if d["special"] != SPECIAL_IDS:
            raise VocabError(f"vocabulary special ids must be {SPECIAL_IDS}, got {d['special']!r}")
        tokens = d["tokens"]
        if not isinstance(tokens, list):
            raise VocabError(f"vocabulary 'tokens' must be a list, got {type(tokens).__name__}")
        for i, tok in enumerate(tokens):
            if not isinstance(tok, str):
                raise VocabError(f"vocabulary token {i} is {tok!r}; tokens must be strings")
        return cls(tuple(tokens), d["level"])


def _count_chars(text: str) -> dict[str, int]:
    """Character counts, by chunked np.bincount over code points (no per-character Python loop)."""
    counts = np.zeros(0, dtype=np.int64)
    for piece in _chunks(text, "char"):
        c = np.bincount(_codepoints(piece))
        if c.size > counts.size:
            c[: counts.size] += counts
            counts = c
        else:
            counts[: c.size] += c
    (nz,) = np.nonzero(counts)
    return {chr(cp): int(counts[cp]) for cp in nz}


def build_vocab(text: str, level: str = "char", min_count: int = 1, max_vocab: int | None = None) -> Vocab:
    """Vocabulary of the tokens in text.

    - text: the training text
    - level: "char" or "word"
    - min_count: tokens seen fewer times than this are left out (they encode as UNK)
    - max_vocab: keep at most this many regular tokens (specials not counted), most
      frequent first, ties broken by sorted order; None keeps all
    - returns: Vocab with the specials then the kept tokens in sorted order
    """
    _check_level(level, ConfigError)
    _check_limits(min_count, max_vocab)
    if level == "char":
        counts = _count_chars(text)
    else:
        counts = Counter()
        for piece in _chunks(text, "word"):
            counts.update(WORD_PATTERN.findall(piece))
    return vocab_from_counts(counts, level, min_count, max_vocab)


def _check_limits(min_count, max_vocab) -> None:
    if not isinstance(min_count, (int, np.integer)) or min_count < 1:
        raise ConfigError(f"min_count must be a positive integer, got {min_count!r}")
    if max_vocab is not None and (not isinstance(max_vocab, (int, np.integer)) or max_vocab < 1):
        raise ConfigError(f"max_vocab must be a positive integer, got {max_vocab!r}")


def vocab_from_counts(counts: dict, level: str = "char", min_count: int = 1, max_vocab: int | None = None) -> Vocab:
    """build_vocab's vocabulary from the tokens' counts (token -> times seen) instead of the text."""
    _check_level(level, ConfigError)
    _check_limits(min_count, max_vocab)
    kept = sorted(t for t, c in counts.items() if c >= min_count)
    if max_vocab is not None and len(kept) > max_vocab:
        # Stable sort on count keeps the sorted order among equal counts.
        kept = sorted(sorted(kept, key=lambda t: -counts[t])[:max_vocab])
    return Vocab(SPECIAL_TOKENS + tuple(kept), level)


def extend_vocab(base: Vocab, text: str, min_count: int = 1, exclude=()) -> Vocab:
    """base's tokens, then the tokens of text that base lacks (seen at least min_count times), sorted.

    - base: the vocabulary to keep; its ids keep their meaning
    - text: the new training text
    - exclude: tokens never to add (lines mode adds no "\n")
    - returns: Vocab; base itself when nothing is new
    """
    return extend_from_counts(base, dict.fromkeys(build_vocab(text, base.level, min_count).tokens[3:], min_count),
                              min_count, exclude)


def extend_from_counts(base: Vocab, counts: dict, min_count: int = 1, exclude=()) -> Vocab:
    """extend_vocab's vocabulary from the new text's token counts (token -> times seen) instead of the text."""
    _check_limits(min_count, None)
    added = sorted({t for t, c in counts.items() if c >= min_count} - set(base.tokens) - set(exclude))
    return Vocab(base.tokens + tuple(added), base.level) if added else base
