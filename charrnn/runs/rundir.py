"""A run directory: preparing, starting, resuming and saving a run; finding and loading its model.

`start_run` (a new run) and `resume_run` (continue one) return a `Run`, which
the loop in loop.py advances and `save_checkpoint` writes. A run directory
holds the files named in layout.py:

    model.safetensors   latest weights + config + vocabulary (self-contained)
    best.safetensors    the weights with the lowest validation loss so far
    state.safetensors   everything needed to resume exactly (weights too)
    log.jsonl           one JSON object per logging step, appended to on resume
    data/               the encoded training and validation ids (memory-mapped)
    run.json            the run's id and the fingerprint of its vocabulary and data

A state file belongs to one run: it carries the run's id and that fingerprint,
and `resume_run` checks them against run.json and the data (`_identity`, the one
place a state is matched to its run) before anything in the directory is
written. A run made before run ids adopts one on its first resume.

A fresh run directory that never saved a checkpoint (its start was killed, ran
out of disk or diverged before its first save) holds no run: starting again with
the same --out clears what the failed start left (`start_run`).

Exact resume needs no RNG state: batches are fixed by the step number (and
for lines mode, a permutation seeded by (seed, epoch)), and dropout masks are
drawn from a generator seeded by (seed, step). Nothing here prints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from ..files import atomic, checkpoint, corpus, textfile
from ..data import batches, novelty
from ..core import model, optim
from ..core.cells import STATES
from ..files.config import MODES, RESUMABLE, SCHEDULE_KEYS, TrainConfig, is_number
from ..errors import CharRNNError, CheckpointError, ConfigError, CorpusError, option
from ..files.layout import (BEST_FILE, CHECKPOINTS, DATA_DIR, LABELS_FILE, LOG_FILE, MODEL_FILE, RUN_FILE,
                     SNAPSHOTS_DIR, STATE_FILE, run_model_file, snapshot_name)
from ..core.model import ModelConfig
from ..files.runlock import RunLock
from ..data.vocab import UNK, Vocab, build_vocab, extend_vocab



@dataclass
class Run:
    """Everything the loop needs; mutable, owned by one training process."""
    directory: str
    config: ModelConfig
    tconfig: TrainConfig
    vocab: Vocab
    params: dict
    optimizer: optim.Optimizer
    train_ids: np.ndarray              # (N,) encoded training text (memory-mapped)
    val_ids: np.ndarray                # (M,) encoded validation text (memory-mapped)
    train_offsets: np.ndarray | None   # lines mode: (n_lines + 1,) line boundaries
    val_offsets: np.ndarray | None
    step: int = 0                      # optimizer updates taken so far
    carry: tuple | None = None         # stream mode: hidden state carried into the next window
    best_val: float = math.inf
    best_step: int | None = None       # the step of the best validation loss
    evals_since_best: int = 0          # evaluations in a row without a new best (early stopping counts them)
    elapsed: float = 0.0               # wall seconds spent training, over all sessions
    schedule_steps: int | None = None  # total steps the cosine schedule spans
    schedule_since: tuple | None = None  # (step, progress) where a resume re-aimed the cosine (optim.cosine_progress)
    schedule_start: int = 0            # the step the current schedule (tconfig's lr, schedule, warmup) starts at
    schedules: list = field(default_factory=list)  # the schedules before the current one: [{step, lr, schedule, warmup}]
    skipped: int = 0                   # non-finite steps skipped
    log_sum: float = 0.0               # loss summed since the last log line
    log_count: int = 0
    log_bytes: int = 0                 # length of log.jsonl after its last line (saved: resume cuts what follows)
    extra: dict = field(default_factory=dict)  # per-process caches: this epoch's line order
    labels: tuple = ()                 # task classify: the label names, in id order
    train_labels: np.ndarray | None = None  # task classify: (n_lines,) label ids of the training lines
    val_labels: np.ndarray | None = None
    origin: dict | None = None         # a fine-tuned run: the model it started from (rundir._origin)
    identity: dict | None = None       # {"id", "vocab", "data"}: the run's id and fingerprints (rundir._identity)

    @property
    def steps_per_epoch(self) -> int:
        if self.tconfig.mode == "stream":
            return batches.stream_windows(len(self.train_ids), self.tconfig.batch_size, self.tconfig.seq_len)
        return math.ceil((len(self.train_offsets) - 1) / self.tconfig.batch_size)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


# ---------------------------------------------------------------- preparing a run


def data_dir(directory) -> str:
    """Where a run keeps its encoded ids."""
    return os.path.join(directory, DATA_DIR)


def _data_path(directory, name):
    return os.path.join(directory, DATA_DIR, name)


def prepare_data(directory, train_text, val_text, tconfig: TrainConfig, base_vocab: Vocab | None = None,
                 extend: bool = False, where: tuple = ("the corpus", "the validation text")) -> Vocab:
    """Build the vocabulary from the training text and store encoded ids under directory/data.

    - train_text: the corpus, a str or corpus.Documents (a folder: in stream mode EOS ends each file)
    - val_text: a separate validation text (str or Documents), or None to hold out val_frac
    - base_vocab: a fine-tuned model's vocabulary, kept (unseen tokens become UNK) or, with extend,
      extended by the new tokens of the training text (see vocab.extend_vocab)
    - where: the two texts' names, for errors
    Returns the vocabulary. Afterwards training reads only the memory-mapped arrays.
    Everything is encoded and checked before the first file is written, so a corpus
    that cannot train leaves no files behind.
    """
    def make_vocab(text, exclude=()):
        if base_vocab is None:
            return build_vocab(text, tconfig.level, tconfig.min_count, tconfig.max_vocab)
        return extend_vocab(base_vocab, text, tconfig.min_count, exclude) if extend else base_vocab

    _check_data_dir(directory)
    if isinstance(train_text, textfile.TextFile) and tconfig.task == "lm":  # read in chunks
        return textfile.prepare_data(data_dir(directory), train_text, val_text, tconfig, base_vocab, extend)
    arrays = {}
    if tconfig.mode == "stream":
        if val_text is None and tconfig.level == "char" and isinstance(train_text, str):
            # one token per character: encode the whole text once and split the ids, so that no
            # copy of the text is held beside it (peak memory: the text plus its ids)
            cut = corpus.split_index(len(train_text), tconfig.val_frac)
            vocab = make_vocab(train_text[:cut])
            ids = vocab.encode(train_text)
            arrays["train.npy"], arrays["val.npy"] = ids[:cut], ids[cut:]
        else:
            if val_text is None:
                train_text, val_text = (corpus.split_text(train_text, tconfig.val_frac) if isinstance(train_text, str)
                                        else corpus.split_documents(train_text, tconfig.val_frac, tconfig.seed)[:2])
            vocab = make_vocab(corpus.vocab_text(train_text))
            arrays["train.npy"] = corpus.encode_stream(vocab, train_text)
            arrays["val.npy"] = corpus.encode_stream(vocab, val_text)
        # raises CorpusError (with the length and what is needed) when the text is too short for one batch
        batches.stream_windows(len(arrays["train.npy"]), tconfig.batch_size, tconfig.seq_len)
    else:
        classify = tconfig.task == "classify"
        if classify:
            tags, lines = corpus.split_labelled(train_text, where[0])
            label_names = sorted(set(tags))
            tags = corpus.label_ids(tags, label_names, where[0]) if tags else None
        else:
            lines = corpus.lines_of(train_text)
        _check_line_lengths(lines, classifier=classify)
        if val_text is None:
            # lists (names, titles) are often sorted: hold out a seeded random share, not the tail
            order = np.random.default_rng(tconfig.seed).permutation(len(lines))
            n_val = int(len(lines) * tconfig.val_frac)
            val_rows, train_rows = np.sort(order[:n_val]), np.sort(order[n_val:])
            val_lines = [lines[i] for i in val_rows]
            lines = [lines[i] for i in train_rows]
            if classify:
                tags, val_tags = tags[train_rows], tags[val_rows]
        else:
            if classify:
                val_tags, val_lines = corpus.split_labelled(val_text, where[1], min_labels=1)
                val_tags = corpus.label_ids(val_tags, label_names, where[1])
            else:
                val_lines = corpus.lines_of(val_text)
            _check_line_lengths(val_lines, "validation ", classifier=classify)
        if not lines:
            raise CorpusError("lines mode needs at least one non-empty training line")
        vocab = _lines_vocab(lines, tconfig) if base_vocab is None else \
            make_vocab("\n".join(lines), exclude=("\n",))
        for name, part in (("train", lines), ("val", val_lines)):
            arrays[f"{name}.npy"], arrays[f"{name}_offsets.npy"] = corpus.encode_lines(vocab, part)
        if classify:
            arrays["train_labels.npy"], arrays["val_labels.npy"] = tags, val_tags
            labels_json = json.dumps(label_names).encode("utf-8")
    os.makedirs(data_dir(directory), exist_ok=True)
    checkpoint.cleanup_temp_files(data_dir(directory))  # left by a start that was killed
    for name, ids in arrays.items():
        corpus.save_ids(_data_path(directory, name), ids)
    if tconfig.task == "classify":
        atomic.write_file(_data_path(directory, LABELS_FILE), lambda f: f.write(labels_json))
    return vocab


def _check_data_dir(directory) -> None:
    """CheckpointError unless the run's data folder is missing or a real folder (never a symbolic link,
    through which the id files would be written outside the run)."""
    path = data_dir(directory)
    if os.path.islink(path) or (os.path.lexists(path) and not os.path.isdir(path)):
        raise CheckpointError(f"{path} is not a folder of the run (a symbolic link or a file); charrnn writes a "
                              f"run's files only inside its directory: remove it, or choose another {option('out')}")


def read_labels(directory) -> tuple:
    """The label names of a classifier run, from its data folder; CheckpointError when missing or malformed."""
    path = _data_path(directory, LABELS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            labels = json.load(f)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the run's labels {path}: {exc}") from None
    return _checked_labels(labels, None, path)


def _checked_labels(labels, n: int | None, where: str) -> tuple:
    if not (isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)
            and len(set(labels)) == len(labels) and (n is None or len(labels) == n)):
        raise CheckpointError(f"{where}: the labels must be a list of {n or 'at least 2'} distinct names")
    return tuple(labels)


def _check_line_lengths(lines: list[str], which: str = "", classifier: bool = False) -> None:
    """CorpusError when a line is too long to be one example of lines mode."""
    corpus.check_line_lengths(max(map(len, lines), default=0), which, classifier=classifier)


def _lines_vocab(lines: list[str], tconfig: TrainConfig) -> Vocab:
    """The vocabulary of lines mode: the lines' tokens only.

    No "\n" token: lines hold none, and a sampler that could emit one would
    break the one-line-per-sample output. At word level the lines are joined
    with "\n" (so words of neighbouring lines do not merge) and that token is
    dropped afterwards, which may leave one token fewer than --max-vocab.
    """
    if tconfig.level == "char":
        return build_vocab("".join(lines), "char", tconfig.min_count, tconfig.max_vocab)
    vocab = build_vocab("\n".join(lines), "word", tconfig.min_count, tconfig.max_vocab)
    return Vocab(tuple(t for t in vocab.tokens if t != "\n"), "word")


def _read_split(directory, split: str, lines: bool):
    """(ids, offsets or None) of a stored split ("train" or "val"); offsets only in lines mode, unchecked."""
    ids = corpus.load_ids(_data_path(directory, f"{split}.npy"))
    return ids, corpus.load_ids(_data_path(directory, f"{split}_offsets.npy")) if lines else None


def _load_data(directory, mode, classes: int = 0):
    lines = mode == "lines"
    try:
        (train_ids, train_off), (val_ids, val_off) = (_read_split(directory, s, lines) for s in ("train", "val"))
        tags = tuple(corpus.load_ids(_data_path(directory, f"{s}_labels.npy")) for s in ("train", "val")) \
            if classes else (None, None)
    except Exception as exc:  # the data folder is part of the run: any failure is a broken run
        raise CheckpointError(f"cannot read the run's data in {directory}/{DATA_DIR}: {exc}") from None
    if lines:
        try:
            corpus.check_offsets(train_off, len(train_ids), "train_offsets.npy", min_lines=1)
            corpus.check_offsets(val_off, len(val_ids), "val_offsets.npy")
        except CorpusError as exc:
            raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} is damaged: {exc}") from None
    if classes:
        for tag, offsets, name in zip(tags, (train_off, val_off), ("train", "val")):
            if tag.shape != (len(offsets) - 1,) or (tag.size and (tag.min() < 0 or tag.max() >= classes)):
                raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} is damaged: {name}_labels.npy "
                                      f"does not hold one label id below {classes} per line")
        return train_ids, val_ids, train_off, val_off, tags
    return train_ids, val_ids, train_off, val_off


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
    if not os.path.exists(_data_path(directory, "val.npy")):
        raise ConfigError(f"{model_file} has no stored held-out split beside it; pass a TEXT_FILE")
    try:
        ids, offsets = _read_split(directory, "val", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), _data_path(directory, "val_offsets.npy"))
    except CharRNNError as exc:
        raise CheckpointError(f"the held-out split stored in {data_dir(directory)} is damaged: {exc}") from None
    return ids, offsets


def load_heldout_labels(model_file: str, classes: int) -> np.ndarray:
    """(n_lines,) label ids of a classifier's stored validation lines (beside model_file), checked."""
    path = _data_path(run_of(model_file), "val_labels.npy")
    if not os.path.exists(path):
        raise ConfigError(f"{model_file} has no stored held-out labels beside it; pass a labelled FILE")
    try:
        tags = corpus.load_ids(path)
    except CharRNNError as exc:
        raise CheckpointError(f"the held-out labels stored beside {model_file} are damaged: {exc}") from None
    if tags.ndim != 1 or (tags.size and (tags.min() < 0 or tags.max() >= classes)):
        raise CheckpointError(f"{path}: not one label id below {classes} per line")
    return tags


