"""Tiny run directories for the sample and eval tests, written the way the trainer writes them.

`make_run` saves random weights with the metadata `rundir.model_meta` produces
(tokens, special ids, level, data mode), plus the held-out ids under data/, so
sample and eval see exactly what they see after `charrnn train`. `invoke` runs
the real console entry point (`cli.main`, which turns library errors into one
line on stderr) with stdout and stderr captured separately.
"""

from __future__ import annotations

import os

import numpy as np
from click.testing import CliRunner

from charrnn import checkpoint, cli, corpus, layout, model
from charrnn.model import ModelConfig
from charrnn.vocab import SPECIAL_TOKENS, Vocab


def make_run(directory, chars: str, *, mode: str = "stream", cell: str = "lstm", layers: int = 2, hidden: int = 16,
             embed: int = 8, dtype: str = "float32", seed: int = 0, edit=None, val_text: str | None = None):
    """Write a run directory holding model.safetensors (and data/val*.npy when val_text is given).

    - chars: the characters of the vocabulary (after the three specials)
    - edit: optional function(params, vocab) changing the weights before saving
    - val_text: held-out text (lines mode: one example per line)
    Returns (params, config, vocab, model_file).
    """
    directory = os.fspath(directory)
    vocab = Vocab(SPECIAL_TOKENS + tuple(sorted(set(chars))), "char")
    config = ModelConfig(vocab_size=vocab.size, cell=cell, layers=layers, hidden=hidden, embed=embed, dtype=dtype)
    params = model.init_params(config, np.random.default_rng(seed))
    if edit is not None:
        edit(params, vocab)
    meta = {"tokens": list(vocab.tokens), "special": vocab.special, "level": vocab.level,
            "data": {"mode": mode, "level": vocab.level, "seq_len": 16}}
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    model_file = os.path.join(directory, layout.MODEL_FILE)
    checkpoint.save_model(model_file, params, config, meta)
    if val_text is not None:
        if mode == "lines":
            ids, offsets = corpus.encode_lines(vocab, corpus.split_lines(val_text))
            corpus.save_ids(os.path.join(directory, "data", "val_offsets.npy"), offsets)
        else:
            ids = vocab.encode(val_text)
        corpus.save_ids(os.path.join(directory, "data", "val.npy"), ids)
    return params, config, vocab, model_file


def invoke(args: list[str]):
    """Run `charrnn ARGS` in-process through cli.main: returns (exit code, stdout, stderr)."""
    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8")
