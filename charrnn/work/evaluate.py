"""Scoring a language model on text and files: mean negative log-likelihood, perplexity, bits per token.

The scoring itself (Score, score_stream, score_lines) is the language model task's (tasks/lm.py), which
also scores a run's validation split; here a text or a file is read and encoded for it (a file in chunks).
"""

from __future__ import annotations

import math
import tempfile

import numpy as np

from ..files import corpus, textfile
from ..tasks.lm import Score, score_lines, score_stream


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
