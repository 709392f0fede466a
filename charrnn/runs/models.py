"""Finding and loading the models a run directory holds, and reading its stored data for sample and eval.

`find_checkpoint` turns a PATH (a model file, a run directory, or nothing: the newest run under
checkpoints/) into a model file; `load_checkpoint` loads it with its vocabulary and checked metadata.
The held-out split (`load_heldout`) and the novelty index (`novelty_index`) are read from the data folder
of the run a model file belongs to (`run_of`). Nothing here writes a run, except the novelty index it
stores for the next call when the run can be written.
"""

from __future__ import annotations

import os


from ..files import checkpoint, corpus
from ..data import novelty
from ..files.layout import CHECKPOINTS, DATA_DIR, MODEL_FILE, SNAPSHOTS_DIR, run_model_file
from ..files.modelmeta import check_model_meta
from ..tasks import registry as tasks
from ..errors import CharRNNError, CheckpointError, ConfigError, option
from ..data.vocab import Vocab
from .prepare import data_dir, data_path, read_split


def run_of(model_file: str) -> str:
    """The run directory a model file belongs to: its folder, or for a snapshot (--keep) the run above it."""
    folder = os.path.dirname(model_file)
    if os.path.basename(os.path.normpath(folder)) == SNAPSHOTS_DIR and os.path.isdir(data_dir(os.path.dirname(folder))):
        return os.path.dirname(folder)
    return folder


def load_heldout(model_file: str, lines: bool):
    """(ids, offsets or None) of the validation split stored in the run beside model_file, for scoring.

    ConfigError when there is none (a model file copied out of its run: then the command needs a TEXT_FILE);
    CheckpointError when it is there but damaged (a broken run, exit 1 like every damaged file).
    """
    directory = run_of(model_file)
    if not os.path.exists(data_path(directory, "val.npy")):
        raise ConfigError(f"{model_file} has no stored held-out split beside it; pass a TEXT_FILE")
    try:
        ids, offsets = read_split(directory, "val", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), data_path(directory, "val_offsets.npy"))
    except CharRNNError as exc:
        raise CheckpointError(f"the held-out split stored in {data_dir(directory)} is damaged: {exc}") from None
    return ids, offsets



def find_checkpoint(path: str | None) -> str:
    """The model file to use: PATH (a file, or a run directory), else the newest run under checkpoints/."""
    if path is None:
        candidates = []
        if os.path.isdir(CHECKPOINTS):
            for entry in os.scandir(CHECKPOINTS):
                model_file = os.path.join(entry.path, MODEL_FILE)
                if entry.is_dir() and os.path.isfile(model_file):
                    candidates.append((os.path.getmtime(model_file), entry.path))
        if not candidates:
            raise CheckpointError(f"no trained model under {CHECKPOINTS}/; train one with `charrnn train` "
                                  f"or pass {option('path')}")
        path = max(candidates)[1]
    if os.path.isdir(path):
        model_file = run_model_file(path)
        if os.path.isfile(model_file):
            return model_file
        runs = sorted((os.path.getmtime(run_model_file(e.path)), e.name) for e in _entries(path)
                      if e.is_dir() and os.path.isfile(run_model_file(e.path)))
        if runs:
            names = [name for _, name in sorted(runs, key=lambda r: r[1])]
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")
            raise CheckpointError(f"{path} is a folder of runs, not a run: pass one of them, such as "
                                  f"{option('path', os.path.join(path, runs[-1][1]))} (the newest); it holds {shown}")
        raise CheckpointError(f"{path} is a folder that holds no {MODEL_FILE}: neither a run directory nor a "
                              f"folder of runs")
    if not os.path.exists(path):
        raise CheckpointError(f"no such checkpoint: {path}")
    if _looks_like_text(path):
        raise CheckpointError(f"{path} is a text file, not a model: {option('path')} takes a run directory or a "
                              f".safetensors model file (to score this text: charrnn eval {path} -c RUN)")
    return path


def _entries(path):
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def _looks_like_text(path) -> bool:
    """Whether a file is text rather than a model: a safetensors file starts with its header's length (8
    bytes, a NUL among them for any header under 72 PB) and then "{"; text has no NUL in its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False  # load_model names what is wrong
    if len(head) >= 9 and head[8:9] == b"{":
        return False
    return bool(head) and b"\0" not in head


def load_checkpoint(path: str | None):
    """(params, config, vocab, meta, model_file) from a checkpoint path or the latest run (see find_checkpoint)."""
    model_file = find_checkpoint(path)
    params, config, meta = checkpoint.load_model(model_file)
    try:
        vocab = Vocab.from_dict({"level": meta.get("level", "char"), "tokens": meta["tokens"],
                                 "special": meta["special"]})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{model_file}: missing vocabulary entry {exc}") from None
    except CharRNNError as exc:
        raise CheckpointError(f"{model_file}: bad vocabulary: {exc}") from None
    if vocab.size != config.vocab_size:
        raise CheckpointError(f"{model_file}: {vocab.size} tokens but the model expects {config.vocab_size}")
    check_model_meta(meta, model_file)
    tasks.of_model(config, meta, model_file)  # the task's own entries (a classifier's labels), checked
    return params, config, vocab, meta, model_file


# ---------------------------------------------------------------- the novelty index (charrnn sample --novelty)

NOVELTY_INDEX = "train_index.npy"  # in data/: the stream-mode index of the training ids (novelty.gram_order)


def novelty_index(model_file: str, lines: bool):
    """The index that tells how new a sample of the model in model_file is; returns (index, built now).

    - lines: (LineIndex of the training lines, LineIndex of the validation lines or None)
    - stream: a novelty.StreamIndex, read from data/train_index.npy or built and stored there (where the
      run directory cannot be written, it is built for this call only)
    ConfigError when no training data is stored beside the model (a model file copied out of its run).
    """
    directory = run_of(model_file)
    if not os.path.exists(data_path(directory, "train.npy")):
        raise ConfigError(f"{option('novelty')} compares samples with the training text stored beside the model, and "
                          f"{model_file} has none ({DATA_DIR}/train.npy)")
    try:
        ids, offsets = read_split(directory, "train", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), data_path(directory, "train_offsets.npy"), min_lines=1)
    except CharRNNError as exc:
        raise CheckpointError(f"the training split stored in {data_dir(directory)} is damaged: {exc}") from None
    if lines:
        try:
            val = read_split(directory, "val", True)
            corpus.check_offsets(val[1], len(val[0]), data_path(directory, "val_offsets.npy"))
            val_index = novelty.LineIndex(*val)
        except CharRNNError:
            val_index = None
        return (novelty.LineIndex(ids, offsets), val_index), True
    path = data_path(directory, NOVELTY_INDEX)
    order = None
    if os.path.exists(path):
        try:
            order = corpus.load_ids(path)
        except CharRNNError:
            order = None
        if order is not None and len(order) != len(ids):
            order = None  # not this run's: build it again
    if order is not None:
        return novelty.StreamIndex(ids, order), False
    index = novelty.StreamIndex(ids)
    try:
        corpus.save_ids(path, index.order)
    except CharRNNError:
        pass  # a read-only run: the index serves this call only
    return index, True
