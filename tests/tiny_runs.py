"""What the test modules share: tiny corpora, tiny settings, tiny run directories, the CLI, the log.

- `stream_text(n_words)`: English-like text from a dozen words; `NAMES`: 26 short names (lines mode)
- `TINY`: `charrnn train` options fixing every setting the CLI would otherwise choose
  from the corpus size and budget, on a model small enough to train in milliseconds
- `make_run` saves random weights with the metadata `rundir.model_meta` produces
  (tokens, special ids, level, data mode), plus the held-out ids under data/, so
  sample and eval see exactly what they see after `charrnn train`
- `invoke` runs the real console entry point (`cli.main`, which turns library
  errors into one line on stderr) in-process, stdout and stderr captured apart
- `read_log` reads a run's log.jsonl with the library's reader, and fails on a
  line that reader would skip (a torn line, a record without a step)
- `PINNED`: the environment that pins BLAS to one thread, so that every process
  computes the same numbers; `untimed`: log records without their timing fields
- `REFERENCE`: the variable that runs a child process on the NumPy reference, for the
  tests about a process (signals, pipes, a terminal, kill -9, the lock) rather than its arithmetic
- `compiled(name)`: charrnn.core.kernels or gemm, and `without_kernels(why)`: where a compiled
  kernel cannot run, skip, or fail naming why where CI sets CHARRNN_REQUIRE_KERNELS

The fixtures built on these (`corpus_file`, `names_file`, `backend`) are in conftest.py.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner

from charrnn.files import checkpoint, corpus, layout
from charrnn import cli
from charrnn.core import model
from charrnn.runs import runlog
from charrnn.core.model import ModelConfig
from charrnn.data.vocab import SPECIAL_TOKENS, Vocab

NAMES = ("anna bob carl dave emma fred gina hugo iris jack kate liam mona nick olga paul "
         "quinn rosa sam tina ugo vera walt xena yann zoe").split()

# every setting the CLI would otherwise choose from the corpus size, the budget or the machine is fixed (and
# no early stopping: several runs evaluate every step and must go on until they are stopped); float32, as
# bf16 is a language model's default only where the CPU has AVX512-BF16 (test_precision tests that choice)
TINY = ["--cell", "lstm", "--layers", "1", "--hidden", "8", "--embed", "8", "--dropout", "0", "--schedule", "constant",
        "--warmup", "0", "--batch-size", "2", "--seq-len", "8", "--patience", "0", "--precision", "float32"]

PINNED = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Importing numba and loading its cached kernels is most of a tiny run's start-up (0.9 s against 0.35 s
# on the NumPy reference, measured on this project's 2-core machine). A test about the process, not its
# arithmetic, runs its children with this; the kernels are tested in-process against the reference
# (test_kernels.py, the `backend` fixture) and across processes on numba (test_resume.py, test_mpi.py).
REFERENCE = {"CHARRNN_KERNELS": "numpy"}
# CI (.ci/run) requires the compiled kernels: there a kernel that cannot run fails the tests, never skips them
REQUIRE_KERNELS = bool(os.environ.get("CHARRNN_REQUIRE_KERNELS"))
TIMING = ("elapsed", "chars_per_sec")  # the only logged fields two runs of the same settings may differ in


def stream_text(n_words: int, seed: int = 0) -> str:
    """About 5 * n_words characters of English-like text, one line."""
    rng = np.random.default_rng(seed)
    words = "the quick brown fox jumps over a lazy dog and then sleeps".split()
    return " ".join(words[i] for i in rng.integers(0, len(words), n_words)) + "\n"


def without_kernels(why: str):
    """A compiled kernel cannot run here (`why`): skip the test (or module), or fail it where
    CHARRNN_REQUIRE_KERNELS is set, so that CI never passes on the NumPy reference alone."""
    if REQUIRE_KERNELS:
        pytest.fail(f"CHARRNN_REQUIRE_KERNELS is set but {why}", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def compiled(name: str):
    """The compiled module charrnn.core.<name> (kernels, gemm), or charrnn.<name> for a dotted name
    (data.wordsplit), or without_kernels(why it does not import)."""
    module = f"charrnn.{name}" if "." in name else f"charrnn.core.{name}"
    try:
        return importlib.import_module(module)
    except Exception as exc:  # numba or llvmlite missing, or broken on this machine
        without_kernels(f"{module} does not import ({type(exc).__name__}: {exc})")


def without(args: list, name: str) -> list:
    """args with the option `name` and its value left out (the first time it appears)."""
    i = args.index(name)
    return args[:i] + args[i + 2:]


def read_log(run_dir) -> list[dict]:
    """The records of RUN_DIR/log.jsonl, read by runlog.read_log; every non-blank line must be one, but
    for a last line the trainer is still writing. Both counts come from one snapshot of the file: a
    trainer that goes on writing would otherwise add lines between the two reads."""
    path = os.path.join(run_dir, layout.LOG_FILE)
    with open(path, "rb") as f:
        data = f.read()
    with tempfile.TemporaryDirectory() as folder:
        snapshot = os.path.join(folder, layout.LOG_FILE)
        with open(snapshot, "wb") as f:
            f.write(data)
        records = runlog.read_log(snapshot)
    lines = [line for line in data[: data.rfind(b"\n") + 1].splitlines() if line.strip()]  # complete lines
    torn = len(data.rstrip(b"\n")) > 0 and not data.endswith(b"\n")  # a last line being written
    assert len(records) in ((len(lines), len(lines) + 1) if torn else (len(lines),)), \
        f"{path}: {len(lines) - len(records)} line(s) are not step records"
    return records


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


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


class Invoked(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


def invoke(args: list, input: str | None = None) -> Invoked:
    """Run `charrnn ARGS` in-process through cli.main, with `input` on stdin: (exit code, stdout, stderr)."""
    runner = CliRunner()
    with runner.isolation(input=input) as (out, err, _):
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return Invoked(code, out.getvalue().decode("utf-8"), err.getvalue().decode("utf-8"))