def holds_run(directory) -> bool:
    """Whether directory holds a saved run: a checkpoint (state, latest or best model), never to be overwritten."""
    return any(os.path.lexists(os.path.join(directory, f)) for f in (STATE_FILE, MODEL_FILE, BEST_FILE))


# the files a start writes before its first checkpoint, under data/ (the novelty index: sample --novelty)
_DATA_FILES = ("train.npy", "val.npy", "train_offsets.npy", "val_offsets.npy", "train_labels.npy", "val_labels.npy",
               LABELS_FILE, "train_index.npy")
_LEFTOVER_LOG_LIMIT = 64 << 20  # bytes: a log longer than this is not one a start that never saved could write


def unsaved_start(directory) -> bool:
    """Whether directory holds what a start that never saved a checkpoint leaves: a run.json, or a log.jsonl
    charrnn wrote (every whole line a step record), and no checkpoint."""
    if holds_run(directory):
        return False
    if os.path.isfile(os.path.join(directory, RUN_FILE)) and not os.path.islink(os.path.join(directory, RUN_FILE)):
        return True
    return _charrnn_log(os.path.join(directory, LOG_FILE))


def _charrnn_log(path) -> bool:
    """Whether path is a regular file every whole line of which is a log record (a line cut short by a
    kill may end it): what a start that never saved could have written, and so may be removed."""
    try:
        if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > _LEFTOVER_LOG_LIMIT:
            return False
        with open(path, "rb") as f:
            lines = f.read(_LEFTOVER_LOG_LIMIT + 1).split(b"\n")
    except OSError:
        return False
    for line in lines[:-1]:  # the last is empty, or a line cut short
        problem, record = _parse_log_line(line)
        if problem is not None or record is None:  # not a record with a step
            return False
    return True


