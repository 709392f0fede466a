"""The training loop: prepare a run directory, take steps, evaluate, checkpoint.

`start_run` (a new run) and `resume_run` (continue one) return a `Run`;
`train(run)` is a generator of event dicts that the CLI renders. Nothing here
prints. A run directory holds:

    model.safetensors   latest weights + config + vocabulary (self-contained)
    best.safetensors    the weights with the lowest validation loss so far
    state.safetensors   everything needed to resume exactly (weights too)
    log.jsonl           one JSON object per logging step, appended to on resume
    data/               the encoded training and validation ids (memory-mapped)

Exact resume needs no RNG state: batches are fixed by the step number (and
for lines mode, a permutation seeded by (seed, epoch)), and dropout masks are
drawn from a generator seeded by (seed, step).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import __version__, batches, checkpoint, corpus, evaluate, model, optim
from .errors import CharRNNError, CheckpointError, ConfigError, CorpusError, TrainingError
from .model import ModelConfig
from .vocab import Vocab, build_vocab

MODEL_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
STATE_FILE = "state.safetensors"
LOG_FILE = "log.jsonl"
MODES = ("stream", "lines")
# Lines mode runs a whole line through the network in one step: longer lines belong to stream mode.
MAX_LINE_CHARS = 10_000
# Overflow and NaN in a step are detected and reported explicitly; NumPy's warnings about them are noise.
QUIET_FP = {"over": "ignore", "invalid": "ignore", "divide": "ignore"}
NONFINITE = ("stop", "skip")


@dataclass
class TrainConfig:
    # data
    mode: str = "stream"               # "stream": one long text; "lines": each non-empty line is an example
    level: str = "char"                # "char" or "word" tokens
    min_count: int = 1                 # rarer tokens become UNK
    max_vocab: int | None = None       # keep at most this many regular tokens (the rest UNK)
    val_frac: float = 0.1              # held-out share when no separate validation file is given
    batch_size: int = 64               # B: parallel streams (stream) or lines per batch (lines)
    seq_len: int = 100                 # T: truncated-BPTT window
    # optimization
    optim: str = "adagrad"             # adagrad, adam, rmsprop or sgd
    lr: float = 0.1                    # peak learning rate (the default optimizer's, as AUTO_LR)
    momentum: float = 0.9              # sgd only
    weight_decay: float = 0.0          # adam only (decoupled)
    clip: float | None = 5.0           # global gradient-norm limit (None: off)
    clip_value: float | None = None    # elementwise gradient limit (None: off)
    schedule: str = "constant"         # "constant" or "cosine" (decay to lr * min_lr_ratio)
    warmup: int = 0                    # steps of linear warm-up
    min_lr_ratio: float = 0.1          # cosine floor as a fraction of lr
    # budgets: training stops at the first one reached (they count the whole run, resumes included)
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None      # seconds of wall time
    # cadence and reproducibility
    eval_every: int = 200              # evaluate and save the latest checkpoint every N steps
    eval_tokens: int | None = 200_000  # validation tokens scored per evaluation (None: all)
    log_every: int = 10                # one log.jsonl line per N steps
    seed: int = 0
    on_nonfinite: str = "stop"         # "stop" or "skip" a step whose loss or gradient is not finite

    def check(self, partial: bool = False) -> None:
        """Raise ConfigError for values no run could use.

        - partial: allow the AUTO_TRAIN_KEYS to be None (still to be chosen by auto_settings)
        """
        if any(getattr(self, k) is None for k in AUTO_TRAIN_KEYS):
            if not partial:
                raise ConfigError(f"{', '.join(AUTO_TRAIN_KEYS)} must be set")
            # check the rest as if the open ones held their plain defaults
            filled = {k: getattr(TrainConfig, k) for k in AUTO_TRAIN_KEYS if getattr(self, k) is None}
            return TrainConfig(**{**asdict(self), **filled}).check()
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose stream or lines")
        if self.on_nonfinite not in NONFINITE:
            raise ConfigError(f"--on-nonfinite must be stop or skip, got {self.on_nonfinite!r}")
        # types and magnitudes first (a resumed run reads these from a file), so the checks below
        # cannot fail otherwise; every value must also be storable as JSON in the state file
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count", "seed", "warmup",
                     "max_steps", "eval_tokens", "max_vocab"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value, integer=True) and abs(value) < 2**63):
                raise ConfigError(f"{name.replace('_', '-')} must be an integer, got {value!r:.40}")
        for name in ("val_frac", "lr", "momentum", "weight_decay", "clip", "clip_value", "min_lr_ratio",
                     "max_epochs", "max_time"):
            value = getattr(self, name)
            if value is not None and not _is_number(value):
                label = "learning rate" if name == "lr" else name.replace("_", "-")
                raise ConfigError(f"{label} must be a finite number, got {value!r:.40}")
        if self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed}")
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1")
        for name in ("max_steps", "max_epochs", "max_time", "eval_tokens", "max_vocab"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {value}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ConfigError(f"val-frac must be in [0, 1), got {self.val_frac}")
        if not self.lr > 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        for name in ("clip", "clip_value"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and not math.isnan(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be positive (or 0 for off), got {value}")
        optim.make_optimizer(self.optim, None, **self.optimizer_options())
        optim.learning_rate(0, self.lr, self.schedule or "constant", self.warmup or 0, 1, self.min_lr_ratio)

    def optimizer_options(self) -> dict:
        if self.optim == "sgd":
            return {"momentum": self.momentum}
        if self.optim == "adam":
            return {"weight_decay": self.weight_decay}
        return {}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _is_number(value, integer: bool = False) -> bool:
    """A finite int (or float, unless integer), not a bool; True for ints too large for a float only when integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer) if integer else (int, float, np.number)):
        return False
    try:
        return integer or math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


