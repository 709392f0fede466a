"""Preparing a run's data, and reading it back.

`prepare_data` builds the vocabulary from the training text and stores the encoded ids under the run's
data/ folder (memory-mapped afterwards); `load_data` reads and checks them when a run starts or
resumes. Everything is encoded and checked before the first file is written, so a corpus that cannot
train leaves no files behind.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np

from ..files import checkpoint, corpus, textfile
from ..files.config import TrainConfig
from ..files.layout import DATA_DIR
from ..tasks import registry as tasks
from ..errors import CheckpointError, CorpusError, option
from ..data.vocab import Vocab, build_vocab, extend_vocab, vocab_from_counts


def data_dir(directory) -> str:
    """Where a run keeps its encoded ids."""
    return os.path.join(directory, DATA_DIR)


def data_path(directory, name) -> str:
    """The path of one file of a run's data folder."""
    return os.path.join(directory, DATA_DIR, name)


def prepare_data(directory, train_text, val_text, tconfig: TrainConfig, base_vocab: Vocab | None = None,
                 extend: bool = False, where: tuple = ("the corpus", "the validation text")) -> Vocab:
    """Build the vocabulary from the training text and store encoded ids under directory/data, through the
    one corpus engine (textfile.prepare_data, which reads the text in chunks).

    - train_text: the corpus, a textfile.TextFile (a file, a pipe, a folder's or a built-in corpus's spool)
      or a str (spooled first: source)
    - val_text: a separate validation text (TextFile or str), or None to hold out val_frac
    - base_vocab: a fine-tuned model's vocabulary, kept (unseen tokens become UNK) or, with extend,
      extended by the new tokens of the training text (see vocab.extend_vocab)
    - where: the two texts' names, for errors about a str
    Returns the vocabulary. Afterwards training reads only the memory-mapped arrays.
    """
    task = tasks.get(tconfig.task)
    check_data_dir(directory)
    if task.chunked:  # the one corpus engine
        train_text = source(train_text, where[0], task)
        val_text = source(val_text, where[1], task, validation=True)
        return textfile.prepare_data(data_dir(directory), train_text, val_text, tconfig, base_vocab, extend)
    # a task whose examples the engine does not read (Task.chunked False): its lines, in memory

    def make_vocab(text, exclude=()):
        if base_vocab is None:
            return build_vocab(text, tconfig.level, tconfig.min_count, tconfig.max_vocab)
        return extend_vocab(base_vocab, text, tconfig.min_count, exclude) if extend else base_vocab

    arrays = {}
    # lines mode: the task's examples: its lines, and what it predicts of each (None: the lines' own tokens)
    lines, tags, names = task.read_lines(train_text, where[0], level=tconfig.level)
    _check_line_lengths(lines, labelled=task.labelled())
    if val_text is None:
        # lists (names, titles) are often sorted: hold out a seeded random share, not the tail
        order = np.random.default_rng(tconfig.seed).permutation(len(lines))
        n_val = int(len(lines) * tconfig.val_frac)
        val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
        val_lines = [lines[i] for i in val_rows]
        lines = [lines[i] for i in train_rows]
        if tags is not None:
            tags, val_tags = task.take(tags, train_rows), task.take(tags, val_rows)
    else:
        val_lines, val_tags, _ = task.read_lines(val_text, where[1], names, level=tconfig.level)
        _check_line_lengths(val_lines, "validation ", labelled=task.labelled())
    if not lines:
        raise CorpusError("lines mode needs at least one non-empty training line")
    vocab = _lines_vocab(lines, tconfig) if base_vocab is None else \
        make_vocab("\n".join(lines), exclude=("\n",))
    for name, part in (("train", lines), ("val", val_lines)):
        arrays[f"{name}.npy"], arrays[f"{name}_offsets.npy"] = corpus.encode_lines(vocab, part)
    os.makedirs(data_dir(directory), exist_ok=True)
    checkpoint.cleanup_temp_files(data_dir(directory))  # left by a start that was killed
    for name, ids in arrays.items():
        corpus.save_ids(data_path(directory, name), ids)
    if tags is not None:
        task.store(data_dir(directory), names, (tags, val_tags))
    return vocab


def source(text, name: str, task, validation: bool = False):
    """A text for the engine: a TextFile (or None) as it is, a str spooled; its lines are the task's
    (Task.line_parser: a classifier's label<TAB>text)."""
    if not isinstance(text, str):
        return text
    tf = textfile.spool_text([corpus.normalize_newlines(text)], name)
    tf.parse = task.line_parser(validation)
    return tf


def check_data_dir(directory) -> None:
    """CheckpointError unless the run's data folder is missing or a real folder (never a symbolic link,
    through which the id files would be written outside the run)."""
    path = data_dir(directory)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise CheckpointError(f"{path} is not a folder of the run (a symbolic link or a file); charrnn writes a "
                              f"run's files only inside its directory: remove it, or choose another {option('out')}")


def _check_line_lengths(lines: list[str], which: str = "", labelled: bool = False) -> None:
    """CorpusError when a line is too long to be one example of lines mode (labelled: a task's labelled one)."""
    corpus.check_line_lengths(max(map(len, lines), default=0), which, classifier=labelled)


def _lines_vocab(lines: list[str], tconfig: TrainConfig) -> Vocab:
    """The vocabulary of lines mode: the lines' tokens only.

    No "\n" token: lines hold none, and a sampler that could emit one would
    break the one-line-per-sample output. At word level the lines are joined
    with "\n" (so words of neighbouring lines do not merge) and that token is
    dropped afterwards, which may leave one token fewer than --max-vocab. Lines given as token lists (a
    tagger's) count each token whole.
    """
    if lines and not isinstance(lines[0], str):  # token lists (Task.read_lines): each token whole
        counts = Counter(token for line in lines for token in line)
        return vocab_from_counts(counts, tconfig.level, tconfig.min_count, tconfig.max_vocab)
    if tconfig.level == "char":
        return build_vocab("".join(lines), "char", tconfig.min_count, tconfig.max_vocab)
    vocab = build_vocab("\n".join(lines), "word", tconfig.min_count, tconfig.max_vocab)
    return Vocab(tuple(t for t in vocab.tokens if t != "\n"), "word")


def read_split(directory, split: str, lines: bool):
    """(ids, offsets or None) of a stored split ("train" or "val"); offsets only in lines mode, unchecked."""
    ids = corpus.load_ids(data_path(directory, f"{split}.npy"))
    return ids, corpus.load_ids(data_path(directory, f"{split}_offsets.npy")) if lines else None


def load_data(directory, tconfig: TrainConfig):
    """(train ids, val ids, train offsets, val offsets, the task's data: Task.load) of a run's data folder,
    memory-mapped and checked; CheckpointError when anything is missing or damaged, for the data folder is
    part of the run."""
    lines = tconfig.mode == "lines"
    try:
        (train_ids, train_off), (val_ids, val_off) = (read_split(directory, s, lines) for s in ("train", "val"))
    except Exception as exc:  # the data folder is part of the run: any failure is a broken run
        raise CheckpointError(f"cannot read the run's data in {directory}/{DATA_DIR}: {exc}") from None
    if lines:
        try:
            corpus.check_offsets(train_off, len(train_ids), "train_offsets.npy", min_lines=1)
            corpus.check_offsets(val_off, len(val_ids), "val_offsets.npy")
        except CorpusError as exc:
            raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} is damaged: {exc}") from None
    return train_ids, val_ids, train_off, val_off, tasks.get(tconfig.task).load(directory, (train_off, val_off))