def _clear_unsaved_start(directory) -> None:
    """Make a directory ready for a fresh start: remove what a start that never saved left (its log, run.json,
    data files, temp files). ConfigError when it holds a saved run, or a log.jsonl that charrnn did not write."""
    if holds_run(directory):
        raise ConfigError(f"{directory} already holds a run; continue it with {option('resume', directory)} "
                          f"or choose another {option('out')}")
    log = os.path.join(directory, LOG_FILE)
    if not (os.path.lexists(log) or os.path.lexists(os.path.join(directory, RUN_FILE))):
        return  # nothing of a run here (a new directory, or one that holds only a data folder)
    if not unsaved_start(directory):
        raise ConfigError(f"{directory} holds a {LOG_FILE} that is not a charrnn log; choose another {option('out')}")
    _check_data_dir(directory)  # files are removed inside the run's own data folder only
    try:
        checkpoint.cleanup_temp_files(directory)
        checkpoint.cleanup_temp_files(data_dir(directory))
        for path in [os.path.join(data_dir(directory), name) for name in _DATA_FILES] + \
                [os.path.join(directory, RUN_FILE), log]:  # the log last: until then, the start is recognized
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    except OSError as exc:
        raise CheckpointError(f"cannot clear what the failed start left in {directory}: "
                              f"{exc.strerror or exc} ({exc.filename})") from None


@dataclass
class InitFrom:
    """A trained model a new run starts from (`charrnn train --init-from`)."""
    params: dict
    config: ModelConfig
    vocab: Vocab
    meta: dict
    model_file: str
    extend: bool = False   # add the new text's tokens to the vocabulary (else they become UNK)


# The options that make up a model's architecture: a fine-tuned run takes them from the model.
ARCHITECTURE = ("cell", "layers", "hidden", "embed", "dtype")


def init_model_options(base: ModelConfig, given: dict) -> dict:
    """The ModelConfig options of a run fine-tuned from base: base's architecture, the dropout given (or None).

    - given: the model options the user set (name -> value); a value differing from base's is a ConfigError
    """
    for key in ARCHITECTURE:
        if given.get(key) is not None and given[key] != getattr(base, key):
            raise ConfigError(f"{option(key, given[key])} conflicts with the model of {option('init_from')}, which has "
                              f"{key} {getattr(base, key)}; a fine-tuned run keeps the model's architecture")
    options = {key: value for key, value in base.to_dict().items()
               if key not in ("vocab_size", "classes", "dropout")}
    options["dropout"] = given.get("dropout")
    return options


def start_run(directory, train_text, val_text, config_options: dict,
              tconfig: TrainConfig, init: InitFrom | None = None,
              where: tuple = ("the corpus", "the validation text")) -> Run:
    """Create a new run directory and initialize the model.

    - train_text, val_text: str or corpus.Documents (see prepare_data)
    - config_options: ModelConfig fields except vocab_size and classes (taken from the data)
    - init: start from this trained model's weights (its architecture is in config_options, as
      init_model_options gives it); the optimizer and the schedule start fresh
    - where: the two texts' names, for errors
    Refuses a directory that already holds a run, so nothing is overwritten; one whose start never
    saved a checkpoint is cleared and started again (see _clear_unsaved_start).
    """
    tconfig.check()
    _clear_unsaved_start(directory)
    classify = tconfig.task == "classify"
    ModelConfig(vocab_size=4, classes=2 if classify else 0, **config_options)  # fail before any file is written
    if init is not None and init.vocab.level != tconfig.level:
        raise ConfigError(f"the model of {option('init_from')} has a {init.vocab.level}-level vocabulary, "
                          f"not {tconfig.level}")
    vocab = prepare_data(directory, train_text, val_text, tconfig,
                         init.vocab if init else None, init.extend if init else False, where)
    labels = read_labels(directory) if classify else ()
    config = ModelConfig(vocab_size=vocab.size, classes=len(labels), **config_options)
    params = model.init_params(config, np.random.default_rng(tconfig.seed))
    origin = None
    if init is not None:
        params = _inherit_params(init, params)
        origin = _origin(init, vocab, directory, train_text, val_text, tconfig)
    data = _load_data(directory, tconfig.mode, config.classes)
    run = Run(directory, config, tconfig, vocab, params,
              optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options()), *data[:4],
              labels=labels, origin=origin)
    if classify:
        run.train_labels, run.val_labels = data[4]
    run.identity = {"id": secrets.token_hex(16), **fingerprint(vocab, labels, data)}
    _write_identity(directory, run.identity)
    return run