# Options that may change when a run is resumed; the rest define the run.
RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "eval_tokens", "log_every", "on_nonfinite")


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
    elapsed: float = 0.0               # wall seconds spent training, over all sessions
    schedule_steps: int | None = None  # total steps the cosine schedule spans
    skipped: int = 0                   # non-finite steps skipped
    log_sum: float = 0.0               # loss summed since the last log line
    log_count: int = 0
    log_bytes: int = 0                 # length of log.jsonl after its last line (saved: resume cuts what follows)
    extra: dict = field(default_factory=dict)  # per-process caches: this epoch's line order

    @property
    def steps_per_epoch(self) -> int:
        if self.tconfig.mode == "stream":
            return batches.stream_windows(len(self.train_ids), self.tconfig.batch_size, self.tconfig.seq_len)
        return math.ceil((len(self.train_offsets) - 1) / self.tconfig.batch_size)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)


# ---------------------------------------------------------------- defaults that fit the data

# Training speed of a 2-layer LSTM (B 16, T 100) by hidden size, in characters
# per second on the 2-core reference machine. Only used to estimate how many
# passes over the data a time budget buys.
NOMINAL_CHARS_PER_SEC = {128: 40_000, 256: 13_000, 512: 4_000}
# A starting learning rate per optimizer, for batches of 16 to 32 streams.
AUTO_LR = {"adagrad": 0.1, "adam": 5e-3, "rmsprop": 2e-3, "sgd": 0.5}
AUTO_MODEL_KEYS = ("layers", "hidden", "embed", "dropout")
AUTO_TRAIN_KEYS = ("batch_size", "lr", "schedule", "warmup")
AUTO_KEYS = AUTO_MODEL_KEYS + AUTO_TRAIN_KEYS


