"""A training run's settings: TrainConfig, its checks, and the automatic settings that fit the data.

Nothing here touches files. `TrainConfig.check` raises ConfigError for values
no run could use; `auto_settings` picks the model size, batch, learning rate,
dropout and schedule a user left open, from the corpus size and the budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import corpus
from ..core import optim
from ..core.model import ModelConfig, param_shapes
from ..errors import ConfigError, option

MODES = ("stream", "lines")
NONFINITE = ("stop", "skip")
# Early stopping: evaluations in a row without a new best validation loss before a run stops. A run that
# still learns sets a new best at almost every evaluation; one that only overfits never does.
DEFAULT_PATIENCE = 5


@dataclass
class TrainConfig:
    # data
    task: str = "lm"                   # the task's name (charrnn/tasks/: "lm", "classify"), which checks its own settings
    mode: str = "stream"               # "stream": one long text; "lines": each non-empty line is an example
    level: str = "char"                # "char" or "word" tokens
    min_count: int = 1                 # rarer tokens become UNK
    max_vocab: int | None = None       # keep at most this many regular tokens (the rest UNK)
    val_frac: float = 0.1              # held-out share when no separate validation file is given
    encoding: str = "utf-8"            # the corpus files' text encoding (the model records it for eval)
    batch_size: int = 64               # B: parallel streams (stream) or lines per batch (lines)
    buckets: bool = True               # lines: batch lines of similar length (batches.bucketed_line_batches);
                                       # runs saved before this setting: False, their shuffled batches
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
    patience: int = DEFAULT_PATIENCE   # stop after this many evaluations without a new best (0: never)
    keep: int = 0                      # keep the model files of the N best evaluations in snapshots/ (0: none)
    log_every: int = 10                # one log.jsonl line per N steps
    seed: int = 0
    on_nonfinite: str = "stop"         # "stop" or "skip" a step whose loss or gradient is not finite
    threads: int = 2                   # each batch's rows in this many blocks, one thread each (parallel.py);
                                       # a setting, so that a run's numbers never depend on the machine

    def __post_init__(self):
        self.plain()

    def plain(self) -> None:
        """Turn NumPy scalars (np.int64(16), np.float32(0.1)) into the Python numbers they hold, in place:
        the settings are stored as JSON. check() does it first, so values set after construction count too."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.generic):
                setattr(self, f.name, value.item())

    def check(self, partial: bool = False) -> None:
        """Raise ConfigError for values no run could use.

        - partial: allow the AUTO_TRAIN_KEYS to be None (still to be chosen by auto_settings)
        """
        self.plain()
        from .corpus import text_encoding  # the same layer; imported here, where it is used
        self.encoding = text_encoding(self.encoding)  # its canonical name ("latin-1" -> "iso8859-1")
        if any(getattr(self, k) is None for k in AUTO_TRAIN_KEYS):
            if not partial:
                raise ConfigError(f"{', '.join(option(k) for k in AUTO_TRAIN_KEYS)} must be set")
            # check the rest as if the open ones held their plain defaults
            filled = {k: getattr(TrainConfig, k) for k in AUTO_TRAIN_KEYS if getattr(self, k) is None}
            return TrainConfig(**{**asdict(self), **filled}).check()
        for name in ("task", "mode", "level", "optim", "schedule", "on_nonfinite"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"{option(name)} must be a str, got {getattr(self, name)!r:.40}")
        for name in ("val_frac", "lr", "momentum", "weight_decay", "min_lr_ratio", "eval_every", "log_every",
                     "min_count", "seed", "warmup", "threads", "patience"):
            if getattr(self, name) is None:
                raise ConfigError(f"{option(name)} must be given, got None")
        if self.mode not in MODES:
            raise ConfigError(f"{option('mode')} must be stream or lines, got {self.mode!r:.40}")
        if self.level not in ("char", "word"):
            raise ConfigError(f"{option('level')} must be char or word, got {self.level!r:.40}")
        if self.on_nonfinite not in NONFINITE:
            raise ConfigError(f"{option('on_nonfinite')} must be stop or skip, got {self.on_nonfinite!r}")
        # types and magnitudes first (a resumed run reads these from a file), so the checks below
        # cannot fail otherwise; every value must also be storable as JSON in the state file
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count", "seed", "warmup",
                     "max_steps", "eval_tokens", "max_vocab", "threads", "patience", "keep"):
            value = getattr(self, name)
            if value is not None:
                check_integer(value, name)
        for name in ("val_frac", "lr", "momentum", "weight_decay", "clip", "clip_value", "min_lr_ratio",
                     "max_epochs", "max_time"):
            value = getattr(self, name)
            if value is not None and not is_number(value):
                raise ConfigError(f"{option(name)} must be a finite number, got {value!r:.40}")
        check_seed(self.seed)
        if not 1 <= self.threads <= 64:
            raise ConfigError(f"{option('threads')} must be between 1 and 64, got {self.threads}")
        if self.keep < 0:
            raise ConfigError(f"{option('keep')} must be a non-negative integer (0: no snapshots), got {self.keep}")
        if self.patience < 0:
            raise ConfigError(f"{option('patience')} must be a non-negative integer (0: no early stopping), got {self.patience}")
        for name in ("batch_size", "seq_len", "eval_every", "log_every", "min_count"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("max_steps", "max_epochs", "max_time", "eval_tokens", "max_vocab"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{option(name)} must be positive, got {value}")
        if not 0.0 <= self.val_frac < 1.0:
            raise ConfigError(f"{option('val_frac')} must be in [0, 1), got {self.val_frac}")
        if not self.lr > 0:
            raise ConfigError(f"the learning rate {option('lr')} must be positive, got {self.lr}")
        for name in ("clip", "clip_value"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and not math.isnan(value)):
                raise ConfigError(f"{option(name)} must be positive (or 0 for off), got {value}")
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


_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
MAX_DURATION = 100 * 365.25 * 86400  # 100 years: the longest --max-time (longer ones only overflow arithmetic)
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"


def parse_duration(value) -> float | None:
    """A duration -> seconds: a number of seconds, plain seconds as text ('90'), one unit ('90s', '10m',
    '1.5h', '2d') or several in order, as the tool prints durations ('1m30s', '5m08s', '1h30m', '1h05m00s').

    None stays None; ConfigError for anything else (or a duration that is not positive and finite).
    """
    if value is None:
        return None
    if is_number(value):
        seconds = float(value)
    elif isinstance(value, str):
        compact = value.strip().lower()
        if re.fullmatch(_NUMBER, compact):
            seconds = float(compact)
        elif compact and re.fullmatch(rf"(?:{_NUMBER}d)?(?:{_NUMBER}h)?(?:{_NUMBER}m)?(?:{_NUMBER}s)?", compact):
            seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in re.findall(rf"({_NUMBER})([dhms])", compact))
        else:
            seconds = 0.0
    else:
        seconds = 0.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ConfigError(f"{value!r:.40} is not a duration such as 90s, 10m, 1h30m or 1.5h")
    if seconds > MAX_DURATION:
        raise ConfigError(f"{value!r:.40} is longer than 100 years, the longest duration taken")
    return seconds


def check_integer(value, name: str, low: int | None = None) -> int:
    """value as an int: ConfigError naming the setting `name` (by its Python name: errors.option) unless it
    is an integer (a NumPy one too, not a bool) in [low, 2**63), the range a run's files store."""
    if not is_number(value, integer=True):
        raise ConfigError(f"{option(name)} must be an integer, got {value!r:.40}")
    if not -2**63 <= value < 2**63:
        raise ConfigError(f"{option(name)} must be below 2**63, got {value!r:.40}")
    if low is not None and value < low:
        raise ConfigError(f"{option(name)} must be at least {low}, got {value!r:.40}")
    return int(value)


def check_seed(seed, optional: bool = False) -> int | None:
    """A seed (training, sampling; the command line's --seed and the API's seed=) as an int in [0, 2**63);
    ConfigError otherwise. optional: None is a seed too (a random one)."""
    if seed is None and optional:
        return None
    if not is_number(seed, integer=True) or not 0 <= seed < 2**63:
        raise ConfigError(f"{option('seed')} must be an integer from 0 to 2**63 - 1, got {seed!r:.40}")
    return int(seed)


def is_number(value, integer: bool = False) -> bool:
    """A finite int (or float, unless integer), not a bool; True for ints too large for a float only when integer."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer) if integer else (int, float, np.number)):
        return False
    try:
        return integer or math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


# Options that may change when a run is resumed; the rest define the run.
RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "eval_tokens", "log_every", "on_nonfinite",
             "patience", "keep")
# Options that, given to a resumed run, start a new learning-rate schedule from its current step (the
# others keep the run's values): rundir.resume_run records the schedule it ends in the run.
SCHEDULE_KEYS = ("lr", "schedule", "warmup")


# ---------------------------------------------------------------- defaults that fit the data

# Training speed by hidden size, in tokens per second on the 2-core reference machine (stream mode,
# B 16, T 100). Only a fallback: the CLI measures the chosen model's speed when a time budget bounds
# the run (train.measure_speed), and says which it used.
NOMINAL_CHARS_PER_SEC = {64: 150_000, 128: 40_000, 256: 13_000, 512: 4_000}
# A starting learning rate per optimizer, for batches of 16 to 32 streams.
AUTO_LR = {"adagrad": 0.1, "adam": 5e-3, "rmsprop": 2e-3, "sgd": 0.5}
# A time budget's model size (budget_size): the largest of AUTO_SIZES (layers, hidden) for which, at its
# measured speed, the budget buys at least TOKENS_PER_PARAM training tokens per parameter and MIN_STEPS
# steps, and that has at most PARAMS_PER_TOKEN parameters per training token. bench/budget.py's sweep
# (bench/data/budget.jsonl, docs/performance.md) brackets each: 2 x 512 lost with 0.09 tokens a parameter
# and won with 0.47; lost with 453 steps and won with 2,110 (2 x 256 won with 1,556); won with 17
# parameters a token. 2 x 384 is not a choice: it lost to 2 x 256 or 2 x 512 at every budget it ran.
# tests/test_auto_settings.py holds the rule to the sweep.
AUTO_SIZES = ((1, 64), (2, 128), (2, 256), (2, 512))
TOKENS_PER_PARAM = 0.4
MIN_STEPS = 1250
PARAMS_PER_TOKEN = 20.0
AUTO_MODEL_KEYS = ("layers", "hidden", "embed", "dropout", "precision")
AUTO_TRAIN_KEYS = ("batch_size", "seq_len", "lr", "schedule", "warmup", "eval_every", "threads")
AUTO_KEYS = AUTO_MODEL_KEYS + AUTO_TRAIN_KEYS
# The model options of a training request (ModelConfig's fields that a user sets); the rest are TrainConfig's.
MODEL_KEYS = ("cell", "layers", "hidden", "embed", "dropout", "dtype", "bidirectional", "pool", "precision")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name != "min_lr_ratio")
# A word-level run's min_count unless given: the words seen once become <unk>, so the model learns <unk>
# (with 1 it never would, and every unseen word of new text, its own held-out split's too, is scored blind)
WORD_MIN_COUNT = 2
# A word-level run's max_vocab unless given: the most frequent words kept, the rest <unk>. Without a cap a
# large corpus's vocabulary grows with it (new words keep appearing), and with it the embedding, the
# softmax head and their optimizer state: on a 1 GB text, hundreds of thousands of words and gigabytes.
# At 10,000 words the head of a 512-unit model (5 million products a token) costs about what its two LSTM
# layers do (4 million), as in the 10,000-word vocabulary of the usual word-level benchmarks.
WORD_MAX_VOCAB = 10_000
DEFAULT_MAX_TIME = 300.0  # seconds: the budget of a fresh run given none
DEFAULT_ERRORS = "strict"  # invalid bytes in a corpus: an error (corpus.TEXT_ERRORS)


def _defaults() -> dict:
    model = {f.name: f.default for f in fields(ModelConfig) if f.name in MODEL_KEYS}
    train = {f.name: f.default for f in fields(TrainConfig) if f.name in TRAIN_KEYS}
    return {**model, **train, **dict.fromkeys(AUTO_KEYS), "min_count": None, "max_vocab": None,
            "errors": DEFAULT_ERRORS}


# Row blocks (--threads) of at least this many rows: at batch 16, one block of 16 rows trained faster than
# two of 8 (88 against 114 ms a step, LSTM 2x256, Sapphire Rapids: issue 24); at batch 32, two blocks of 16
# trained 1.4x faster than one of 32 (33.4 against 23.8 thousand chars/s, LSTM 2x256, Zen 4:
# bench/data/budget.jsonl). Fewer rows leave the step product too small to pay for a second thread.
MIN_BLOCK_ROWS = 16
MAX_AUTO_THREADS = 2
MIN_WINDOWS = 4  # stream mode: a small text still makes at least this many batches per pass
# The automatic evaluation cadence (auto_eval_every): this many evaluations a pass over the data, and at
# least EVALS_PER_BUDGET over the budget and one every EVAL_SECONDS of a time budget, at most every
# EVAL_MAX_STEPS steps; but never so often that evaluating takes more than about EVAL_SHARE of the time
# (a validation token, scored forward only, costs about EVAL_TOKEN_COST of a training token).
EVALS_PER_PASS = 4
EVALS_PER_BUDGET = 10
EVAL_SECONDS = 60
EVAL_MAX_STEPS = 1000
EVAL_SHARE = 0.1
EVAL_TOKEN_COST = 1 / 3


def auto_eval_every(steps_per_pass: float, tokens_per_step: float, val_tokens: int,
                    budget_steps: float | None = None, steps_per_sec: float | None = None) -> int:
    """How many steps between evaluations, when --eval-every is not given: a fraction of a pass
    (EVALS_PER_PASS a pass, so a small text is evaluated before it is overfitted), bounded by the budget
    (EVALS_PER_BUDGET over it, and with a time budget one every EVAL_SECONDS) and by EVAL_MAX_STEPS,
    but no more often than keeps evaluation to about EVAL_SHARE of the time.

    - steps_per_pass: training steps in one pass over the data; tokens_per_step: tokens each step trains on
    - val_tokens: validation tokens scored per evaluation (the split, at most --eval-tokens)
    - budget_steps: the steps the budget buys (None: no budget); steps_per_sec: the speed assumed for a
      time budget (None: none bounds the run)
    Depends only on its arguments: chosen once when a run starts and saved with its settings.
    """
    every = steps_per_pass / EVALS_PER_PASS
    if budget_steps:
        every = min(every, budget_steps / EVALS_PER_BUDGET)
    if steps_per_sec:
        every = min(every, EVAL_SECONDS * steps_per_sec)
    cost_floor = EVAL_TOKEN_COST * val_tokens / (EVAL_SHARE * max(tokens_per_step, 1))
    return int(max(1, math.ceil(min(max(every, cost_floor), EVAL_MAX_STEPS))))


def auto_threads(batch_size: int, ranks: int = 1) -> int:
    """The row blocks a fresh run cuts each rank's share of a batch into, when --threads is not given:
    blocks of at least MIN_BLOCK_ROWS rows, at most MAX_AUTO_THREADS of them, at least one. Saved with the
    run's settings, so its numbers never depend on the machine (runs saved before: their own value)."""
    return max(1, min(MAX_AUTO_THREADS, (batch_size // max(ranks, 1)) // MIN_BLOCK_ROWS))


def auto_settings(n_tokens: int, tconfig: TrainConfig, level: str = "char", chars_per_sec: float | None = None,
                  n_lines: int | None = None, val_tokens: int | None = None, ranks: int = 1,
                  precision: str = "float32") -> dict:
    """Model size, batch, sequence length, learning rate, dropout and schedule for n_tokens and the budget.

    Tuned on tinyshakespeare for validation loss per minute of a 2-core CPU (bench/budget.py's sweep,
    bench/data/budget.jsonl).
    - hidden: 64 (one layer) below 20 thousand tokens, 128 below 200 thousand,
      256 below 5 million, else 512 (two layers from 20 thousand); under a time budget budget_size
      replaces these by what the measured speed buys
    - precision: as given (fill_auto_settings: bf16 for a float32 language model where the CPU runs
      the bf16 tiles, model.fast_precision; else float32)
    - batch: 32 streams (at 2 minutes on tinyshakespeare, in two row blocks, 16 and 64 trained no better
      in float32 and worse in bf16); seq_len 100; in stream
      mode both shrink (seq_len to no less than 8 first, then the batch) until
      the text makes MIN_WINDOWS batches; in lines mode at most a quarter of the lines;
      then down to a multiple of `ranks`, the MPI ranks that split it (at least one row each)
    - lr by optimizer (AUTO_LR)
    - dropout: by the passes over the data the budget buys: none under 3,
      0.1 under 8, 0.2 under 16, else 0.3 (small data seen many times needs it most: at 36 passes of
      python-reference, 0.3 reached 1.2535 against 1.2689 for 0.2 and 1.2639 for 0.4)
    - schedule: cosine decay over the budget after a 50-step linear warm-up
    - eval_every: auto_eval_every of the passes and the budget (val_tokens: the validation tokens, None:
      a val_frac share of the text)
    - chars_per_sec: the measured speed of this model (None: NOMINAL_CHARS_PER_SEC), for a time budget
    - n_lines: lines mode: the number of training lines
    Returns a dict with the keys of AUTO_KEYS, "passes" (the estimate used) and "speed" (the tokens per
    second it assumed, or None when no time budget bounds the run) and "speed_measured".
    """
    n = max(int(n_tokens), 1)
    small = n < 20_000
    hidden = 64 if small else 128 if n < 200_000 else 256 if n < 5_000_000 else 512
    layers = 1 if small else 2
    embed = (32 if small else 64) if level == "char" else (64 if small else 128)
    batch = tconfig.batch_size or 32
    seq_len = tconfig.seq_len or 100
    if tconfig.mode == "stream":
        if tconfig.seq_len is None:
            seq_len = min(100, max(8, (n - 1) // (MIN_WINDOWS * batch)))
        if tconfig.batch_size is None:
            batch = _multiple(min(batch, max(1, (n - 1) // (MIN_WINDOWS * seq_len))), ranks)
        if tconfig.seq_len is None and (n - 1) // (batch * seq_len) < 1:
            seq_len = max(1, (n - 1) // batch)  # a text too short for 8: the windows it can make
    elif tconfig.batch_size is None:
        batch = _multiple(batch if n_lines is None else min(batch, max(1, n_lines // MIN_WINDOWS)), ranks)
    per_step = _tokens_per_step(tconfig.mode, batch, seq_len, n, n_lines)
    speed = None if tconfig.max_time is None else chars_per_sec or NOMINAL_CHARS_PER_SEC[hidden]
    budget = _budget_tokens(tconfig, n, per_step, speed)
    passes = 1.0 if budget is None else budget / n
    dropout = 0.0 if passes < 3 else 0.1 if passes < 8 else 0.2 if passes < 16 else 0.3
    warmup = 50 if tconfig.max_steps is None else min(50, tconfig.max_steps // 10)
    steps_per_pass = max(1.0, n / per_step)
    if val_tokens is None:
        val_tokens = int(n * tconfig.val_frac / max(1 - tconfig.val_frac, 1e-9))
    if tconfig.eval_tokens is not None:
        val_tokens = min(val_tokens, tconfig.eval_tokens)
    budget_steps = None if budget is None else passes * steps_per_pass
    eval_every = auto_eval_every(steps_per_pass, per_step, val_tokens, budget_steps,
                                 speed / per_step if speed else None)
    return {"layers": layers, "hidden": hidden, "embed": embed, "dropout": dropout,
            "precision": precision,
            "batch_size": batch, "seq_len": seq_len, "lr": AUTO_LR.get(tconfig.optim, 2e-3), "schedule": "cosine",
            "warmup": warmup, "eval_every": eval_every, "threads": tconfig.threads or auto_threads(batch, ranks),
            "passes": passes, "speed": speed,
            "speed_measured": speed is not None and chars_per_sec is not None}


def _budget_tokens(tconfig: TrainConfig, n_tokens: int, tokens_per_step: float, speed: float | None) -> float | None:
    """The training tokens the run's budget buys: the tightest of its time (at speed tokens per second),
    passes over n_tokens and steps of tokens_per_step; None when no budget bounds it."""
    budgets = []
    if tconfig.max_time is not None:
        budgets.append(speed * tconfig.max_time)
    if tconfig.max_epochs is not None:
        budgets.append(tconfig.max_epochs * n_tokens)
    if tconfig.max_steps is not None:
        budgets.append(tconfig.max_steps * tokens_per_step)
    return min(budgets) if budgets else None


def _tokens_per_step(mode: str, batch: int, seq_len: int, n_tokens: int, n_lines: int | None) -> float:
    """The tokens a step trains on: batch windows of seq_len (stream), or batch lines of the mean length."""
    return batch * seq_len if mode == "stream" else batch * n_tokens / max(n_lines or 1, 1)


def _multiple(batch: int, ranks: int) -> int:
    """batch rounded down to a multiple of ranks, and at least ranks: the MPI ranks split it evenly."""
    return max(ranks, batch - batch % ranks)


def _tokens_of(text, tconfig: TrainConfig) -> int:
    """How many tokens a validation text holds: a str, or a scanned textfile.TextFile."""
    scan = getattr(text, "scans", {}).get((tconfig.level, tconfig.mode))
    return count_tokens(text, tconfig.level) if scan is None else scan.n_tokens


def count_tokens(text: str, level: str) -> int:
    """How many tokens text holds at this level (characters, or words as vocab.WORD_PATTERN splits them)."""
    if level == "char":
        return len(text)
    from ..data.vocab import WORD_PATTERN
    return sum(1 for _ in WORD_PATTERN.finditer(text))


def fill_auto_settings(text: str, val_text: str | None, tconfig: TrainConfig, model_options: dict,
                       measure=None, vocab_size: int | None = None, ranks: int = 1,
                       precision=lambda: "float32") -> dict | None:
    """Choose the AUTO_KEYS the user left open (None) in tconfig and model_options, in place.

    - text, val_text: the corpus and the separate validation text (None: val_frac is held out)
    - measure: optional function(model_options, tconfig) -> tokens per second of training steps on this text for
      those settings, or None; called when a time budget bounds the run and the dropout is open (it depends
      on the passes the budget buys), and for the model size when it is open (budget_size); without it the
      passes come from NOMINAL_CHARS_PER_SEC and the size from the corpus alone
    - vocab_size: the vocabulary the model will have (for its parameter count; None: the size is the corpus's)
    - ranks: the MPI ranks the run trains on; an automatic batch size is a multiple of it
    - precision: function() -> the products' precision a float32 model takes on this machine (the api:
      model.fast_precision for a task whose model takes bf16, else float32), called only when it is open
    Returns None when nothing was open, else {"keys": the keys chosen, "n_tokens": the training
    tokens they were chosen for, "passes": the passes over them the budget buys, "speed" and
    "speed_measured": the tokens per second that estimate assumed (None: no time budget)}.
    """
    open_keys = [k for k in AUTO_KEYS
                 if (model_options.get(k) if k in AUTO_MODEL_KEYS else getattr(tconfig, k)) is None]
    if open_keys == ["threads"]:  # the row blocks follow the batch given: nothing to say
        tconfig.threads = auto_threads(tconfig.batch_size, ranks)
        return None
    if not open_keys:
        return None
    share = 1.0 if val_text is not None else 1 - tconfig.val_frac
    scan = getattr(text, "scans", {}).get((tconfig.level, tconfig.mode))  # a textfile.TextFile, read in chunks
    if scan is not None:
        n_tokens, n_lines = scan.n_tokens, scan.n_lines
    else:
        n_tokens = count_tokens(text, tconfig.level)
        n_lines = len(corpus.split_lines(text)) if tconfig.mode == "lines" else 0
    val_tokens = None if val_text is None else _tokens_of(val_text, tconfig)
    n_tokens = int(n_tokens * share)
    n_lines = int(n_lines * share) if tconfig.mode == "lines" else None
    float32 = (model_options.get("dtype") or "float32") == "float32"  # bf16 products are for float32 models
    fast = precision() if "precision" in open_keys and float32 else "float32"
    auto = auto_settings(n_tokens, tconfig, tconfig.level, n_lines=n_lines, val_tokens=val_tokens, ranks=ranks,
                         precision=fast)
    for key in open_keys:
        if key in AUTO_MODEL_KEYS:
            model_options[key] = auto[key]
        else:
            setattr(tconfig, key, auto[key])
    if measure is not None and tconfig.max_time is not None and "dropout" in open_keys:
        if "layers" in open_keys and "hidden" in open_keys and vocab_size is not None:
            per_step = _tokens_per_step(tconfig.mode, tconfig.batch_size, tconfig.seq_len, n_tokens, n_lines)
            speed = budget_size(n_tokens, per_step, tconfig, model_options,
                                lambda options: measure(options, tconfig), vocab_size)
        else:
            speed = measure(model_options, tconfig)
        if speed:
            measured = auto_settings(n_tokens, tconfig, tconfig.level, chars_per_sec=speed, n_lines=n_lines,
                                     val_tokens=val_tokens, ranks=ranks, precision=fast)
            model_options["dropout"] = measured["dropout"]
            if "eval_every" in open_keys:
                tconfig.eval_every = measured["eval_every"]
            auto = measured
    return {"keys": [k for k in open_keys if k != "threads"], "n_tokens": n_tokens, "passes": auto["passes"], "speed": auto["speed"],
            "speed_measured": auto["speed_measured"]}


def count_params(model_options: dict, vocab_size: int) -> int:
    """The parameters of a model with these options (ModelConfig's fields) and vocabulary (a bidirectional
    model counted with a head as wide as the vocabulary: its task's labels are not known here)."""
    options = {k: v for k, v in model_options.items() if v is not None}
    if options.get("bidirectional"):
        options.setdefault("classes", max(vocab_size, 4))
    config = ModelConfig(vocab_size=max(vocab_size, 4), **options)
    return int(sum(np.prod(shape) for shape in param_shapes(config).values()))


def budget_size(n_tokens: int, tokens_per_step: float, tconfig: TrainConfig, model_options: dict, measure,
                vocab_size: int) -> float | None:
    """Choose a time-bounded run's layers and hidden size from AUTO_SIZES, in model_options, by what its
    budget buys; returns the chosen model's measured tokens per second (None: not measured).

    The largest size, no larger than the data allows (PARAMS_PER_TOKEN parameters per training token),
    whose budget buys TOKENS_PER_PARAM training tokens per parameter and MIN_STEPS steps at its measured
    speed (measure: function(model_options) -> tokens per second, or None); the smallest allowed size
    when none does.
    The budget is the tighter of tconfig's time and its step or pass limits (tokens_per_step: what a
    step trains on). Larger sizes are measured first, and none after the first that fits: a few steps each."""
    fits = []
    for layers, hidden in AUTO_SIZES:
        options = {**model_options, "layers": layers, "hidden": hidden}
        try:
            params = count_params(options, vocab_size)
        except ConfigError:
            return measure(model_options)  # a bad option: start_run reports it
        if not fits or params <= PARAMS_PER_TOKEN * n_tokens:
            fits.append((options, params))
    for options, params in reversed(fits):  # the smallest allowed last: taken whatever it buys
        speed = measure(options)
        if speed is None:
            return None  # a setting measure_speed cannot run: keep the corpus's size
        tokens = _budget_tokens(tconfig, n_tokens, tokens_per_step, speed)
        if options is fits[0][0] or tokens >= max(TOKENS_PER_PARAM * params, MIN_STEPS * tokens_per_step):
            model_options.update(layers=options["layers"], hidden=options["hidden"])
            return speed


# What a fresh run uses for each option of a training request not given, by its Python name: the one
# table of defaults (`charrnn train --help` shows it). ModelConfig's and TrainConfig's own field defaults,
# except None where the value is chosen when the run starts: the AUTO_KEYS from the corpus size and the
# budget (auto_settings), min_count and max_vocab by the level (1 and no limit, or WORD_MIN_COUNT and
# WORD_MAX_VOCAB at word level), and the budget
# (DEFAULT_MAX_TIME when none is given).
DEFAULTS = _defaults()