def _inherit_params(init: InitFrom, fresh: dict) -> dict:
    """The weights of init's model; where the vocabulary was extended, the new tokens' embedding and
    head rows are those of the fresh initialization (`fresh`, of the new vocabulary size)."""
    V = init.config.vocab_size
    checkpoint.check_params(init.params, init.config, init.model_file)
    params = {}
    for name, value in fresh.items():
        old = np.asarray(init.params[name], dtype=value.dtype)
        if name in ("embedding.weight", "head.weight", "head.bias"):
            params[name] = np.concatenate([old, value[V:]])  # ids < V keep their rows
        else:
            params[name] = old.copy()
    return params


def _origin(init: InitFrom, vocab: Vocab, directory, train_text, val_text, tconfig: TrainConfig) -> dict:
    """What a fine-tuned run records about where it started: the model, and what became of the vocabulary."""
    def tokens(text):
        if isinstance(text, textfile.TextFile):
            return tuple(textfile.seen_tokens(text, tconfig.level, tconfig.mode))
        return build_vocab(corpus.vocab_text(text), tconfig.level).tokens[3:]
    seen = tokens(train_text)
    if val_text is not None:
        seen += tokens(val_text)
    known = set(vocab.tokens)
    unseen = sorted(set(seen) - known - ({"\n"} if tconfig.mode == "lines" else set()))
    unk = sum(int(np.count_nonzero(corpus.load_ids(_data_path(directory, f"{split}.npy")) == UNK))
              for split in ("train", "val"))
    training = init.meta.get("training", {}) if isinstance(init.meta.get("training"), dict) else {}
    return {"model_file": os.path.abspath(init.model_file), "step": training.get("step"),
            "vocab": "extended" if init.extend else "kept", "base_tokens": init.vocab.size,
            "added": list(vocab.tokens[init.vocab.size:]), "unk_tokens": unk, "unseen": unseen[:200],
            "n_unseen": len(unseen)}