def auto_settings(n_tokens: int, tconfig: TrainConfig, level: str = "char") -> dict:
    """Model size, batch, learning rate, dropout and schedule for n_tokens and the run's budget.

    Tuned on tinyshakespeare for validation loss per minute of a 2-core CPU
    (bench/quality.py): small batches take more steps per second of data.
    - hidden: 128 below 200 thousand tokens, 256 below 5 million, else 512 (2 layers)
    - batch: 16 streams below 5 million tokens, else 32; lr by optimizer (AUTO_LR)
    - dropout: by the passes over the data the budget buys: none under 3,
      0.1 under 8, else 0.2 (small data seen many times needs it most)
    - schedule: cosine decay over the budget after a 50-step linear warm-up
    Returns a dict with the keys of AUTO_KEYS and "passes" (the estimate used).
    """
    hidden = 128 if n_tokens < 200_000 else 256 if n_tokens < 5_000_000 else 512
    batch = tconfig.batch_size or (16 if n_tokens < 5_000_000 else 32)
    budgets = []
    if tconfig.max_time is not None:
        budgets.append(NOMINAL_CHARS_PER_SEC[hidden] * tconfig.max_time / max(n_tokens, 1))
    if tconfig.max_epochs is not None:
        budgets.append(tconfig.max_epochs)
    if tconfig.max_steps is not None:
        budgets.append(tconfig.max_steps * batch * tconfig.seq_len / max(n_tokens, 1))
    passes = min(budgets) if budgets else 1.0
    dropout = 0.0 if passes < 3 else 0.1 if passes < 8 else 0.2
    warmup = 50 if tconfig.max_steps is None else min(50, tconfig.max_steps // 10)
    return {"layers": 2, "hidden": hidden, "embed": 64 if level == "char" else 128, "dropout": dropout,
            "batch_size": batch, "lr": AUTO_LR.get(tconfig.optim, 2e-3), "schedule": "cosine",
            "warmup": warmup, "passes": passes}


# ---------------------------------------------------------------- preparing a run


def _data_path(directory, name):
    return os.path.join(directory, "data", name)


def prepare_data(directory, train_text: str, val_text: str | None, tconfig: TrainConfig) -> Vocab:
    """Build the vocabulary from the training text and store encoded ids under directory/data.

    - train_text: the corpus; val_text: a separate validation text, or None to hold out val_frac
    Returns the vocabulary. Afterwards training reads only the memory-mapped arrays.
    Everything is encoded and checked before the first file is written, so a corpus
    that cannot train leaves no files behind.
    """
    arrays = {}
    if tconfig.mode == "stream":
        if val_text is None and tconfig.level == "char":
            # one token per character: encode the whole text once and split the ids, so that no
            # copy of the text is held beside it (peak memory: the text plus its ids)
            cut = corpus.split_index(len(train_text), tconfig.val_frac)
            vocab = build_vocab(train_text[:cut], "char", tconfig.min_count, tconfig.max_vocab)
            ids = vocab.encode(train_text)
            arrays["train.npy"], arrays["val.npy"] = ids[:cut], ids[cut:]
        else:
            if val_text is None:
                train_text, val_text = corpus.split_text(train_text, tconfig.val_frac)
            vocab = build_vocab(train_text, tconfig.level, tconfig.min_count, tconfig.max_vocab)
            arrays["train.npy"] = vocab.encode(train_text)
            arrays["val.npy"] = vocab.encode(val_text)
        # raises CorpusError (with the length and what is needed) when the text is too short for one batch
        batches.stream_windows(len(arrays["train.npy"]), tconfig.batch_size, tconfig.seq_len)
    else:
        lines = corpus.split_lines(train_text)
        _check_line_lengths(lines)
        if val_text is None:
            # lists (names, titles) are often sorted: hold out a seeded random share, not the tail
            order = np.random.default_rng(tconfig.seed).permutation(len(lines))
            n_val = int(len(lines) * tconfig.val_frac)
            val_lines = [lines[i] for i in np.sort(order[:n_val])]
            lines = [lines[i] for i in np.sort(order[n_val:])]
        else:
            val_lines = corpus.split_lines(val_text)
            _check_line_lengths(val_lines, "validation ")
        if not lines:
            raise CorpusError("lines mode needs at least one non-empty training line")
        vocab = _lines_vocab(lines, tconfig)
        for name, part in (("train", lines), ("val", val_lines)):
            arrays[f"{name}.npy"], arrays[f"{name}_offsets.npy"] = corpus.encode_lines(vocab, part)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    checkpoint.cleanup_temp_files(os.path.join(directory, "data"))  # left by a start that was killed
    for name, ids in arrays.items():
        corpus.save_ids(_data_path(directory, name), ids)
    return vocab


def _check_line_lengths(lines: list[str], which: str = "") -> None:
    """CorpusError when a line is too long to be one example of lines mode."""
    longest = max(map(len, lines), default=0)
    if longest > MAX_LINE_CHARS:
        raise CorpusError(f"a {which}line is {longest:,} characters long, but lines mode takes each line as one "
                          f"example of at most {MAX_LINE_CHARS:,}; train on long text with --mode stream")


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


def _load_data(directory, mode):
    def load(name):
        return corpus.load_ids(_data_path(directory, name))
    try:
        if mode == "stream":
            return load("train.npy"), load("val.npy"), None, None
        train_ids, val_ids = load("train.npy"), load("val.npy")
        train_off, val_off = load("train_offsets.npy"), load("val_offsets.npy")
    except Exception as exc:  # the data folder is part of the run: any failure is a broken run
        raise CheckpointError(f"cannot read the run's data in {directory}/data: {exc}") from None
    try:
        corpus.check_offsets(train_off, len(train_ids), "train_offsets.npy", min_lines=1)
        corpus.check_offsets(val_off, len(val_ids), "val_offsets.npy")
    except CorpusError as exc:
        raise CheckpointError(f"the run's data in {directory}/data is damaged: {exc}") from None
    return train_ids, val_ids, train_off, val_off


def holds_run(directory) -> bool:
    return any(os.path.exists(os.path.join(directory, f)) for f in (STATE_FILE, MODEL_FILE, LOG_FILE))


def start_run(directory, train_text: str, val_text: str | None, config_options: dict,
              tconfig: TrainConfig) -> Run:
    """Create a new run directory and initialize the model.

    - config_options: ModelConfig fields except vocab_size (taken from the vocabulary)
    Refuses a directory that already holds a run, so nothing is overwritten.
    """
    tconfig.check()
    if holds_run(directory):
        raise ConfigError(f"{directory} already holds a run; continue it with --resume {directory} "
                          f"or choose another --out")
    ModelConfig(vocab_size=4, **config_options)  # fail on bad options before any file is written
    vocab = prepare_data(directory, train_text, val_text, tconfig)
    config = ModelConfig(vocab_size=vocab.size, **config_options)
    params = model.init_params(config, np.random.default_rng(tconfig.seed))
    train_ids, val_ids, train_off, val_off = _load_data(directory, tconfig.mode)
    run = Run(directory, config, tconfig, vocab, params,
              optim.make_optimizer(tconfig.optim, params, **tconfig.optimizer_options()),
              train_ids, val_ids, train_off, val_off)
    return run


def resume_run(directory, overrides: dict | None = None) -> Run:
    """Load a run for continuing exactly where it stopped.

    - overrides: new values for options in RESUMABLE (budgets and cadence)
    """
    if not os.path.isdir(directory):
        raise CheckpointError(f"cannot resume: {directory} is not a run directory")
    checkpoint.cleanup_temp_files(directory)
    if not os.path.exists(os.path.join(directory, STATE_FILE)):
        raise CheckpointError(f"cannot resume: {directory} holds no {STATE_FILE} (was the run ever saved?)")
    where = os.path.join(directory, STATE_FILE)
    arrays, meta = checkpoint.load_state(where)
    # everything in the file is checked before use: a hostile state file gets a CheckpointError
    try:
        config = ModelConfig.from_dict(meta["model"])
        tconfig = TrainConfig.from_dict(meta["train"])
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
    for key, value in (overrides or {}).items():
        if key not in RESUMABLE:
            raise ConfigError(f"--{key.replace('_', '-')} cannot change when resuming a run")
        setattr(tconfig, key, value)
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
    except ConfigError as exc:
        raise CheckpointError(f"{directory}/{STATE_FILE}: {exc}") from None
    train_ids, val_ids, train_off, val_off = _load_data(directory, tconfig.mode)
    run = Run(directory, config, tconfig, vocab, params, optimizer, train_ids, val_ids, train_off, val_off,
              carry=carry)
    for key, value in progress.items():
        setattr(run, key, value)
    run.best_val = math.inf if run.best_val is None else run.best_val
    _cut_log(run)
    if budget_changed:
        # the cosine schedule spans the whole run's budget: a new budget moves its end
        run.schedule_steps = None
    return run


# progress counters of a state file: name -> (kind, whether it may be null)
_PROGRESS = {"step": ("count", False), "skipped": ("count", False), "log_count": ("count", False),
             "log_bytes": ("count", False), "schedule_steps": ("count", True),
             "elapsed": ("number", False), "log_sum": ("number", False), "best_val": ("number", True)}


def _checked_progress(progress, where: str) -> dict:
    """The progress counters of a state file, each checked; CheckpointError names the first bad one."""
    if not isinstance(progress, dict):
        raise CheckpointError(f"{where}: 'progress' is missing or not a JSON object")
    out = {}
    for key, (kind, nullable) in _PROGRESS.items():
        value = progress.get(key, 0 if key == "log_bytes" else ...)  # log_bytes: absent in older files
        if value is None and nullable:
            out[key] = None
            continue
        if not (_is_number(value, integer=True) and 0 <= value < 2**63 if kind == "count" else _is_number(value)):
            what = "a non-negative integer" if kind == "count" else "a finite number"
            shown = "missing" if value is ... else f"{value!r:.40}"
            raise CheckpointError(f"{where}: progress {key} is {shown}, expected {what}"
                                  f"{' or null' if nullable else ''}")
        out[key] = value
    return out


def _checked_carry(arrays: dict, config: ModelConfig, tconfig: TrainConfig, where: str):
    """Pop the carried hidden state from a state file's arrays: None, or (h,) / (h, c), each (L, B, H)."""
    keys = sorted(k for k in arrays if k.startswith("carry/"))
    if not keys:
        return None
    wanted = [f"carry/{i}" for i in range(2 if config.cell == "lstm" else 1)]
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
    if run.log_bytes and os.path.exists(path) and os.path.getsize(path) > run.log_bytes:
        os.truncate(path, run.log_bytes)


# ---------------------------------------------------------------- checkpoints


def model_meta(run: Run) -> dict:
    """What sample and eval need beside the weights: vocabulary, data options, training summary."""
    return {
        "tokens": list(run.vocab.tokens),
        "special": run.vocab.special,
        "level": run.vocab.level,
        "data": {"mode": run.tconfig.mode, "level": run.tconfig.level, "seq_len": run.tconfig.seq_len},
        "training": {"step": run.step, "epoch": run.step / run.steps_per_epoch, "elapsed": run.elapsed,
                     "best_val_loss": None if math.isinf(run.best_val) else run.best_val,
                     "optimizer": run.tconfig.optim, "lr": run.tconfig.lr},
    }


def check_model_meta(meta: dict, where: str) -> None:
    """CheckpointError unless the "data" and "training" entries of a model file's metadata (as model_meta
    writes them, read by sample, eval and info) are well-formed where present."""
    def number(value, integer=False):
        return _is_number(value, integer) and (not integer or abs(value) < 2**63)
    data, training = meta.get("data", {}), meta.get("training", {})
    problem = None
    if not isinstance(data, dict) or not isinstance(training, dict):
        problem = "'data' and 'training' must be JSON objects"
    elif data.get("mode", "stream") not in MODES:
        problem = f"unknown data mode {data.get('mode')!r}"
    elif not number(data.get("seq_len", 1), integer=True):
        problem = f"bad data seq_len {data.get('seq_len')!r}"
    else:
        for key in ("step", "epoch", "elapsed", "best_val_loss", "lr"):
            value = training.get(key, 0)
            if not (number(value, integer=key == "step") or (key == "best_val_loss" and value is None)):
                problem = f"bad training {key} {value!r:.40}"
                break
        if problem is None and not isinstance(training.get("optimizer", ""), str):
            problem = f"bad training optimizer {training.get('optimizer')!r}"
    if problem:
        raise CheckpointError(f"{where}: {problem}")


def save_checkpoint(run: Run, best: bool = False) -> str:
    """Write the state file, the latest model file and (when best) the best model. Returns the model file's path.

    All files are written in full before any replaces its predecessor, so a
    failed write (a full disk) leaves every previous file as it was. The state
    is renamed into place first: if the process dies between the renames,
    resuming is still exact and only the exported model lags one save behind.
    """
    arrays = {f"param/{k}": v for k, v in run.params.items()}
    arrays.update({f"optim/{k}": v for k, v in run.optimizer.state_arrays().items()})
    if run.carry is not None:
        arrays.update({f"carry/{i}": s for i, s in enumerate(run.carry)})
    progress = {key: getattr(run, key) for key in
                ("step", "elapsed", "schedule_steps", "skipped", "log_sum", "log_count", "log_bytes")}
    progress["best_val"] = None if math.isinf(run.best_val) else run.best_val
    meta = {"model": run.config.to_dict(), "train": asdict(run.tconfig), "vocab": run.vocab.to_dict(),
            "progress": progress}
    files = [checkpoint.state_file(run.path(STATE_FILE), arrays, meta),
             checkpoint.model_file(run.path(MODEL_FILE), run.params, run.config, model_meta(run))]
    if best:
        files.append(checkpoint.model_file(run.path(BEST_FILE), run.params, run.config, model_meta(run)))
    checkpoint.save_files(files)
    return run.path(MODEL_FILE)


# ---------------------------------------------------------------- the loop


def validation_loss(run: Run) -> float:
    """Mean NLL per token on (the first eval_tokens of) the held-out data."""
    limit = run.tconfig.eval_tokens
    if run.tconfig.mode == "stream":
        ids = run.val_ids if limit is None else run.val_ids[: limit + 1]
        if len(ids) < 2:
            return math.nan
        return evaluate.score_stream(run.params, run.config, ids).loss
    offsets = run.val_offsets
    if len(offsets) < 2:
        return math.nan
    if limit is not None:  # whole lines, up to the token limit
        n_lines = max(1, int(np.searchsorted(offsets, limit, side="right")) - 1)
        offsets = offsets[: n_lines + 1]
    return evaluate.score_lines(run.params, run.config, run.val_ids, offsets,
                                run.vocab.bos, run.vocab.eos).loss


def _batch(run: Run, step: int):
    """The batch for one step: (x, y, mask or None, reset) where reset starts from a zero state."""
    tc = run.tconfig
    epoch, index = divmod(step, run.steps_per_epoch)
    if tc.mode == "stream":
        x, y = batches.stream_batch(run.train_ids, tc.batch_size, tc.seq_len, index)
        return x, y, None, index == 0
    cached_epoch, order = run.extra.get("order", (None, None))
    if cached_epoch != epoch:  # one permutation per epoch, fixed by (seed, epoch)
        order = batches.line_batches(len(run.train_offsets) - 1, tc.batch_size, tc.seed, epoch)
        run.extra["order"] = (epoch, order)
    x, y, mask = batches.line_batch(run.train_ids, run.train_offsets, order[index],
                                    run.vocab.bos, run.vocab.eos)
    return x, y, mask, True


def _loss_and_grads(run: Run, x, y, mask, state, rng):
    """Loss and gradients of one batch, in seq_len chunks with the state carried (truncated BPTT).

    Returns (loss, grads, final_state, tokens): the mean NLL over scored tokens.
    """
    T = run.tconfig.seq_len
    if x.shape[1] <= T:
        loss, final, cache = model.forward(run.params, run.config, x, y, mask, state, dropout_rng=rng)
        grads, _ = model.backward(run.params, run.config, cache)
        return loss, grads, final, cache["count"]
    total = int(np.count_nonzero(mask)) if mask is not None else y.size
    grads, nll = None, 0.0
    for t0 in range(0, x.shape[1], T):
        sl = slice(t0, t0 + T)
        _, state, cache = model.forward(run.params, run.config, x[:, sl], y[:, sl],
                                        None if mask is None else mask[:, sl], state, dropout_rng=rng)
        if cache["count"] == 0:
            continue
        g, _ = model.backward(run.params, run.config, cache)
        share = cache["count"] / total  # weight each chunk's mean by its share of scored tokens
        nll += cache["nll_sum"]
        if grads is None:
            grads = {k: v * share for k, v in g.items()}
        else:
            for k, v in g.items():
                grads[k] += v * share
    return nll / total, grads, state, total


def _budget_reached(run: Run):
    """The first budget the run has reached (by run.elapsed, as logged and saved), or None."""
    tc = run.tconfig
    if tc.max_steps is not None and run.step >= tc.max_steps:
        return "max_steps"
    if tc.max_epochs is not None and run.step >= tc.max_epochs * run.steps_per_epoch:
        return "max_epochs"
    if tc.max_time is not None and run.elapsed >= tc.max_time:
        return "max_time"
    return None


def _schedule_steps(run: Run, steps_per_sec: float | None) -> int | None:
    """Total steps of the cosine schedule: from the step budgets, or estimated from the time budget."""
    tc = run.tconfig
    candidates = []
    if tc.max_steps is not None:
        candidates.append(tc.max_steps)
    if tc.max_epochs is not None:
        candidates.append(math.ceil(tc.max_epochs * run.steps_per_epoch))
    if tc.max_time is not None and steps_per_sec:
        candidates.append(run.step + int((tc.max_time - run.elapsed) * steps_per_sec))
    return max(1, min(candidates)) if candidates else None


def _append_log(run: Run, record: dict, sync: bool = False) -> None:
    """Append one line; sync: fsync it, as a checkpoint that counts it is about to be saved."""
    with open(run.path(LOG_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        if sync:
            os.fsync(f.fileno())
        run.log_bytes = f.tell()


def train(run: Run, should_stop=lambda: False):
    """Train until a budget is reached or should_stop() turns true; yields event dicts.

    Events: {"event": "start" | "step" | "eval" | "save" | "end", ...}. The
    latest checkpoint is saved at every evaluation, at the end, and on a stop
    request; the best whenever validation loss improves. The last step of a
    session is always evaluated and logged. A non-finite loss or gradient
    raises TrainingError (on_nonfinite="stop") before anything is saved, or
    skips the step (on_nonfinite="skip").
    """
    tc = run.tconfig
    if tc.max_steps is None and tc.max_epochs is None and tc.max_time is None:
        raise ConfigError("no budget: give --max-steps, --max-epochs or --max-time")
    B = tc.batch_size
    tokens_per_step = B * tc.seq_len if tc.mode == "stream" else None
    session_start = time.monotonic()
    prior_elapsed = run.elapsed
    yield {"event": "start", "step": run.step, "steps_per_epoch": run.steps_per_epoch,
           "params": sum(p.size for p in run.params.values()), "vocab": run.vocab.size,
           "train_tokens": len(run.train_ids), "val_tokens": len(run.val_ids),
           "total_steps": _schedule_steps(run, None)}

    if tc.schedule == "cosine" and run.schedule_steps is None:
        run.schedule_steps = _schedule_steps(run, None)
    timing_steps, timing_start = 0, None
    final_val = None

    def stop_reason():
        return _budget_reached(run) or ("interrupted" if should_stop() else None)

    # a resumed run may already be at its budget: then nothing changes and nothing is written
    reason = stop_reason()
    while reason is None:
        step_start = time.monotonic()
        x, y, mask, reset = _batch(run, run.step)
        state = None if reset or run.carry is None else run.carry
        rng = np.random.default_rng([tc.seed, run.step]) if run.config.dropout > 0 else None
        with np.errstate(**QUIET_FP):
            loss, grads, final, n_tokens = _loss_and_grads(run, x, y, mask, state, rng)
            grad_norm = optim.clip_grad_norm(grads, tc.clip)
            optim.clip_grad_value(grads, tc.clip_value)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if not finite and tc.on_nonfinite == "stop":
            raise TrainingError(
                f"the loss became non-finite at step {run.step + 1} (loss {loss}, gradient norm {grad_norm}); "
                f"the last saved checkpoint is unchanged. Try a lower --lr or --clip, or --on-nonfinite skip")
        if tc.schedule == "cosine" and run.schedule_steps is None and timing_steps >= 5:
            # a time budget alone: fix the schedule's length from the measured speed, once
            run.schedule_steps = _schedule_steps(run, timing_steps / (time.monotonic() - timing_start))
        lr = optim.learning_rate(run.step, tc.lr, tc.schedule, tc.warmup,
                                 run.schedule_steps or (run.step + 1), tc.min_lr_ratio)
        if finite:
            with np.errstate(**QUIET_FP):
                run.optimizer.step(run.params, grads, lr)
            if not all(np.isfinite(p).all() for p in run.params.values()):
                # finite gradients, yet an update overflowed: no later step can undo that, so even skip stops
                raise TrainingError(
                    f"the weights became non-finite at step {run.step + 1} (an update overflowed at learning "
                    f"rate {lr:g}); the last saved checkpoint is unchanged. Try a lower --lr")
            run.carry = final if tc.mode == "stream" else None
        else:
            run.skipped += 1
        run.step += 1
        now = time.monotonic()
        if timing_start is None:
            timing_start = now  # the first step warms caches; time from the second
        else:
            timing_steps += 1
        run.elapsed = prior_elapsed + now - session_start
        epoch = run.step / run.steps_per_epoch
        reason = stop_reason()
        evaluating = run.step % tc.eval_every == 0 or reason is not None
        logging = run.step % tc.log_every == 0 or evaluating
        if finite:
            chars_per_sec = (tokens_per_step or n_tokens) / max(now - step_start, 1e-9)
            run.log_sum += loss
            run.log_count += 1
            event = {"event": "step", "step": run.step, "epoch": epoch, "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, "chars_per_sec": chars_per_sec, "elapsed": run.elapsed}
        else:
            event = {"event": "skip", "step": run.step, "epoch": epoch, "lr": lr, "skipped": run.skipped,
                     "elapsed": run.elapsed}
        yield event
        if not finite or logging:
            record = {k: v for k, v in event.items() if k != "event"}
            if finite:
                record["loss"] = run.log_sum / run.log_count  # mean over the steps since the last line
                # reset before saving, so a resumed run never counts these losses again
                run.log_sum, run.log_count = 0.0, 0
            else:
                record["skipped_nonfinite"] = record.pop("skipped")
            if evaluating:
                final_val, improved = yield from _evaluate(run)
                if final_val is not None:  # None: no validation data
                    record["val_loss"] = final_val
            # the line goes in before the save, so that the checkpoint counts it (run.log_bytes)
            _append_log(run, record, sync=evaluating)
            if evaluating:
                yield from _save(run, improved, final_val is not None and math.isfinite(final_val))
                # so that the corpus read so far does not stay mapped into memory (see there)
                corpus.release_pages(run.train_ids)
                corpus.release_pages(run.val_ids)

    yield {"event": "end", "reason": reason, "step": run.step, "elapsed": run.elapsed,
           "val_loss": final_val, "best_val": None if math.isinf(run.best_val) else run.best_val,
           "model": run.path(MODEL_FILE), "best": run.path(BEST_FILE), "skipped": run.skipped}


def _evaluate(run: Run):
    """Evaluate; yields the eval event, returns (val loss or None, whether it is the best so far)."""
    with np.errstate(**QUIET_FP):
        val = validation_loss(run)
    improved = math.isfinite(val) and val < run.best_val
    if improved:
        run.best_val = val
    yield {"event": "eval", "step": run.step, "val_loss": val, "val_bits": val / math.log(2),
           "best": improved}
    return (None if math.isnan(val) else val), improved


def _save(run: Run, improved: bool, val_finite: bool):
    """Save latest (and best when improved, or when there is none yet and no validation); yields save events."""
    best = improved or (not os.path.exists(run.path(BEST_FILE)) and not val_finite)
    path = save_checkpoint(run, best=best)
    yield {"event": "save", "path": path, "kind": "latest"}
    if best:
        yield {"event": "save", "path": run.path(BEST_FILE), "kind": "best"}