def resume_run(directory, overrides: dict | None = None, *, writer: bool = True) -> Run:
    """Load a run for continuing exactly where it stopped.

    - overrides: new values for options in RESUMABLE (budgets and cadence), and for any of SCHEDULE_KEYS
      (lr, schedule, warmup): a new learning-rate schedule from the current step, the others keeping the
      run's values; the schedule it ends is recorded in run.schedules (saved in the state file)
    - writer: False for an MPI rank other than 0, which reads the run but never touches its files
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"cannot resume: {directory} is not a run directory")
    if writer:
        checkpoint.cleanup_temp_files(directory)
        if os.path.isdir(os.path.join(directory, SNAPSHOTS_DIR)):
            checkpoint.cleanup_temp_files(os.path.join(directory, SNAPSHOTS_DIR))
    if not os.path.lexists(os.path.join(directory, STATE_FILE)):
        if unsaved_start(directory):
            raise CheckpointError(f"cannot resume: {directory} holds no {STATE_FILE}: its run stopped before its "
                                  f"first checkpoint. Start it again with the same options and "
                                  f"{option('out', directory)}")
        raise CheckpointError(f"cannot resume: {directory} holds no {STATE_FILE} (was the run ever saved?)")
    where = os.path.join(directory, STATE_FILE)
    arrays, meta = checkpoint.load_state(where)
    # everything in the file is checked before use: a hostile state file gets a CheckpointError
    try:
        config = ModelConfig.from_dict(meta["model"])
        # runs saved before the threads setting existed took each batch as one block
        tconfig = TrainConfig.from_dict({"threads": 1, **meta["train"]})
        tconfig.check()
        vocab = Vocab.from_dict(meta["vocab"])
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{where}: missing or malformed entry {exc}") from None
    except CheckpointError:
        raise
    except CharRNNError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    progress = _checked_progress(meta.get("progress"), where)
    if vocab.size != config.vocab_size:
        raise CheckpointError(f"{where}: {vocab.size} tokens in the vocabulary, but the model has {config.vocab_size}")
    budget_before = (tconfig.max_steps, tconfig.max_epochs, tconfig.max_time)
    ended = {key: getattr(tconfig, key) for key in SCHEDULE_KEYS}
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE + SCHEDULE_KEYS:
            raise ConfigError(f"{option(key)} cannot change when resuming a run")
        setattr(tconfig, key, value)
    new_schedule = any(key in SCHEDULE_KEYS for key in overrides or {})
    tconfig.check()
    budget_changed = budget_before != (tconfig.max_steps, tconfig.max_epochs, tconfig.max_time)

    # in param_shapes order, as a new run has them: sums over the parameters (the gradient norm) then
    # add in the same order, bit for bit; any others are kept for check_params to name
    params = {name: arrays.pop(f"param/{name}") for name in model.param_shapes(config) if f"param/{name}" in arrays}
    params.update({k[len("param/"):]: arrays.pop(k) for k in [k for k in arrays if k.startswith("param/")]})
    checkpoint.check_params(params, config, where)
    carry = _checked_carry(arrays, config, tconfig, where)
    unknown = sorted(k for k in arrays if not k.startswith("optim/"))
    if unknown:
        raise CheckpointError(f"{where}: unexpected tensors {', '.join(unknown[:5])}")
    optimizer = optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options())
    try:
        optimizer.load_state_arrays({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")})
    except ValueError as exc:  # the optimizer names what does not fit; here that makes a bad checkpoint
        raise CheckpointError(str(exc)) from None
    data = _load_data(directory, tconfig.mode, config.classes)
    origin = meta.get("origin")
    run = Run(directory, config, tconfig, vocab, params, optimizer, *data[:4], carry=carry,
              origin=origin if isinstance(origin, dict) else None)
    if config.classes:
        run.labels = _checked_labels(list(read_labels(directory)), config.classes, where)
        run.train_labels, run.val_labels = data[4]
    # before anything is written: the state must be this run's (a copied one would overwrite its model)
    run.identity = _identity(directory, meta.get("run"), vocab, run.labels, data, where, writer)
    since = (progress.pop("schedule_since_step"), progress.pop("schedule_since_progress"))
    if (since[0] is None) != (since[1] is None) or (since[1] is not None and not 0 <= since[1] <= 1):
        raise CheckpointError(f"{where}: progress schedule_since_step and schedule_since_progress do not fit")
    run.schedule_since = None if since[0] is None else since
    for key, value in progress.items():
        setattr(run, key, value)
    run.schedules = _checked_schedules(meta.get("schedules", []), where)
    run.best_val = math.inf if run.best_val is None else run.best_val
    if writer:
        _cut_log(run)
        _catch_up_model(run)
    if new_schedule:
        # the schedule so far ends here, and is recorded; the new one starts at this step, its cosine (if
        # any) spanning what is left of the budget, which the loop measures again as for a fresh run
        run.schedules.append({"step": run.schedule_start, **ended})
        run.schedule_start, run.schedule_since, run.schedule_steps = run.step, None, None
    elif budget_changed and tconfig.schedule == "cosine" and run.schedule_steps is not None \
            and run.step > run.schedule_start + tconfig.warmup:
        # the cosine schedule spans the whole run's budget: a new budget moves its end. From here the decay
        # goes on from where it stands to the floor at the new end, so the learning rate does not jump
        progress = optim.cosine_progress(run.step, tconfig.warmup, run.schedule_steps, run.schedule_since,
                                         run.schedule_start)
        run.extra["lr_before"] = optim.cosine_lr(progress, tconfig.lr, tconfig.min_lr_ratio)
        run.schedule_since, run.schedule_steps = (run.step, progress), None
    elif budget_changed:
        run.schedule_steps = None
    return run


def _catch_up_model(run: Run) -> None:
    """Export the latest model again when it is behind the state.

    A kill between a save's two renames leaves the model one save behind; a
    second such kill in the resumed run's first save would leave it two behind.
    Bringing it up to the state on resume keeps the lag at one save at most.
    """
    try:
        step = checkpoint.load_model(run.path(MODEL_FILE))[2]["training"]["step"]
    except (CharRNNError, OSError, KeyError, TypeError):  # missing or unreadable: write it afresh
        step = None
    if step != run.step:
        checkpoint.save_files([checkpoint.model_file(run.path(MODEL_FILE), run.params, run.config, model_meta(run))])


# progress counters of a state file: name -> (kind, whether it may be null)
_PROGRESS = {"step": ("count", False), "skipped": ("count", False), "log_count": ("count", False),
             "log_bytes": ("count", False), "schedule_steps": ("count", True),
             "elapsed": ("number", False), "log_sum": ("number", False), "best_val": ("number", True),
             "best_step": ("count", True), "evals_since_best": ("count", False),
             "schedule_since_step": ("count", True), "schedule_since_progress": ("number", True),
             "schedule_start": ("count", False)}
# the value of a counter that older state files do not hold
_PROGRESS_ADDED = {"log_bytes": 0, "best_step": None, "evals_since_best": 0, "schedule_since_step": None,
                   "schedule_since_progress": None, "schedule_start": 0}


def _checked_progress(progress, where: str) -> dict:
    """The progress counters of a state file, each checked; CheckpointError names the first bad one."""
    if not isinstance(progress, dict):
        raise CheckpointError(f"{where}: 'progress' is missing or not a JSON object")
    out = {}
    for key, (kind, nullable) in _PROGRESS.items():
        value = progress.get(key, _PROGRESS_ADDED.get(key, ...))
        if value is None and nullable:
            out[key] = None
            continue
        if not (is_number(value, integer=True) and 0 <= value < 2**63 if kind == "count" else is_number(value)):
            what = "a non-negative integer" if kind == "count" else "a finite number"
            shown = "missing" if value is ... else f"{value!r:.40}"
            raise CheckpointError(f"{where}: progress {key} is {shown}, expected {what}"
                                  f"{' or null' if nullable else ''}")
        out[key] = value
    return out


def _checked_schedules(schedules, where: str) -> list:
    """The schedules a state file records as ended (resume_run), each checked; CheckpointError otherwise."""
    ok = isinstance(schedules, list) and all(
        isinstance(s, dict) and set(s) == {"step", *SCHEDULE_KEYS} and is_number(s["step"], integer=True)
        and 0 <= s["step"] < 2**63 and is_number(s["lr"]) and s["lr"] > 0 and s["schedule"] in optim.SCHEDULES
        and is_number(s["warmup"], integer=True) and 0 <= s["warmup"] < 2**63 for s in schedules)
    if not ok:
        raise CheckpointError(f"{where}: 'schedules' must be a list of {{step, lr, schedule, warmup}} objects")
    return [dict(s) for s in schedules]


def _checked_carry(arrays: dict, config: ModelConfig, tconfig: TrainConfig, where: str):
    """Pop the carried hidden state from a state file's arrays: None, or (h,) / (h, c), each (L, B, H)."""
    keys = sorted(k for k in arrays if k.startswith("carry/"))
    if not keys:
        return None
    wanted = [f"carry/{i}" for i in range(STATES[config.cell])]
    if tconfig.mode != "stream" or keys != wanted:
        raise CheckpointError(f"{where}: carried state {', '.join(keys)} does not fit a {config.cell} "
                              f"model in {tconfig.mode} mode")
    shape = (config.layers, tconfig.batch_size, config.hidden)
    for key in keys:
        arr = arrays[key]
        if arr.shape != shape or arr.dtype != np.dtype(config.dtype):
            raise CheckpointError(f"{where}: {key} is {arr.shape} {arr.dtype}, expected {shape} {config.dtype}")
    return tuple(arrays.pop(key) for key in keys)


def _cut_log(run: Run) -> None:
    """Drop log lines written after the checkpoint was saved (by a process killed before its next save).

    The resumed run takes those steps again and logs them again, so the log reads as if
    the run had never stopped; a line cut short by the crash goes too.
    """
    path = run.path(LOG_FILE)
    if run.log_bytes and os.path.lexists(path):
        fd = _open_log(path, os.O_WRONLY)
        try:
            if os.fstat(fd).st_size > run.log_bytes:
                os.ftruncate(fd, run.log_bytes)
        finally:
            os.close(fd)


# ---------------------------------------------------------------- which run a state belongs to

_SAMPLES, _SAMPLE_IDS = 16, 8192  # an id file of more than 16 x 8192 ids is fingerprinted by 16 evenly spaced slices
_HEX = {"id": re.compile(r"[0-9a-f]{32}"), "vocab": re.compile(r"[0-9a-f]{64}"), "data": re.compile(r"[0-9a-f]{64}")}


def fingerprint(vocab: Vocab, labels: tuple, data: tuple) -> dict:
    """{"vocab": hex, "data": hex}: sha256 of the vocabulary (and a classifier's labels), and of the stored ids.

    - data: what _load_data returns (ids, offsets and label arrays, None where a mode has none)
    The ids are hashed as values (int64), with their names and lengths, so a file written with another
    dtype holds the same data; a long one by 16 slices of 8192 ids at evenly spaced places (its first
    and last among them), so that resuming reads about a megabyte, not the corpus.
    """
    words = json.dumps([vocab.to_dict(), list(labels)], ensure_ascii=True, sort_keys=True)
    h = hashlib.sha256()
    names = ("train", "val", "train_offsets", "val_offsets", "labels")
    for name, arr in zip(names, data):
        for i, part in enumerate(arr if isinstance(arr, tuple) else (arr,)):
            if part is None:
                continue
            n = len(part)
            h.update(f"{name}.{i} {n};".encode("ascii"))
            if n <= _SAMPLES * _SAMPLE_IDS:
                h.update(np.asarray(part, dtype="<i8").tobytes())
            else:
                for k in range(_SAMPLES):
                    start = (n - _SAMPLE_IDS) * k // (_SAMPLES - 1)
                    h.update(np.asarray(part[start:start + _SAMPLE_IDS], dtype="<i8").tobytes())
    return {"vocab": hashlib.sha256(words.encode("ascii")).hexdigest(), "data": h.hexdigest()}


def _checked_identity(record, where: str) -> dict:
    """A run identity as run.json or a state file holds it: {"id": 32 hex, "vocab": 64 hex, "data": 64 hex}."""
    if not (isinstance(record, dict) and all(isinstance(record.get(k), str) and pattern.fullmatch(record[k])
                                             for k, pattern in _HEX.items())):
        raise CheckpointError(f"{where}: the run's identity is malformed (expected an id and two fingerprints)")
    return {k: record[k] for k in _HEX}


def _read_identity(directory) -> dict | None:
    """The identity recorded in directory/run.json; None when there is none (a run made before run ids)."""
    path = os.path.join(directory, RUN_FILE)
    if not os.path.lexists(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        record = json.loads(data.decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path} is damaged: not the JSON charrnn writes") from None
    return _checked_identity(record, path)


def _write_identity(directory, identity: dict) -> None:
    text = json.dumps({**identity, "note": "charrnn: this run's id and the fingerprints of its vocabulary and data"},
                      indent=1, sort_keys=True) + "\n"
    try:
        atomic.write_file(os.path.join(directory, RUN_FILE), lambda f: f.write(text.encode("ascii")))
    except OSError as exc:
        raise CheckpointError(f"cannot write {exc.filename}: {exc.strerror or exc}") from None


def _identity(directory, saved, vocab: Vocab, labels: tuple, data: tuple, where: str, writer: bool) -> dict:
    """The run's identity, once the state file at `where` is proven to belong to the run in directory.

    - saved: the state's "run" entry (None in a state saved before run ids)
    - vocab, labels: the state's; data: the directory's stored ids (_load_data)
    The one place a state is matched to its run, before anything is written: its id must be the one in
    run.json, and the vocabulary and data it was saved with must be the directory's. A run without
    run.json (made before run ids) is checked against what else it holds (its model file's vocabulary,
    ids that fit the vocabulary) and adopts the state's id, or a new one: run.json is written (writer only).
    CheckpointError names what does not fit.
    """
    own = fingerprint(vocab, labels, data)
    if saved is not None:
        saved = _checked_identity(saved, f"{where}: run")

    def foreign(why):
        return CheckpointError(f"{where} does not belong to the run in {directory}: {why}. Resuming it would "
                               f"overwrite the run's model; put the run's own {STATE_FILE} back, or resume the "
                               f"run it came from")
    recorded = _read_identity(directory)
    if recorded is not None:
        if saved is not None and saved["id"] != recorded["id"]:
            raise foreign(f"it was saved by run {saved['id'][:12]}, and this is run {recorded['id'][:12]}")
        if saved is not None and saved != recorded:
            raise foreign(f"its fingerprints are not those in {RUN_FILE}")
        if own["vocab"] != recorded["vocab"]:
            raise foreign("its vocabulary is not the run's")
        if own["data"] != recorded["data"]:
            raise CheckpointError(f"the run's data in {directory}/{DATA_DIR} are not those it was started with "
                                  f"({RUN_FILE} holds their fingerprint); put them back, or start a new run")
        return recorded
    # a run made before run ids (or whose run.json is gone)
    if saved is not None:
        if own["vocab"] != saved["vocab"]:
            raise CheckpointError(f"{where}: its vocabulary does not match the fingerprint it was saved with")
        if own["data"] != saved["data"]:
            raise foreign(f"it was saved with other data than the run's ({DATA_DIR}/)")
    for name, ids in (("train.npy", data[0]), ("val.npy", data[1])):
        if len(ids) and int(ids.max()) >= vocab.size:
            raise foreign(f"{DATA_DIR}/{name} holds token id {int(ids.max())}, beyond its {vocab.size}-token "
                          f"vocabulary")
    try:
        meta = checkpoint.load_model(os.path.join(directory, MODEL_FILE))[2]
        model_vocab = Vocab.from_dict({"level": meta.get("level", "char"), "tokens": meta["tokens"],
                                       "special": meta["special"]})
    except (CharRNNError, OSError, KeyError, TypeError):
        model_vocab, meta = None, {}  # missing or unreadable: nothing to compare (the catch-up writes it afresh)
    if model_vocab is not None and model_vocab.to_dict() != vocab.to_dict():
        raise foreign(f"its vocabulary is not that of the run's {MODEL_FILE}")
    model_id = meta.get("run_id")
    if saved is not None and isinstance(model_id, str) and model_id != saved["id"]:
        raise foreign(f"it was saved by run {saved['id'][:12]}, and the run's {MODEL_FILE} by run {model_id[:12]}")
    identity = {"id": saved["id"] if saved else secrets.token_hex(16), **own}
    if writer:
        _write_identity(directory, identity)
    return identity


# ---------------------------------------------------------------- checkpoints


def model_meta(run: Run) -> dict:
    """What sample and eval need beside the weights: vocabulary, data options, training summary."""
    return {
        "tokens": list(run.vocab.tokens),
        "special": run.vocab.special,
        "level": run.vocab.level,
        "data": {"mode": run.tconfig.mode, "level": run.tconfig.level, "seq_len": run.tconfig.seq_len,
                 "task": run.tconfig.task, "ids_dtype": str(run.train_ids.dtype),  # as data/*.npy's headers say
                 "encoding": run.tconfig.encoding,  # eval, annotate and classify read files in it
                 "train_unknown": _unknown_share(run)},  # how often training saw <unk> (eval's warning)
        **({"labels": list(run.labels)} if run.labels else {}),
        "training": {"step": run.step, "epoch": run.step / run.steps_per_epoch, "elapsed": run.elapsed,
                     "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
                     "optimizer": run.tconfig.optim, "lr": run.tconfig.lr},
        **({"origin": run.origin} if run.origin else {}),
        **({"run_id": run.identity["id"]} if run.identity else {}),
    }


def _unknown_share(run: Run) -> float:
    """The share of the training tokens that are <unk>, counted once per process in blocks (the ids are
    memory-mapped)."""
    if "unknown_share" not in run.extra:
        ids, count = run.train_ids, 0
        for i in range(0, len(ids), 1 << 24):
            count += int(np.count_nonzero(np.asarray(ids[i : i + (1 << 24)]) == UNK))
        corpus.release_pages(ids)
        run.extra["unknown_share"] = count / max(len(ids), 1)
    return run.extra["unknown_share"]


def check_model_meta(meta: dict, where: str) -> None:
    """CheckpointError unless the "data" and "training" entries of a model file's metadata (as model_meta
    writes them, read by sample, eval and info) are well-formed where present."""
    def number(value, integer=False):
        return is_number(value, integer) and (not integer or abs(value) < 2**63)
    data, training = meta.get("data", {}), meta.get("training", {})
    problem = None
    if not isinstance(data, dict) or not isinstance(training, dict):
        problem = "'data' and 'training' must be JSON objects"
    elif data.get("mode", "stream") not in MODES:
        problem = f"unknown data mode {data.get('mode')!r}"
    elif not number(data.get("seq_len", 1), integer=True):
        problem = f"bad data seq_len {data.get('seq_len')!r}"
    elif not _known_encoding(data.get("encoding", corpus.DEFAULT_ENCODING)):
        problem = f"unknown data encoding {data.get('encoding')!r:.60}"
    else:
        for key in ("step", "epoch", "elapsed", "best_val_loss", "lr"):
            value = training.get(key, 0)
            if not (number(value, integer=key == "step") or (key == "best_val_loss" and value is None)):
                problem = f"bad training {key} {value!r:.40}"
                break
        if problem is None and not isinstance(training.get("optimizer", ""), str):
            problem = f"bad training optimizer {training.get('optimizer')!r}"
    if problem is None and "origin" in meta:
        problem = _origin_problem(meta["origin"])
    if problem is None:
        strings = list(meta.get("tokens", [])) + list(meta.get("labels", []) or []) \
            if isinstance(meta.get("tokens", []), list) and isinstance(meta.get("labels", []), list) else []
        odd = next((t for t in strings if isinstance(t, str) and not _encodable(t)), None)
        if odd is not None:  # a lone surrogate: no text holds one, and no terminal or file can take it
            problem = f"the token or label {odd!r:.40} is not Unicode text (a lone surrogate)"
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def _known_encoding(name) -> bool:
    try:
        corpus.text_encoding(name)
        return True
    except CharRNNError:
        return False


def _encodable(text: str) -> bool:
    """Whether text can be written as UTF-8: it holds no lone surrogate (corpus._is_utf8 is about an encoding's name)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _origin_problem(origin) -> str | None:
    """What is wrong with a model file's "origin" entry (as _origin writes it), or None."""
    if not isinstance(origin, dict):
        return f"bad origin {origin!r:.40}: not a JSON object"
    counts = {"step": True, "base_tokens": False, "unk_tokens": False, "n_unseen": False}  # name: may be None
    for key, nullable in counts.items():
        value = origin.get(key)
        if key in origin and not ((value is None and nullable) or (is_number(value, integer=True)
                                                                     and 0 <= value < 2**63)):
            return f"bad origin {key} {value!r:.40}"
    if not isinstance(origin.get("model_file", ""), str):
        return f"bad origin model_file {origin.get('model_file')!r:.40}"
    if origin.get("vocab", "kept") not in ("kept", "extended"):
        return f"bad origin vocab {origin.get('vocab')!r:.40}"
    for key in ("added", "unseen"):
        value = origin.get(key, [])
        if not (isinstance(value, list) and all(isinstance(t, str) and _encodable(t) for t in value)):
            return f"bad origin {key} {value!r:.40}: not a list of tokens"
    return None


def save_checkpoint(run: Run, best: bool = False, val_loss: float | None = None) -> str:
    """Write the state file, the latest model file and (when best) the best model. Returns the model file's path.

    All files are written in full before any replaces its predecessor, so a
    failed write (a full disk) leaves every previous file as it was. The state
    is renamed into place first: if the process dies between the renames,
    resuming is still exact and only the exported model lags one save behind.
    With tconfig.keep N and the validation loss of this save (val_loss), the model is also kept as a
    snapshot when it is among the N best evaluations (keep_snapshot).
    """
    arrays = {f"param/{k}": v for k, v in run.params.items()}
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_arrays().items()})
    if run.carry is not None:
        arrays.update({f"carry/{i}": s for i, s in enumerate(run.carry)})
    progress = {key: getattr(run, key) for key in
                ("step", "elapsed", "schedule_steps", "skipped", "log_sum", "log_count", "log_bytes", "best_step",
                 "evals_since_best", "schedule_start")}
    progress["best_val"] = None if math.isinf(run.best_val) else run.best_val
    progress["schedule_since_step"], progress["schedule_since_progress"] = run.schedule_since or (None, None)
    meta = {"model": run.config.to_dict(), "train": asdict(run.tconfig), "vocab": run.vocab.to_dict(),
            "progress": progress, **({"origin": run.origin} if run.origin else {}),
            **({"run": run.identity} if run.identity else {}),
            **({"schedules": run.schedules} if run.schedules else {})}
    files = [checkpoint.state_file(run.path(STATE_FILE), arrays, meta),
             checkpoint.model_file(run.path(MODEL_FILE), run.params, run.config, model_meta(run))]
    if best:
        files.append(checkpoint.model_file(run.path(BEST_FILE), run.params, run.config, model_meta(run)))
    drop = []
    if run.tconfig.keep and val_loss is not None and math.isfinite(val_loss):
        snapshot, drop = _snapshot_plan(run, val_loss)
        if snapshot is not None:
            files.append(checkpoint.model_file(snapshot, run.params, run.config, model_meta(run)))
    checkpoint.save_files(files)
    for path in drop:  # once the new one is whole: a kill before this leaves one snapshot too many, trimmed next time
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CheckpointError(f"cannot remove the snapshot {path}: {e.strerror or e}") from None
    return run.path(MODEL_FILE)


# A log line is a few hundred bytes; a longer one is not a record, and is not read whole.
MAX_LOG_LINE = 1 << 20


def read_log(path) -> list[dict]:
    """The step records of a log.jsonl file, in order: the one reader of a run's log.

    A torn last line (a crash mid-write) is skipped. Any other line that is not a record (not UTF-8, not
    JSON, nested too deeply for the parser, longer than MAX_LOG_LINE bytes, or with a step that is not a
    step number) is a CheckpointError naming its line: the log was damaged, and a plot of what is left
    would mislead. Lines that are JSON objects without a step are passed over. Memory holds the records
    and one line at a time.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"no training log at {path}")
    records, bad = [], None  # bad: the problem of the last bad line, an error once another line follows
    try:
        with open(path, "rb") as f:
            number = 0
            while True:
                raw = f.readline(MAX_LOG_LINE + 1)
                if not raw:
                    break
                number += 1
                if not raw.strip():
                    continue
                if bad is not None:
                    raise CheckpointError(bad)
                if len(raw) > MAX_LOG_LINE:
                    while raw and not raw.endswith(b"\n"):  # pass over the rest of the line
                        raw = f.readline(MAX_LOG_LINE + 1)
                    problem, record = f"longer than {MAX_LOG_LINE:,} bytes", None
                else:
                    problem, record = _parse_log_line(raw)
                if problem is not None:
                    bad = f"{path}, line {number}: {problem}"
                elif record is not None:
                    records.append(record)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    return records


def _parse_log_line(raw: bytes) -> tuple[str | None, dict | None]:
    """(problem or None, the record or None) of one log line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 (byte {exc.start})", None
    try:
        record = json.loads(text)
    except ValueError:  # not JSON, or an integer of more digits than Python converts (4,300)
        return "not JSON", None
    except RecursionError:
        return "not a log record (JSON nested too deeply)", None
    if not isinstance(record, dict) or "step" not in record:
        return None, None
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"step {step!r:.40} is not a step number", None
    return None, record


def _open_log(path, flags: int) -> int:
    """The run's log opened for writing (atomic.open_fd: never through a symbolic link); CheckpointError else."""
    try:
        return atomic.open_fd(path, flags)
    except OSError as exc:
        raise CheckpointError(f"cannot write the run's log {path}: {exc.strerror or exc}") from None


_SNAPSHOT = re.compile(r"step(\d{9})-val(\d+\.\d{4})\.safetensors")


def snapshots(directory) -> list[tuple[float, int, str]]:
    """The snapshots a run keeps (--keep), best first: (validation loss, step, path)."""
    folder = os.path.join(os.fspath(directory), SNAPSHOTS_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(float(m.group(2)), int(m.group(1)), os.path.join(folder, name))
             for name in names if (m := _SNAPSHOT.fullmatch(name))]
    return sorted(found)


def _snapshot_plan(run: Run, val_loss: float):
    """(the path to write this evaluation's snapshot to, or None when it is not among the keep best; the
    snapshots to remove once it is written). Snapshots of this step or later (a resumed run that takes
    them again) are replaced."""
    folder = run.path(SNAPSHOTS_DIR)
    if os.path.islink(folder) or (os.path.lexists(folder) and not os.path.isdir(folder)):
        raise CheckpointError(f"{folder} is not a folder of the run (a symbolic link or a file); charrnn writes a "
                              f"run's files only inside its directory: remove it to keep snapshots")
    os.makedirs(folder, exist_ok=True)
    kept = [s for s in snapshots(run.directory) if s[1] < run.step]
    path = run.path(os.path.join(SNAPSHOTS_DIR, snapshot_name(run.step, val_loss)))
    later = [s[2] for s in snapshots(run.directory) if s[1] >= run.step and s[2] != path]
    ranked = sorted(kept + [(round(val_loss, 4), run.step, path)])
    keep = ranked[: run.tconfig.keep]
    return (path if any(s[2] == path for s in keep) else None), later + [s[2] for s in ranked[run.tconfig.keep:]
                                                                          if s[2] != path]


def append_log(run: Run, record: dict, sync: bool = False) -> None:
    """Append one line to the run's log; sync: fsync it, as a checkpoint that counts it is about to be saved."""
    fd = _open_log(run.path(LOG_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a", encoding="utf-8") as f:  # the descriptor atomic.open_fd opened
        f.write(json.dumps(record) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
        run.log_bytes = f.tell()


# ---------------------------------------------------------------- finding and loading a model


def fresh_run_dir(name: str) -> str:
    """Make and return a new directory checkpoints/<name>, or <name>-2, -3, ... when that exists.

    The exclusive mkdir is the claim, so two trainers started together on one
    corpus get two directories; an existing directory is never reused.
    """
    name = re.sub(r"[^\w.-]+", "_", name) or "run"
    os.makedirs(CHECKPOINTS, exist_ok=True)
    base = os.path.join(CHECKPOINTS, name)
    candidate, n = base, 1
    while True:
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            n += 1
            candidate = f"{base}-{n}"


@contextmanager
def writing(directory, *, create: bool, lock: bool = True, made: bool = False):
    """Be the one process writing a run directory while the body runs (see runlock.RunLock).

    - create: make the directory when it does not exist (a fresh run); made: the caller just made it
    - lock: take the run's lock (False: --no-lock, or a process that is not the lock holder under MPI)
    The lock is taken before anything is written, so a second trainer fails before it touches the run.
    A directory made for the run is removed again if it is empty at the end (a start that failed).
    """
    directory = os.fspath(directory)
    if create:
        try:
            os.makedirs(directory)
            made = True
        except FileExistsError:  # it is there already (or another trainer just made it): lock it below
            pass
    held = None
    try:
        if lock and os.path.isdir(directory):  # a missing run to resume is resume_run's error to report
            held = RunLock(directory).acquire()
        yield
    finally:
        if held is not None:
            held.release()
        if made:
            try:
                os.rmdir(directory)  # only when empty
            except OSError:
                pass


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
    if config.classes:
        meta["labels"] = list(_checked_labels(meta.get("labels"), config.classes, model_file))
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
    if not os.path.exists(_data_path(directory, "train.npy")):
        raise ConfigError(f"{option('novelty')} compares samples with the training text stored beside the model, and "
                          f"{model_file} has none ({DATA_DIR}/train.npy)")
    try:
        ids, offsets = _read_split(directory, "train", lines)
        if lines:
            corpus.check_offsets(offsets, len(ids), _data_path(directory, "train_offsets.npy"), min_lines=1)
    except CharRNNError as exc:
        raise CheckpointError(f"the training split stored in {data_dir(directory)} is damaged: {exc}") from None
    if lines:
        try:
            val = _read_split(directory, "val", True)
            corpus.check_offsets(val[1], len(val[0]), _data_path(directory, "val_offsets.npy"))
            val_index = novelty.LineIndex(*val)
        except CharRNNError:
            val_index = None
        return (novelty.LineIndex(ids, offsets), val_index), True
    path = _data_path(directory, NOVELTY_INDEX)
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
